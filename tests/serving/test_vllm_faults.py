"""``engine: vllm`` failure handling without vLLM: the supervisor, the proxy's 503/502, restarts.

The fast tests run in process (no engine process is started); the slow ones run a stub api_server
(tests/serving/vllm_stub_server.py, behind a ``vllm.entrypoints.openai.api_server`` module made on
PYTHONPATH, started by this interpreter as ``vllm.python``) that exits at once, never answers, answers
chats, or fails its health checks, so the supervisor's restarts run for real in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from thalamus.serving.app import create_app
from thalamus.serving.config import ServingConfig
from thalamus.serving.vllm_engine import VllmEngine, VllmEngines


def _vllm_config(folder: Path, python: str, **vllm: Any) -> ServingConfig:
    (folder / "config.json").write_text("{}")
    return ServingConfig.from_dict({"memory_budget": "4GiB", "queue_timeout_s": 0.5, "models": [
        {"name": "v", "path": str(folder), "engine": "vllm",
         "vllm": {"python": python, "kv_cache_space": "1GiB", **vllm}}]})


async def _until(check: Any, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_supervisor_survives_a_python_that_cannot_run(tmp_path: Path) -> None:
    """Popen's OSError (the configured python is no executable) is retried like a failed start, not the end
    of the supervisor: the model reports the error, and shutdown closes cleanly."""
    python = tmp_path / "python"
    python.write_text("not a program")  # exists (the config check passes) but cannot be executed
    model = tmp_path / "model"
    model.mkdir()

    async def run() -> None:
        engines = VllmEngines(_vllm_config(model, str(python)))
        await engines.start()
        engine = engines.engines["v"]
        await _until(lambda: engine.last_error is not None, 5)
        await asyncio.sleep(0.1)
        assert "PermissionError" in (engine.last_error or "") and engine.restarts >= 1
        assert not engine.ready.is_set() and not any(task.done() for task in engines._tasks)
        await engines.close()  # no exception: the supervisor was still running and was cancelled

    asyncio.run(run())


Handler = Callable[[httpx.Request], httpx.Response]


@asynccontextmanager
async def proxied(folder: Path, handler: Handler, ready: bool) -> AsyncIterator[httpx.AsyncClient]:
    """A server (in process) with torch model "t" and vLLM model "v" whose engine is no process: its
    requests go to ``handler`` (an httpx mock transport); ``ready`` says whether it counts as started."""
    config = ServingConfig.from_dict({"memory_budget": "4GiB", "queue_timeout_s": 0.3, "max_prompt_chars": 50,
                                      "models": [{"name": "t", "source": "smollm2"}]})
    spec = _vllm_config(folder, sys.executable).models[0]
    app = create_app(config)
    async with app.router.lifespan_context(app):
        engines: VllmEngines = app.state.serving.vllm
        assert engines.client is None  # no vLLM model in the config: no client either
        engine = VllmEngine(spec, folder, "float32", folder / "v.log", 0, url="http://vllm.invalid")
        if ready:
            engine.ready.set()
        engines.engines["v"] = engine
        engines.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # closed by the lifespan
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as http:
            yield http


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


def test_vllm_body_is_forwarded_unchanged_after_the_prompt_size_check(tmp_path: Path) -> None:
    """A vLLM model's body goes on as sent, fields the torch schema refuses included (``n: 2``), but
    ``max_prompt_chars`` holds for it too (413 before forwarding); torch models keep their schema."""
    sent: list[bytes] = []

    def vllm(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, json={"object": "chat.completion", "choices": []})

    async def run() -> None:
        async with proxied(tmp_path, vllm, True) as client:
            raw = json.dumps(_chat("v", n=2, temperature=5, top_k=3)).encode()
            response = await client.post("/v1/chat/completions", content=raw,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 200 and response.json()["object"] == "chat.completion"
            assert sent == [raw]

            long_parts = [{"type": "text", "text": "x" * 60}]
            response = await client.post("/v1/chat/completions",
                                         json=_chat("v", messages=[{"role": "user", "content": long_parts}]))
            assert response.status_code == 413 and response.json()["error"]["code"] == "prompt_too_large"
            assert len(sent) == 1  # refused here, never forwarded

            response = await client.post("/v1/chat/completions", json=_chat("t", n=2))
            assert response.status_code == 400 and response.json()["error"]["param"] == "n"
            response = await client.post("/v1/chat/completions",
                                         json=_chat("t", messages=[{"role": "user", "content": "x" * 60}]))
            assert response.status_code == 413
            response = await client.post("/v1/chat/completions", json={"messages": []})
            assert response.status_code == 400 and response.json()["error"]["param"] == "model"

    asyncio.run(run())


def test_vllm_engine_not_ready_is_503_with_retry_after_and_a_failing_one_502(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def run() -> None:
        async with proxied(tmp_path, refuse, False) as starting:
            response = await starting.post("/v1/chat/completions", json=_chat("v"))
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            assert response.json()["error"]["code"] == "engine_starting"
        async with proxied(tmp_path, refuse, True) as failing:
            response = await failing.post("/v1/chat/completions", json=_chat("v"))
            assert response.status_code == 502
            error = response.json()["error"]
            assert error["code"] == "engine_failed" and "ConnectError" in error["message"]

    asyncio.run(run())


STUB_SERVER = Path(__file__).with_name("vllm_stub_server.py")


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Puts the stub api_server on the engines' PYTHONPATH; call it with the mode their next act reads."""
    module = tmp_path / "stubpath" / "vllm" / "entrypoints" / "openai" / "api_server.py"
    module.parent.mkdir(parents=True)
    module.write_text("from vllm_stub_server import main\n\nmain()\n")
    mode = tmp_path / "mode"
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'stubpath'}:{STUB_SERVER.parent}")
    monkeypatch.setenv("THALAMUS_VLLM_STUB_MODE", str(mode))

    def set_mode(value: str) -> None:
        mode.write_text(value)

    return set_mode


@pytest.mark.slow  # starts processes (a few seconds)
def test_engine_that_exits_is_restarted_then_serves_and_is_restarted_after_failed_health_checks(
        tmp_path: Path, stub: Callable[[str], None]) -> None:
    stub("exit")
    model = tmp_path / "model"
    model.mkdir()
    app = create_app(_vllm_config(model, sys.executable, health_interval_s=0.2, start_timeout_s=20))

    async def run() -> None:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            engine: VllmEngine = app.state.serving.vllm.engines["v"]
            await _until(lambda: engine.restarts >= 1, 15)  # each start exits at once; retried every second
            assert "exited with code 3 while starting" in (engine.last_error or "") and engine.stats.loads == 0
            response = await client.post("/v1/chat/completions", json=_chat("v"))
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            error = response.json()["error"]
            assert error["code"] == "engine_starting" and "exited with code 3" in error["message"]

            stub("serve")
            await _until(engine.ready.is_set, 15)
            response = await client.post("/v1/chat/completions", json=_chat("v", n=2))
            assert response.status_code == 200, response.text
            assert [c["message"]["content"] for c in response.json()["choices"]] == ["stub v", "stub v"]
            first, restarts = engine.proc, engine.restarts
            assert first is not None and engine.last_error is None and engine.stats.loads == 1

            stub("unhealthy")  # the running engine fails its checks: stopped and started again
            await _until(lambda: engine.restarts > restarts, 10)
            assert first.poll() is not None and "failed 3 health checks" in (engine.last_error or "")
            stub("serve")
            await _until(lambda: engine.ready.is_set() and engine.stats.loads == 2, 15)
            assert (await client.post("/v1/chat/completions", json=_chat("v"))).status_code == 200
            last = engine.proc
            assert last is not None and last.pid != first.pid
        assert last.poll() is not None  # stopped with the server

    asyncio.run(run())


@pytest.mark.slow  # starts a process (about 2 s)
def test_engine_that_never_answers_is_stopped_after_its_start_timeout(tmp_path: Path,
                                                                      stub: Callable[[str], None]) -> None:
    stub("silent")
    model = tmp_path / "model"
    model.mkdir()

    async def run() -> None:
        engines = VllmEngines(_vllm_config(model, sys.executable, start_timeout_s=1))
        await engines.start()
        engine = engines.engines["v"]
        await _until(lambda: engine.proc is not None, 5)
        silent = engine.proc
        assert silent is not None
        await _until(lambda: engine.restarts >= 1, 10)
        assert "did not answer /health within 1 s" in (engine.last_error or "") and not engine.ready.is_set()
        assert silent.poll() is not None  # killed, not left behind
        await engines.close()

    asyncio.run(run())
