"""``engine: vllm`` failure handling without vLLM: the supervisor, the proxy's 503/502, restarts.

The fast tests run in process (no engine process is started); the slow ones start a stub api_server
(``tests/serving/vllm_stub``, put on PYTHONPATH, run by this interpreter) that never answers /health,
exits at once, or answers chats, so the supervisor's restarts run for real in a few seconds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from thalamus.serving.config import ServingConfig
from thalamus.serving.vllm_engine import VllmEngines


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
