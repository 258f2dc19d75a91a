"""Micro-batching: concurrent route calls share embedding calls, with the same decisions."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gateway.gwhelpers import synthetic_dataset
from tests.router.plugins import plugin
from thalamus.errors import ConfigError
from thalamus.router.base import Router
from thalamus.router.batching import BatchingEmbedder, attach_batching
from thalamus.router.cluster import ClusterRouter
from thalamus.router.embedders import get_embedder

__all__ = ["plugin"]  # the fixture, imported so pytest finds it here
N = 32


def _route_concurrently(router: Router, texts: list[str]) -> list[Any]:
    out: list[Any] = [None] * len(texts)
    start = threading.Barrier(len(texts))

    def work(i: int) -> None:
        start.wait()
        out[i] = router.route(texts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_concurrent_routes_share_embedding_calls(plugin: Any, tmp_path: Path) -> None:
    ds = synthetic_dataset(80)
    router = ClusterRouter(groups="kmeans", n_clusters=4, embedder="counting").fit(ds)
    texts = [f"Question {i}: how much is {i} times {i + 3}?" for i in range(N)]
    unbatched = [router.route(t) for t in texts]
    counter = plugin.CountingEmbedder
    counter.reset()
    batcher = BatchingEmbedder(router.embedder_in_use(), window_ms=20)
    router.use_embedder(batcher)
    try:
        batched = _route_concurrently(router, texts)
    finally:
        batcher.close()
    assert counter.texts == N  # every text embedded exactly once
    assert counter.calls <= N // 4, f"{counter.calls} embed calls for {N} concurrent routes"
    assert batcher.calls == counter.calls
    for a, b in zip(unbatched, batched, strict=True):
        assert a.model == b.model
        assert a.predicted_quality == b.predicted_quality and a.expected_cost == b.expected_cost


def test_lone_call_is_not_delayed_by_the_window(plugin: Any) -> None:
    batcher = BatchingEmbedder(get_embedder("counting"), window_ms=500)
    try:
        batcher.embed(["warm"])
        start = time.perf_counter()
        for i in range(5):
            batcher.embed([f"one at a time {i}"])
        assert time.perf_counter() - start < 1.0  # five calls, far less than one 500 ms window
    finally:
        batcher.close()


def test_a_failing_batch_fails_its_callers_and_the_batcher_lives_on(plugin: Any) -> None:
    inner = get_embedder("counting")
    batcher = BatchingEmbedder(inner, window_ms=1)
    try:
        plugin.CountingEmbedder.fail_after = 0
        with pytest.raises(RuntimeError, match="failing as told"):
            batcher.embed(["x"])
        plugin.CountingEmbedder.fail_after = -1
        np.testing.assert_array_equal(batcher.embed(["x"]), inner.embed(["x"]))
    finally:
        batcher.close()
    with pytest.raises(ConfigError, match="closed"):
        batcher.embed(["after close"])


def test_attach_batching_shares_one_wrapper_and_checks_the_embedder_id(plugin: Any) -> None:
    ds = synthetic_dataset(40)
    a = ClusterRouter(groups="kmeans", n_clusters=2, embedder="counting").fit(ds)
    b = ClusterRouter(groups="kmeans", n_clusters=3, embedder="counting").fit(ds)
    static_like = ClusterRouter(groups="kmeans", n_clusters=2, embedder="hashing").fit(ds)
    wrappers = attach_batching([a, b, static_like], window_ms=2)
    try:
        assert len(wrappers) == 2  # one per embedder id
        assert a.embedder_in_use() is b.embedder_in_use() is wrappers[0]
        with pytest.raises(ConfigError, match=r"trained on embedder 'counting-64'.*'hashing-char24-256'"):
            a.use_embedder(static_like.embedder_in_use())
    finally:
        for w in wrappers:
            w.close()
