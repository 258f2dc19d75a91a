"""``thalamus onboard ROUTER_DIR --model M --probe DATA --n N --grader G --config C --out DIR``.

Gives a cluster router a profile for model M from N graded probe answers (gateway/learning/onboard.py) and
writes the new artifact version to DIR; prints the profile per group and the spend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from thalamus.gateway.learning.onboard import OnboardResult


def _table(result: OnboardResult, groups: list[str]) -> Table:
    table = Table(title=f"profile of {result.model} after {result.graded} graded probes ({result.grader}); "
                  f"artifact {result.directory} (version {result.version})")
    for col in ("group", "quality", "sd", "probes (weight)", "USD/call"):
        table.add_column(col)
    from thalamus.router.profiles import ModelProfile

    prof = result.profile
    cost = ModelProfile.from_dict(prof, "onboard result").cost()  # the profile's own cost rule
    for k, group in enumerate(groups):
        table.add_row(group or "(none)", f"{prof['mean'][k]:.3f}", f"{prof['sd'][k]:.3f}",
                      f"{prof['obs_weight'][k]:.1f}", f"{cost[k]:.2e}")
    table.caption = (f"{result.probes} probes, {result.failed} failed, ${result.spent_usd:.4f} spent, "
                     f"{result.seconds:.1f} s")
    return table


def onboard_cmd(
    router_dir: Annotated[Path, typer.Argument(help="A cluster router artifact directory.")],
    model: Annotated[str, typer.Option("--model", help="The model (backend name) to onboard.")],
    probe: Annotated[str, typer.Option("--probe", help="Dataset name, CSV/JSONL file, or ledger:URL.")],
    out: Annotated[Path, typer.Option("--out", help="New artifact directory (also holds answers.jsonl).")],
    config: Annotated[Path, typer.Option("--config", help="Gateway config naming the model's backend.")],
    n: Annotated[int, typer.Option("--n", help="Probe prompts to send.")] = 100,
    grader: Annotated[str, typer.Option("--grader", help="recorded, reference, judge or agreement.")] = "judge",
    prior: Annotated[str | None, typer.Option("--prior", help="pooled, like:MODEL or tier:NAME.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Backend name if not the model's.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Cap each probe answer.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Probes in flight.")] = 4,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default THALAMUS_DATA_DIR).")] = None,
) -> None:
    """Probe MODEL, grade its answers and write the router with MODEL's profile to OUT (resumable)."""
    from tqdm import tqdm

    from thalamus.gateway.config import load_config
    from thalamus.gateway.learning.onboard import OnboardSpec, onboard
    from thalamus.training.probes import load_probes

    gateway_config = load_config(config)
    probes = load_probes(probe, data_dir)
    spec = OnboardSpec(model, n, grader, prior, backend, seed, max_tokens, concurrency)
    with tqdm(total=n, desc=f"onboard {model}", unit="probe", disable=None) as bar:
        def progress(done: int, spent: float) -> None:
            bar.n = done
            bar.set_postfix_str(f"${spent:.4f}", refresh=True)

        result = onboard(router_dir, probes, spec, out, gateway_config, str(config), progress)
    Console().print(_table(result, result.groups))


def register(app: typer.Typer) -> None:
    app.command("onboard")(onboard_cmd)
