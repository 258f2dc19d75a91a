"""SmolLM2 served through ``engine: vllm``: a real vLLM process started, proxied, restarted and stopped.

Needs the vLLM environment (``bash scripts/vllm_env.sh``, default /work/vllm-venv, or THALAMUS_VLLM_VENV);
skipped without it. A start takes 25-60 s on 2 cores, and the test starts vLLM twice (the restart).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from servehelpers import ask, serve_app

from thalamus.engine_metrics import parse_load
from thalamus.serving.app import create_app
from thalamus.serving.config import ServingConfig
from thalamus.serving.pool import estimate_bytes
from thalamus.serving.vllm_engine import VllmEngines

VENV = Path(os.environ.get("THALAMUS_VLLM_VENV", "/work/vllm-venv"))
PYTHON = VENV / "bin" / "python"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PYTHON.is_file(), reason=f"no vLLM environment at {VENV}: build it with "
                                 "`bash scripts/vllm_env.sh DIR` and set THALAMUS_VLLM_VENV=DIR")]


def _entry(url: str, name: str) -> dict[str, Any]:
    listing = httpx.get(f"{url}/v1/models", timeout=10).json()
    entry: dict[str, Any] = next(m for m in listing["data"] if m["id"] == name)
    return entry


def _wait_loaded(url: str, name: str, loads: int, timeout_s: float = 400) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = _entry(url, name)
        if entry["loaded"] and entry["loads"] >= loads:
            return entry
        time.sleep(1)
    raise AssertionError(f"vLLM model {name} not loaded (loads={loads}) within {timeout_s} s: {entry}")


def _chat(url: str, prompt: str, **extra: Any) -> httpx.Response:
    body = {"model": "smollm2", "messages": ask(prompt), "max_tokens": 16, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def _streamed_text(url: str, prompt: str) -> str:
    import json

    parts = []
    body = {"model": "smollm2", "messages": ask(prompt), "max_tokens": 16, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                parts.append(delta.get("content") or "")
    return "".join(parts)


def _busy_load(vllm_url: str) -> float:
    """Peak running + waiting requests vLLM's /metrics showed while 4 long answers decoded."""
    peak = 0.0
    threads = [threading.Thread(target=_chat, args=(vllm_url.replace("/v1", ""), "Tell me a story."),
                                kwargs={"max_tokens": 200, "ignore_eos": True}) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        load = parse_load(httpx.get(f"{vllm_url}/metrics", timeout=10).text)["smollm2"]
        assert load.engine == "vllm" and load.kv_cache_usage is not None and 0 <= load.kv_cache_usage <= 1
        peak = max(peak, load.in_flight)
        time.sleep(0.2)
    for t in threads:
        t.join()
    return peak


def test_smollm2_through_vllm_engine_answers_restarts_and_stops() -> None:
    config = ServingConfig.from_dict({
        "memory_budget": "4GiB",
        "models": [{"name": "smollm2", "source": "smollm2", "engine": "vllm", "dtype": "bfloat16",
                    "context_length": 2048,
                    "vllm": {"python": str(PYTHON), "kv_cache_space": "1GiB", "health_interval_s": 1}}]})
    app = create_app(config)
    with serve_app(app) as url:
        entry = _wait_loaded(url, "smollm2", loads=1)
        engines: VllmEngines = app.state.serving.vllm
        folder = engines.engines["smollm2"].folder
        assert entry["engine"] == "vllm" and entry["load_seconds_last"] > 0 and entry["restarts"] == 0
        assert entry["bytes"] == estimate_bytes(folder, "bfloat16") + 2**30
        assert httpx.get(f"{url}/v1/models", timeout=10).json()["used_bytes"] == entry["bytes"]

        reply = _chat(url, "What is the capital of France?").json()
        assert "Paris" in reply["choices"][0]["message"]["content"]
        assert reply["model"] == "smollm2" and reply["usage"]["completion_tokens"] > 0
        assert _streamed_text(url, "What is the capital of France?") == reply["choices"][0]["message"]["content"]
        assert _chat(url, "Hi", max_tokens=5000).status_code == 400  # vLLM's own validation comes through

        assert _busy_load(entry["url"]) >= 1  # the load probe reads vLLM's real /metrics while it decodes

        proc = engines.engines["smollm2"].proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)  # the engine dies; the supervisor starts a new one
        entry = _wait_loaded(url, "smollm2", loads=2)
        assert entry["restarts"] == 1
        assert "Paris" in _chat(url, "What is the capital of France?").json()["choices"][0]["message"]["content"]
        last = engines.engines["smollm2"].proc
        assert last is not None and last.pid != proc.pid
    assert last.poll() is not None  # stopped with the server
    with pytest.raises(ProcessLookupError):
        os.killpg(last.pid, 0)  # its whole process group (vLLM's engine-core process included)
