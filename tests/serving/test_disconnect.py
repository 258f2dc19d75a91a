"""A non-stream client that leaves cancels its generation; the model's lease is released; serving goes on.

Before, the generation thread kept decoding to ``max_tokens`` for nobody. The stream path already
cancelled on disconnect (tests/serving/test_lease.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from servehelpers import ask, metric_sum, serve_app, tiny_config

from thalamus.serving.app import create_app

CHAT = "/v1/chat/completions"
MODEL = "tiny-mixtral"
MAX_TOKENS = 450  # within the tiny model's 512-token context; 0.9-4.5 s of decoding, by the machine's speed


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_non_stream_client_that_leaves_cancels_its_job(tiny_dir: Path) -> None:
    app = create_app(tiny_config(tiny_dir))
    with serve_app(app) as url:
        warm = {"model": MODEL, "messages": ask("warm"), "max_tokens": 1}
        assert httpx.post(f"{url}{CHAT}", json=warm, timeout=60).status_code == 200

        def metric(name: str, **labels: str) -> float:
            return metric_sum(httpx.get(f"{url}/metrics").text, name, model=MODEL, **labels)

        body = {"model": MODEL, "messages": ask("Tell me a long story"), "max_tokens": MAX_TOKENS,
                "ignore_eos": True, "temperature": 0}
        started = time.perf_counter()  # how long the whole answer takes on this machine, now
        assert httpx.post(f"{url}{CHAT}", json=body, timeout=60).status_code == 200
        full_s = time.perf_counter() - started
        tokens_before = metric("thalamus_serving_completion_tokens_total")
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after a fifth of that and closes
            httpx.post(f"{url}{CHAT}", json=body, timeout=httpx.Timeout(60, read=full_s / 5))
        left_at = time.perf_counter()

        assert _wait(lambda: metric("thalamus_serving_finished_total", reason="cancelled") == 1)
        cancelled_after = time.perf_counter() - left_at
        generated = metric("thalamus_serving_completion_tokens_total") - tokens_before
        assert 1 <= generated < MAX_TOKENS / 2, generated  # stopped early, not decoded for nobody
        assert cancelled_after < 3.0
        assert metric("thalamus_serving_requests_total", status="499") == 1
        assert metric("thalamus_serving_finished_total", reason="length") == 2  # the warm-up and the timing run
        assert _wait(lambda: app.state.serving.pool.loaded[MODEL].in_use == 0), "the lease is still held"

        reply = httpx.post(f"{url}{CHAT}", json={**body, "max_tokens": 3}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
