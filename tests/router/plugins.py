"""A third-party package made on the fly: a module plus a dist-info folder with entry points.

Tests register their embedders and routers the way an installed package would (entry points that
``importlib.metadata`` discovers on ``sys.path``), not by reaching into the registries.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from thalamus.router import embedder_registry, registry

PLUGIN_SOURCE = '''
"""Real embedders and a real router for the tests: counting, failing and slow variants."""

import asyncio
import threading
import time

import numpy as np

from thalamus.router.embedders import HashingEmbedder
from thalamus.router.knn import KNNRouter


class CountingEmbedder(HashingEmbedder):
    """Hashing vectors; counts calls and texts. ``fail_after`` calls succeed, then it raises."""

    disk_cache = False
    fast = False  # it sleeps on "slow" texts: the gateway must keep it off its event loop
    calls = 0
    texts = 0
    fail_after = -1
    delay_s = 0.0
    lock = threading.Lock()

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)
        self.id = f"counting-{dim}"

    def embed(self, texts):
        cls = type(self)
        with cls.lock:
            if cls.fail_after >= 0 and cls.calls >= cls.fail_after:
                raise RuntimeError(f"counting embedder: failing as told after {cls.calls} calls")
            cls.calls += 1
            cls.texts += len(texts)
        if any("slow" in t for t in texts):
            time.sleep(cls.delay_s)
        return super().embed(texts)

    @classmethod
    def reset(cls) -> None:
        cls.calls = cls.texts = 0
        cls.fail_after = -1
        cls.delay_s = 0.0


def counting(dim: int = 64) -> CountingEmbedder:
    return CountingEmbedder(dim)


class FastCountingEmbedder(HashingEmbedder):
    """Hashing vectors that declare themselves ``fast``; counts calls made on and off an event loop."""

    disk_cache = False
    batchable = False
    fast = True
    on_loop = 0
    off_loop = 0

    def __init__(self, dim: int = 64, fast: bool = True) -> None:
        super().__init__(dim)
        self.id = f"counting-fast-{dim}"
        self.fast = fast  # counting-fast:fast=0 is the same embedder, not declared fast

    def embed(self, texts):
        try:
            asyncio.get_running_loop()
            type(self).on_loop += 1
        except RuntimeError:  # a worker thread: no event loop runs here
            type(self).off_loop += 1
        return super().embed(texts)

    @classmethod
    def reset(cls) -> None:
        cls.on_loop = cls.off_loop = 0


def counting_fast(dim: int = 64, fast: int = 1, load_s: float = 0.0) -> FastCountingEmbedder:
    time.sleep(load_s)  # load_s: a slow model load (the process-wide embedder load lock is held meanwhile)
    return FastCountingEmbedder(dim, bool(fast))


class NearestRouter(KNNRouter):
    """A third party's router: kNN with its own name and a default of 5 neighbours."""

    name = "nearest"

    def __init__(self, k: int = 5, embedder: str = "counting", seed: int = 0, **knn) -> None:
        super().__init__(k=k, embedder=embedder, seed=seed, **knn)
'''

ENTRY_POINTS = """
[thalamus.embedders]
counting = thalamus_testplugin:counting
counting-fast = thalamus_testplugin:counting_fast

[thalamus.routers]
nearest = thalamus_testplugin:NearestRouter
"""


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Put the plugin package on sys.path and return its module."""
    root = tmp_path / "site"
    dist = root / "thalamus_testplugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (root / "thalamus_testplugin.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thalamus-testplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    embedder_registry.refresh()
    registry.refresh()
    # one module per process: embedders made from it are cached process-wide by spec
    module = sys.modules.get("thalamus_testplugin") or importlib.import_module("thalamus_testplugin")
    module.CountingEmbedder.reset()
    module.FastCountingEmbedder.reset()
    return module


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The plugin installed for one test, then forgotten by the registries."""
    yield install_plugin(tmp_path, monkeypatch)
    embedder_registry.refresh()
    registry.refresh()
