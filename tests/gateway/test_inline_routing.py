"""Where the gateway takes a routing decision: inline on its event loop for ``fast`` embedders, else a thread.

A lookup-table embedder (static, hashing) decides in well under a millisecond, less than the worker-thread
hop costs, so the gateway routes inline when every router the decision reads embeds with an embedder that
declares ``fast = True`` and none learns online (a feedback update holds the router's lock). The test
plugin's ``counting-fast`` embedder (``counting-fast:fast=0``: the same, not declared fast) counts the
calls made on a thread running an event loop and the calls made elsewhere; the gateway's start-up
warm-up runs in a worker thread and is counted before the requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gwhelpers import base_config, ledger_rows, synthetic_dataset

from tests.router.plugins import install_plugin
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router import embedder_registry, registry
from thalamus.router.bandit import LinUCBRouter
from thalamus.router.base import Router
from thalamus.router.cluster import ClusterRouter
from thalamus.router.embedders import get_embedder

N = 12
LOAD_S = 4.0  # the slow embedder load of the last test


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    module = install_plugin(tmp_path, monkeypatch)
    yield module
    embedder_registry.refresh()
    registry.refresh()


def _serve_and_send(router: Router, replay: ThreadedServer, tmp_path: Path, counter: Any,
                    **routers: Any) -> tuple[int, int, list[int], Path]:
    """(calls on the loop, calls off it) during N routed requests, their statuses, the ledger path."""
    artifact = tmp_path / "artifact"
    router.fit(synthetic_dataset(60)).save(artifact)
    ledger = tmp_path / "ledger.sqlite"
    config = base_config(replay.url, artifact, ledger, provider="openai-compatible")
    config["routers"]["best"].update(routers)
    with ThreadedServer(create_app(config_from_dict(config))) as server:
        assert counter.on_loop == 0 and counter.off_loop >= 1  # the warm-up, in a worker thread
        counter.reset()
        statuses = [httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": "auto", "messages": [{"role": "user", "content": f"Question {i}: what is {i} plus 1?"}]},
        ).status_code for i in range(N)]
        return counter.on_loop, counter.off_loop, statuses, ledger


def test_a_fast_embedder_routes_on_the_event_loop(plugin: Any, replay: ThreadedServer, tmp_path: Path) -> None:
    counter = plugin.FastCountingEmbedder
    on_loop, off_loop, statuses, ledger = _serve_and_send(
        ClusterRouter(groups="kmeans", n_clusters=3, embedder="counting-fast"), replay, tmp_path, counter)
    assert statuses == [200] * N
    assert (on_loop, off_loop) == (N, 0)
    rows = ledger_rows(ledger, N)
    assert len(rows) == N and rows["routing_ms"].notna().all() and (rows["router"] == "best").all()
    for text, chosen, p in zip(rows["candidates"], rows["chosen_model"], rows["probability"], strict=True):
        candidates = json.loads(text)
        assert set(candidates) == {"strong", "mid", "weak"}  # quality, cost and p of every candidate
        assert all({"quality", "cost", "p"} <= set(c) for c in candidates.values())
        assert candidates[chosen]["p"] == p == 1.0  # deterministic: the whole mass on the choice


def test_a_router_that_learns_online_routes_in_a_worker_thread(plugin: Any, replay: ThreadedServer,
                                                               tmp_path: Path) -> None:
    counter = plugin.FastCountingEmbedder
    on_loop, off_loop, statuses, _ = _serve_and_send(
        LinUCBRouter(n_components=None, embedder="counting-fast"), replay, tmp_path, counter, learn_online=True)
    assert statuses == [200] * N
    assert (on_loop, off_loop) == (0, N)  # feedback updates hold its lock: never wait for it on the loop


def test_an_embedder_not_declared_fast_routes_in_a_worker_thread(plugin: Any, replay: ThreadedServer,
                                                                 tmp_path: Path) -> None:
    counter = plugin.FastCountingEmbedder  # the same vectors, fast=0: not batchable, so no wrapper either
    on_loop, off_loop, statuses, _ = _serve_and_send(
        ClusterRouter(groups="kmeans", n_clusters=3, embedder="counting-fast:fast=0"), replay, tmp_path, counter)
    assert statuses == [200] * N
    assert (on_loop, off_loop) == (0, N)


def test_inline_routing_does_not_wait_for_another_embedder_loading(plugin: Any, replay: ThreadedServer,
                                                                  tmp_path: Path) -> None:
    """A slow embedder load elsewhere in the process (a hot reload's, in a worker thread) holds the
    process-wide load lock; decisions taken on the event loop must not queue behind it (a loaded
    artifact holds its embedder: Router.load attaches it, so routing never asks get_embedder)."""
    artifact = tmp_path / "artifact"
    ClusterRouter(groups="kmeans", n_clusters=3, embedder="counting-fast").fit(synthetic_dataset(60)).save(artifact)
    config = base_config(replay.url, artifact, tmp_path / "ledger.sqlite", provider="openai-compatible")
    with ThreadedServer(create_app(config_from_dict(config))) as server:
        loader = threading.Thread(target=get_embedder, args=(f"counting-fast:dim=32,load_s={LOAD_S}",))
        loader.start()
        time.sleep(0.2)  # the load has begun and holds the lock
        plugin.FastCountingEmbedder.reset()
        took = []
        for i in range(5):
            t0 = time.perf_counter()
            response = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
                "model": "auto", "messages": [{"role": "user", "content": f"Question {i}: {i} plus 1?"}]})
            took.append(time.perf_counter() - t0)
            assert response.status_code == 200
        still_loading = loader.is_alive()
        loader.join(timeout=30)
    assert still_loading, "the slow load finished before the requests: the test proved nothing"
    assert plugin.FastCountingEmbedder.on_loop == 5
    assert sum(took) < LOAD_S / 2, f"routed requests took {took} s while a {LOAD_S} s load held the lock"
