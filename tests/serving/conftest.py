"""Fixtures of the serving tests: tiny MoE folders and a module-wide real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from servehelpers import make_broken, make_partial_vocab, serve, tiny_config

from thalamus.serving.models import TINY_MOE_ARCHS, make_tiny_moe


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-mixtral, tiny-qwen2_moe, tiny-olmoe (random MoE weights) and broken (vocab smaller than tokenizer)."""
    root = tmp_path_factory.mktemp("tiny-models")
    for arch in TINY_MOE_ARCHS:
        make_tiny_moe(arch, root / f"tiny-{arch}")
    make_broken(root / "broken")
    return root


@pytest.fixture(scope="session")
def partial_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A model that fails at generation time on prompts holding a rare token, and such a poison word."""
    folder = tmp_path_factory.mktemp("partial-vocab") / "partial"
    return folder, make_partial_vocab(folder)


@pytest.fixture(scope="module")
def tiny_server(tiny_dir: Path) -> Iterator[str]:
    with serve(tiny_config(tiny_dir)) as url:
        yield url


@pytest.fixture
def client_for() -> Callable[[str], OpenAI]:
    def make(url: str) -> OpenAI:
        return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    return make
