"""One slow embedding batch never blocks the health checks (issue 14).

A real gateway serves a router trained on a third party's embedder (``counting``, registered
through the ``thalamus.embedders`` entry point by the test plugin) that sleeps for seconds on any
batch holding a text with "slow" in it. Concurrent routed requests are put in flight; while their
batch runs (it has started and no request has finished), /healthz and /readyz are asked again and
again and must answer within a bound far below the batch's duration. The routed requests then all
succeed, micro-batched into fewer embedding calls than requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gwhelpers import base_config, synthetic_dataset

from tests.router.plugins import install_plugin
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.server import ThreadedServer
from thalamus.router import embedder_registry, registry
from thalamus.router.cluster import ClusterRouter

N_REQUESTS = 16
DELAY_S = 3.0  # each slow batch
BOUND_S = 1.5  # a health check answered in this time was not waiting behind a batch


@pytest.fixture
def slow_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    module = install_plugin(tmp_path, monkeypatch)
    yield module
    module.CountingEmbedder.reset()
    embedder_registry.refresh()
    registry._entry_points.cache_clear()


@pytest.fixture
def slow_gateway(slow_plugin: Any, replay: ThreadedServer, tmp_path: Path) -> Iterator[ThreadedServer]:
    artifact = tmp_path / "cluster-counting"
    ClusterRouter(groups="kmeans", n_clusters=3, embedder="counting").fit(synthetic_dataset(60)).save(artifact)
    config = base_config(replay.url, artifact, tmp_path / "ledger.sqlite",
                         server={"max_body_bytes": 200_000, "embed_batch_ms": 5})
    with ThreadedServer(create_app(config_from_dict(config))) as server:
        yield server


def _send(url: str, i: int, results: list[Any], done: list[int], lock: threading.Lock) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": f"slow question {i}: what is {i} plus 2?"}]}
    try:
        results[i] = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).status_code
    finally:
        with lock:
            done.append(i)


def _probe(url: str, path: str) -> tuple[int, float]:
    start = time.perf_counter()
    status = httpx.get(url + path, timeout=30).status_code
    return status, time.perf_counter() - start


def test_health_checks_answer_while_a_slow_batch_runs(slow_plugin: Any, slow_gateway: ThreadedServer) -> None:
    counter = slow_plugin.CountingEmbedder
    counter.reset()
    counter.delay_s = DELAY_S
    results: list[Any] = [None] * N_REQUESTS
    done: list[int] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_send, args=(slow_gateway.url, i, results, done, lock))
               for i in range(N_REQUESTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while counter.calls == 0 and time.monotonic() < deadline:  # the first slow batch has started
        time.sleep(0.01)
    assert counter.calls >= 1, "no embedding batch started"
    probes = []
    for _ in range(5):
        for path in ("/healthz", "/readyz"):
            probes.append((path, *_probe(slow_gateway.url, path), len(done)))
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=120)
    assert all(finished == 0 for *_, finished in probes), f"a request finished during the probes: {probes}"
    assert [p[1] for p in probes] == [200] * len(probes), probes
    slowest = max(p[2] for p in probes)
    assert slowest < BOUND_S, f"a health check took {slowest:.2f} s while a {DELAY_S} s batch ran: {probes}"
    assert results == [200] * N_REQUESTS
    assert counter.texts == N_REQUESTS  # each routed text embedded once
    assert counter.calls < N_REQUESTS, f"{counter.calls} embedding calls for {N_REQUESTS} requests: not batched"
