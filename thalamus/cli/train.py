"""``thalamus train ROUTER --data D --out DIR``: fit (optionally CV-tune) a router and save its artifact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from thalamus.errors import ConfigError
from thalamus.router.embedder_registry import embedder_help

if TYPE_CHECKING:
    from thalamus.training.train import TrainResult


def parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    """``["k=20", "weighting=uniform"]`` -> dict; names the bad item otherwise."""
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_grid(pairs: list[str], router: str) -> dict[str, list[Any]] | None:
    """``["k=5,10,20"]`` -> {"k": [5, 10, 20]} with values typed like the router's defaults."""
    if not pairs:
        return None
    from thalamus.training.train import coerce_params

    raw = parse_pairs(pairs, "--grid")
    return {key: [coerce_params(router, {key: v})[key] for v in values.split(",")]
            for key, values in raw.items()}


def _summary(result: TrainResult) -> Table:
    table = Table(title=f"trained {result.info['router']} on {result.info['dataset']} "
                  f"({result.info['rows']} prompts x {len(result.info['models'])} models)")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    for key, value in result.params.items():
        table.add_row(f"param {key}", repr(value))
    if result.tuning is not None:
        for row in result.tuning.scores:
            varied = {k: v for k, v in row[0].items() if k not in ("embedder", "seed")}
            table.add_row(f"cv {varied}", f"{row[1]:.4f}")
        table.add_row("cv objective", result.tuning.objective)
    table.add_row("fit seconds", f"{result.fit_seconds:.2f}")
    table.add_row("artifact", f"{result.directory} (version {result.version})")
    return table


def train_cmd(
    router: Annotated[str, typer.Argument(help="A registered router name (knn, xgb, carrot, linucb, ...).")],
    data: Annotated[str, typer.Option("--data", help="Dataset name or a CSV/JSONL/Parquet file.")],
    out: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")],
    param: Annotated[list[str] | None, typer.Option("--param", help="Hyperparameter NAME=VALUE (repeat).")] = None,
    tune: Annotated[bool, typer.Option("--tune", help="Choose hyperparameters by k-fold CV first.")] = False,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="Search NAME=V1,V2,... (implies --tune).")] = None,
    folds: Annotated[int, typer.Option("--folds", help="Folds for --tune.")] = 5,
    embedder: Annotated[str | None, typer.Option("--embedder", help=embedder_help())] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default THALAMUS_DATA_DIR).")] = None,
) -> None:
    """Fit ROUTER on a dataset and save it; prints the parameters, CV scores and artifact version."""
    from thalamus.datasets.registry import load_dataset
    from thalamus.training.train import train

    dataset = load_dataset(data, data_dir)
    result = train(router, parse_pairs(param or [], "--param"), dataset, out, embedder=embedder, seed=seed,
                   tune_grid=parse_grid(grid or [], router), do_tune=tune, folds=folds)
    Console().print(_summary(result))


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
