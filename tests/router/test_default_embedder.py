"""One default embedding path: train, eval and demo share DEFAULT_EMBEDDER; --help lists every embedder."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tests.router.plugins import plugin
from thalamus.cli import build_app
from thalamus.eval.harness import evaluate
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER, embedder_names
from thalamus.router.embedders import get_embedder
from thalamus.router.registry import get_router_class, router_names

__all__ = ["plugin"]


def _option_default(command: str, option: str) -> Any:
    cmd = typer.main.get_command(build_app()).commands[command]  # type: ignore[attr-defined]
    return next(p.default for p in cmd.params if p.name == option)


def test_train_eval_and_demo_default_to_the_one_constant() -> None:
    assert _option_default("eval", "embedder") == DEFAULT_EMBEDDER
    assert _option_default("demo", "embedder") == DEFAULT_EMBEDDER
    assert _option_default("train", "embedder") is None  # train: the router's own default, which is the same
    takes = [n for n in router_names() if "embedder" in get_router_class(n).param_names()]
    assert {"knn", "cluster", "mf", "xgb", "carrot"} <= set(takes)
    assert all(get_router_class(n).param_defaults()["embedder"] == DEFAULT_EMBEDDER for n in takes)
    assert evaluate.__defaults__ is not None and DEFAULT_EMBEDDER in evaluate.__defaults__
    assert get_embedder.__defaults__ == (DEFAULT_EMBEDDER, True)


@pytest.mark.parametrize("command", ["train", "eval", "demo", "retrain"])
def test_help_lists_every_registered_embedder(plugin: Any, command: str) -> None:
    assert "counting" in embedder_names()  # a third-party embedder registered through the entry point group
    result = CliRunner().invoke(build_app(), [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in embedder_names():
        assert name in text, f"{command} --help does not list {name!r}"
    assert f"default {DEFAULT_EMBEDDER}" in text
