"""``thalamus eval``: evaluate routers on datasets, print a table, write JSON and plots.

Every router is evaluated on every dataset (each dataset is loaded once). The command
only parses, calls ``thalamus.eval.harness.evaluate`` and prints; the metrics live in
``thalamus.eval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from thalamus.errors import ConfigError
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER, embedder_help


def parse_params(items: list[str], routers: list[str]) -> dict[str, dict[str, Any]]:
    """``k=v`` goes to every router that takes ``k``; ``R:k=v`` to router ``R`` only.

    Values are read as JSON when they parse (numbers, true/false, lists), else as strings.
    """
    from thalamus.router.registry import get_router_class

    out: dict[str, dict[str, Any]] = {r: {} for r in routers}
    for item in items:
        lhs, eq, raw = item.partition("=")
        scope, _, key = lhs.rpartition(":")
        if not eq or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE or ROUTER:KEY=VALUE")
        if scope and scope not in out:
            raise ConfigError(f"--param {item!r}: router {scope!r} is not one of --router {routers}")
        targets = [scope] if scope else [r for r in routers if key in get_router_class(r).param_names()]
        if not targets:
            raise ConfigError(f"--param {item!r}: none of the routers {routers} takes {key!r}")
        for r in targets:
            out[r][key] = _value(raw)
    return out


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000" from float noise
    return str(value)


def _usd(value: Any) -> str:
    return "-" if value is None else f"${value:.3g}"


def results_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="routers (test split; quality in [0, 1], cost = mean USD per prompt)")
    for col in ("router", "dataset", "quality@max", "cost@max", "AIQ", "zero AIQ", "gap closed",
                "cost saving", "APGR", "CPT50", "CPT80"):
        table.add_column(col, justify="left" if col in ("router", "dataset") else "right")
    for r in results:
        table.add_row(r["router"], r["dataset"], _fmt(r["quality_at_max"]), _usd(r["cost_at_max"]),
                      _fmt(r["aiq"], 4), _fmt(r["zero_router_aiq"], 4), _fmt(r["gap_closed"]),
                      _fmt(r["cost_saving_at_best_single"]), _fmt(r["apgr"]), _fmt(r["cpt_50"]),
                      _fmt(r["cpt_80"]))
    return table


def references_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="references (on the same test prompts)")
    for col in ("dataset", "n_test (incomplete dropped)", "best single", "best single q / $", "oracle q / $",
                "dataset oracle q / $", "random q / $"):
        table.add_column(col)
    seen: set[str] = set()
    for r in results:
        if r.get("source", r["dataset"]) in seen:
            continue
        seen.add(r.get("source", r["dataset"]))
        split = r["split"]
        dropped = f"{split['n_test']} ({split['n_test_incomplete_dropped']})"
        table.add_row(r["dataset"], dropped, r["best_single"]["model"],
                      *(f"{_fmt(r[k]['quality'])} / {_usd(r[k]['cost'])}"
                        for k in ("best_single", "oracle", "dataset_oracle", "random")))
    return table


def run_all(routers: list[str], datasets: list[str], params: dict[str, dict[str, Any]], seed: int,
            test_size: float, folds: int | None, embedder: str, budgets: list[float],
            console: Console) -> list[dict[str, Any]]:
    from thalamus.eval.harness import evaluate, load

    results: list[dict[str, Any]] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(routers) * len(datasets))
        for name in datasets:
            progress.update(task, description=f"loading {name}")
            ds = load(name)
            for router in routers:
                progress.update(task, description=f"{router} on {ds.name}")
                res = evaluate(router, ds, params[router], seed=seed, test_size=test_size, folds=folds,
                               embedder=embedder, budgets=budgets)
                results.append({**res, "source": name})
                progress.advance(task)
    return results


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        router: Annotated[list[str], typer.Option("--router", "-r", help="router name (repeatable)")],
        data: Annotated[list[str], typer.Option("--data", "-d", help="dataset name or file (repeatable)")],
        param: Annotated[list[str] | None, typer.Option(
            "--param", "-p", help="KEY=VALUE for every router taking KEY, or ROUTER:KEY=VALUE")] = None,
        seed: Annotated[int, typer.Option(help="split and router seed")] = 0,
        test_size: Annotated[float, typer.Option(help="test share when the dataset has no split")] = 0.3,
        folds: Annotated[int | None, typer.Option(help="k-fold cross-evaluation instead of one split")] = None,
        embedder: Annotated[str, typer.Option(help=embedder_help())] = DEFAULT_EMBEDDER,
        budget: Annotated[list[float] | None, typer.Option(help="report quality at this USD budget")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics here")] = None,
        plot: Annotated[Path | None, typer.Option(help="Pareto plot PNG (one per dataset)")] = None,
    ) -> None:
        """Evaluate every ROUTER on every DATA set: operating points, hull, AIQ, APGR/CPT, references."""
        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
            console = Console(width=170)
        routers = list(dict.fromkeys(router))
        params = parse_params(param or [], routers)
        results = run_all(routers, list(dict.fromkeys(data)), params, seed, test_size, folds, embedder,
                          budget or [], console)
        console.print(results_table(results))
        console.print(references_table(results))
        for name in sorted({r["dataset"] for r in results if r.get("cost_metrics_skipped")}):
            console.print(f"{name}: no cost observed, so cost metrics (AIQ, cost saving, quality at budget) "
                          "are skipped; quality metrics only")
        for name in sorted({r["dataset"] for r in results
                            if r.get("cost_estimated") and not r.get("cost_metrics_skipped")}):
            console.print(f"{name}: costs are estimated (prices x estimated tokens), not billed; "
                          "the cost metrics rest on those estimates")
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(results, indent=1))
            console.print(f"metrics: {json_out}")
        if plot:
            from thalamus.eval.plots import plot_all

            for path in plot_all(results, plot):
                console.print(f"plot: {path}")
