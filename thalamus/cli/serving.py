"""Commands of the local model server: ``serve-local``, ``models prepare|make-tiny-moe`` and ``train-moe``."""

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
    app.command("train-moe")(train_moe)


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


def train_moe(
    minutes: Annotated[float, typer.Option(help="training time budget (resumed runs count earlier time)")] = 20.0,
    out: Annotated[Path | None, typer.Option(help="model folder (default: <cache>/models/moe-trained)")] = None,
    layers: Annotated[int, typer.Option(help="transformer layers, each an MoE layer")] = 4,
    experts: Annotated[int, typer.Option(help="experts per layer")] = 8,
    top_k: Annotated[int, typer.Option(help="experts per token")] = 2,
    hidden: Annotated[int, typer.Option(help="model width")] = 256,
    vocab_size: Annotated[int, typer.Option(help="tokens of the BPE tokenizer fitted to the text")] = 8192,
    dataset: Annotated[list[str] | None, typer.Option(help="prompt text source (repeat; default: six)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps as well")] = None,
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
    checkpoint_seconds: Annotated[float, typer.Option(help="seconds between checkpoints")] = 120.0,
    seed: Annotated[int, typer.Option(help="weight and data-order seed")] = 0,
) -> None:
    """Train a small Mixtral-style MoE on the datasets' prompt text (CPU, time-bounded); print the folder.

    Rerunning with the same --out resumes from its last checkpoint. Serve it with `path:` in local.yaml.
    """
    import json

    from thalamus.serving.models import models_dir
    from thalamus.training.moe_corpus import DEFAULT_DATASETS
    from thalamus.training.moe_lm import MoeTrainOptions
    from thalamus.training.moe_lm import train_moe as run

    folder = out or models_dir() / "moe-trained"
    result = run(MoeTrainOptions(out=folder, minutes=minutes, layers=layers, experts=experts, top_k=top_k,
                                 hidden=hidden, intermediate=2 * hidden, max_steps=max_steps, threads=threads,
                                 checkpoint_seconds=checkpoint_seconds, seed=seed, vocab_size=vocab_size,
                                 datasets=tuple(dataset or DEFAULT_DATASETS)))
    typer.echo(json.dumps({k: v for k, v in result.items() if k not in ("losses", "options")}))
    typer.echo(str(folder))
