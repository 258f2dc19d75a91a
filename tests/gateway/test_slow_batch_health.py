"""One slow embedding batch never blocks the health checks (issue 14).

A real gateway serves a router trained on a third party's embedder (``counting``, registered
through the ``thalamus.embedders`` entry point by the test plugin) that sleeps for seconds on any
batch holding a text with "slow" in it. Concurrent routed requests are put in flight; while their
batch runs (it has started and most requests are still waiting on it), /healthz and /readyz are asked again and
again and must answer within a bound far below the batch's duration. The routed requests then all
succeed, micro-batched into fewer embedding calls than requests. With more requests in flight than
routing threads, every routing thread waits on the batch: /readyz's ledger ping has threads of its
own, so it does not queue behind them (it did, 3.9 s, before it had).
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
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router import embedder_registry, registry
from thalamus.router.cluster import ClusterRouter

ROUTE_THREADS = 64  # the gateway's routing executor (thalamus.gateway.app.start_batching)
DELAY_S = 5.0  # each slow batch
BOUND_S = 2.5  # a health check answered in this time was not waiting behind a batch


@pytest.fixture
def slow_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    module = install_plugin(tmp_path, monkeypatch)
    yield module
    module.CountingEmbedder.reset()
    embedder_registry.refresh()
    registry.refresh()


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
    except httpx.HTTPError as exc:  # recorded, so the assertion names it
        results[i] = repr(exc)
    finally:
        with lock:
            done.append(i)


def _probe(url: str, path: str) -> tuple[int, float]:
    start = time.perf_counter()
    status = httpx.get(url + path, timeout=30).status_code
    return status, time.perf_counter() - start


@pytest.mark.parametrize("n_requests", [16, ROUTE_THREADS + 16])  # fewer, and more, than routing threads
def test_health_checks_answer_while_a_slow_batch_runs(slow_plugin: Any, slow_gateway: ThreadedServer,
                                                      n_requests: int) -> None:
    counter = slow_plugin.CountingEmbedder
    counter.reset()
    counter.delay_s = DELAY_S
    results: list[Any] = [None] * n_requests
    done: list[int] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_send, args=(slow_gateway.url, i, results, done, lock))
               for i in range(n_requests)]
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
    # most requests were still waiting on a slow batch at every probe (a lone early one may have finished)
    assert all(finished < n_requests // 2 for *_, finished in probes), f"probes came too late: {probes} {results}"
    assert [p[1] for p in probes] == [200] * len(probes), probes
    slowest = max(p[2] for p in probes)
    assert slowest < BOUND_S, f"a health check took {slowest:.2f} s while a {DELAY_S} s batch ran: {probes}"
    assert results == [200] * n_requests
    assert counter.texts == n_requests  # each routed text embedded once
    assert counter.calls < n_requests, f"{counter.calls} embedding calls for {n_requests} requests: not batched"
