"""Commands of the local model server: ``serve-local`` and ``models prepare|make-tiny-moe``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("serve-local")(serve_local)
    models = typer.Typer(no_args_is_help=True, help="Prepare local models for serve-local.")
    models.command("prepare")(prepare)
    models.command("make-tiny-moe")(make_tiny_moe)
    app.add_typer(models, name="models")


def serve_local(
    config: Annotated[Path, typer.Option("--config", help="serving YAML, see examples/local.yaml")],
    host: Annotated[str | None, typer.Option(help="bind address (default: the config's)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: the config's)")] = None,
) -> None:
    """Serve the configured local models over the OpenAI API."""
    import uvicorn

    from thalamus.serving.app import create_app
    from thalamus.serving.config import ServingConfig

    settings = ServingConfig.from_yaml(config)
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port)


def prepare(name: Annotated[str, typer.Argument(help="model to prepare: smollm2")]) -> None:
    """Convert a packaged model into a plain folder under the cache directory; print the folder."""
    from thalamus.errors import UnknownNameError
    from thalamus.serving.models import prepare_smollm2

    if name != "smollm2":
        raise UnknownNameError(f"unknown model {name!r}; preparable: smollm2")
    typer.echo(str(prepare_smollm2()))


def make_tiny_moe(
    arch: Annotated[str, typer.Option(help="mixtral | qwen2_moe | olmoe")],
    out: Annotated[Path, typer.Option(help="folder to write")],
    seed: Annotated[int, typer.Option(help="weight seed")] = 0,
) -> None:
    """Write a tiny random-weight MoE (answers nonsense) with SmolLM2's tokenizer, for tests and demos."""
    from thalamus.serving.models import make_tiny_moe as build

    typer.echo(str(build(arch, out, seed=seed)))
