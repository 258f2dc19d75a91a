"""The ``thalamus`` command line: thin commands that parse, call a library function and print.

Each area registers its commands from its own module; heavy libraries are imported inside
the commands, so ``thalamus --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from thalamus.errors import ThalamusError

# modules under thalamus.cli that each expose register(app: typer.Typer)
AREAS = ("data", "evaluate", "train", "gateway", "keys", "serving", "dashboard", "loop", "rollout", "onboard")


def build_app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Thalamus: LLM query router and model-selection gateway.")

    @app.callback()
    def _root() -> None:
        """Thalamus: LLM query router and model-selection gateway."""
        # a callback keeps subcommands named even while only one area is registered

    for area in AREAS:
        try:
            module = importlib.import_module(f"thalamus.cli.{area}")
        except ModuleNotFoundError as exc:
            if exc.name != f"thalamus.cli.{area}":
                raise
            continue  # area not built yet
        module.register(app)
    return app


def main() -> None:
    try:
        build_app()()
    except ThalamusError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
