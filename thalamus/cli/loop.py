"""``thalamus ope`` and ``thalamus retrain``: the learning loop's offline half, from the ledger.

``ope`` estimates candidate routers on logged traffic (IPS, SNIPS, doubly robust, bootstrap 95%
intervals, effective sample size) next to the serving router's logged value, and says "no support"
instead of a number when a candidate picks models the logs never tried. ``retrain`` fits a router on
base data plus every logged (prompt, model, feedback) triple: by default each logged prompt's every model
is the prior router's prediction corrected by the feedback near it (``thalamus.training.shrink``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from thalamus.errors import ConfigError
from thalamus.router.embedder_registry import embedder_help

if TYPE_CHECKING:
    from thalamus.datasets.schema import RoutingDataset
    from thalamus.router.base import Router
    from thalamus.router.policy import Knob
    from thalamus.training.ope import Interval, OpeResult


def parse_knob(text: str | None) -> Knob | None:
    """``lambda=0.3`` / ``wtp=5`` / ``threshold=0.1:MODEL`` -> a Knob (None: use the logged knob)."""
    from thalamus.router.policy import Knob

    if text is None:
        return None
    kind, sep, rest = text.partition("=")
    value, _, strong = rest.partition(":")
    if not sep or kind not in ("lambda", "wtp", "threshold"):
        raise ConfigError(f"--knob {text!r}: expected lambda=V, wtp=V or threshold=V:STRONG_MODEL")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"--knob {text!r}: {value!r} is not a number") from None
    return Knob(kind, number, strong=strong or None)  # type: ignore[arg-type]


def _fmt(iv: Interval, digits: int = 4) -> str:
    return f"{iv.value:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def _no_support(name: str, result: OpeResult) -> str:
    models = ", ".join(f"{m} on {k} rows" for m, k in sorted(result.support.by_model.items()))
    return (f"{name}: NO SUPPORT - no estimate. On {result.support.unsupported_rows} of {result.n} logged rows "
            f"({result.support.share:.1%}) it picks a model the serving policy never tries there ({models}). "
            "Turn on exploration on the serving router (explore: {kind: epsilon, value: 0.1}) and collect "
            "feedback, or evaluate on logs that cover these models.")


def ope_cmd(
    ledger: Annotated[str, typer.Option("--ledger", help="Ledger database URL (sqlite:///... or postgresql+psycopg://...).")],
    candidate: Annotated[list[Path], typer.Option("--candidate", help="Candidate router artifact dir (repeat).")],
    knob: Annotated[str | None, typer.Option("--knob", help="lambda=V, wtp=V or threshold=V:STRONG; "
                                             "default: the knob logged with the traffic.")] = None,
    router: Annotated[str | None, typer.Option("--router", help="Only rows served by this router.")] = None,
    boot: Annotated[int, typer.Option("--boot", help="Bootstrap resamples.")] = 500,
    max_unsupported: Annotated[float, typer.Option(help="Largest share of unsupported rows still estimated.")] = 0.01,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results here.")] = None,
) -> None:
    """Off-policy estimates of candidate routers on the logged traffic, against the serving router."""
    from thalamus.ledger import Ledger
    from thalamus.router.base import Router
    from thalamus.training.ope import evaluate, logged_value
    from thalamus.training.ope_ledger import candidate_policy, knob_utility, load_log

    db = Ledger(ledger)
    try:
        ll = load_log(db.rows_with_feedback(), db.where, router)
    finally:
        db.close()
    console = Console()
    console.print(f"{ll.log.n} logged rows with feedback (left out: {ll.skipped or 'none'})")
    table = Table(title="off-policy estimates (value [95% bootstrap interval])")
    for col in ("policy", "metric", "DR", "SNIPS", "IPS", "ESS"):
        table.add_column(col, overflow="fold")
    out: dict[str, Any] = {"n": ll.log.n, "skipped": ll.skipped, "candidates": {}}
    models = [Router.load(d) for d in candidate]
    use = parse_knob(knob) or ll.knob
    # one cost scale for every policy's utility (the first candidate's), so the rows compare
    utility = knob_utility(use, models[0].cost_scale_ if models else 1.0)
    for directory, model in zip(candidate, models, strict=True):
        log, pi = candidate_policy(model, use, ll)
        result = evaluate(log, pi, utility, n_boot=boot, max_unsupported=max_unsupported)
        out["candidates"][str(directory)] = result.as_dict()
        if not result.supported:
            console.print(_no_support(str(directory), result))
            continue
        for metric, est in result.estimates.items():
            table.add_row(str(directory), metric, _fmt(est["dr"]), _fmt(est["snips"]), _fmt(est["ips"]),
                          f"{result.ess:.0f}")
    served = logged_value(ll.log, utility, n_boot=boot)
    for metric, iv in served.items():
        table.add_row("serving (logged)", metric, _fmt(iv), "", "", str(ll.log.n))
    out["serving"] = {k: v.as_dict() for k, v in served.items()}
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=1))


def retrain_cmd(
    router: Annotated[str, typer.Argument(help="A registered router name (knn, mf, linucb, ...).")],
    ledger: Annotated[str, typer.Option("--ledger", help="Ledger database URL.")],
    out: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")],
    data: Annotated[str | None, typer.Option("--data", help="Base dataset (name or file) to train on too.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Hyperparameter NAME=VALUE (repeat).")] = None,
    embedder: Annotated[str | None, typer.Option("--embedder", help=embedder_help())] = None,
    method: Annotated[str, typer.Option("--method", help="shrink: feedback corrects the prior router's "
                                        "predictions (default); ips: sparse rows repeated by 1/propensity.")
                      ] = "shrink",
    prior: Annotated[Path | None, typer.Option("--prior", help="shrink: the artifact whose predictions feedback "
                                               "corrects (default: ROUTER fitted on --data, else logged means).")
                     ] = None,
    strength: Annotated[float, typer.Option("--strength", help="shrink: pseudo-requests of the prior.")] = 10.0,
    neighbours: Annotated[int, typer.Option("--neighbours", help="shrink: logged prompts pooled per prompt.")] = 50,
    clip: Annotated[float, typer.Option("--clip", help="ips: largest inverse-propensity weight.")] = 10.0,
    ips: Annotated[bool, typer.Option("--ips/--no-ips", help="ips: weight logged rows by 1/propensity.")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default THALAMUS_DATA_DIR).")] = None,
) -> None:
    """Fit ROUTER on base data plus every logged (prompt, model, feedback) triple and save it."""
    from thalamus.cli.train import parse_pairs
    from thalamus.datasets.registry import load_dataset
    from thalamus.ledger import Ledger
    from thalamus.router.base import artifact_version
    from thalamus.router.registry import make_router
    from thalamus.training.retrain import training_set
    from thalamus.training.shrink import shrunk_training_set
    from thalamus.training.train import coerce_params

    if method not in ("shrink", "ips"):
        raise ConfigError(f"--method {method!r}: expected shrink or ips")
    params = coerce_params(router, parse_pairs(param or [], "--param")) | {"seed": seed}
    if embedder is not None:
        params["embedder"] = embedder
    model = make_router(router, **params)
    db = Ledger(ledger)
    try:
        rows = db.rows_with_feedback()
    finally:
        db.close()
    base = load_dataset(data, data_dir) if data else None
    if method == "ips":
        ts = training_set(rows, model, base, clip=clip, ips=ips)
        how = f"{ts.dataset.n_prompts - ts.base_prompts} rows after inverse-propensity repetition, clip {clip:g}"
    else:
        start = _prior(prior, router, params, base)
        ts = shrunk_training_set(rows, model, start, base, neighbours=neighbours, strength=strength)
        how = (f"each correcting {'the logged means' if start is None else prior or f'{router} on --data'}, "
               f"strength {strength:g}, {neighbours} neighbours")
    model.fit(ts.dataset, features=ts.features)
    directory = model.save(out)
    Console().print(f"retrained {router} on {ts.base_prompts} base prompts + {ts.logged_requests} logged requests "
                    f"({ts.logged_prompts} prompts, {how}); artifact {directory} "
                    f"(version {artifact_version(directory)})")


def _prior(artifact: Path | None, router: str, params: dict[str, Any], base: RoutingDataset | None) -> Router | None:
    """The router whose predictions ``--method shrink`` corrects."""
    from thalamus.router.base import Router
    from thalamus.router.registry import make_router

    if artifact is not None:
        return Router.load(artifact)
    return make_router(router, **params).fit(base) if base is not None else None


def register(app: typer.Typer) -> None:
    app.command("ope")(ope_cmd)
    app.command("retrain")(retrain_cmd)
