"""vLLM as an engine of ``serve-local``: one vLLM OpenAI server process per ``engine: vllm`` model.

vLLM's CPU build cannot share the project's environment (it pins its own torch, transformers and openai),
so each such model runs ``python -m vllm.entrypoints.openai.api_server`` from the vLLM environment named
in local.yaml (built by scripts/vllm_env.sh), on a free 127.0.0.1 port, in eager mode (the compiled mode
starts 2-3x slower here and answered in gibberish in bf16). A supervisor task per model starts it,
polls ``/health``, restarts it when the process dies or stops answering, and stops it (its whole process
group: vLLM forks an engine-core process) when the server shuts down. Requests for the model are
forwarded to it unchanged, streamed or not (:mod:`thalamus.serving.vllm_proxy`).

Engines start when the server starts, not on first use: a start takes 25-30 s, and they are not evicted
to make room for torch models; their weights plus KV-cache space are held out of the memory budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from thalamus.errors import ConfigError
from thalamus.serving.config import ModelSpec, ServingConfig
from thalamus.serving.models import prepare_smollm2
from thalamus.serving.pool import LoadStats, estimate_bytes

_FAILS_BEFORE_RESTART = 3  # health checks in a row that may fail (a busy CPU answers late) before a restart


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_command(spec: ModelSpec, folder: Path, dtype: str, port: int) -> list[str]:
    """The api_server command line for ``spec`` (``spec.vllm`` set) serving ``folder`` on ``port``."""
    assert spec.vllm is not None
    cmd = [str(spec.vllm.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", spec.name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--dtype", dtype, "--disable-uvicorn-access-log"]
    if spec.context_length:
        cmd += ["--max-model-len", str(spec.context_length)]
    return cmd + list(spec.vllm.extra_args)


def kv_cache_gib(space: int) -> int:
    """VLLM_CPU_KVCACHE_SPACE is whole GiB; a configured size rounds up (at least 1)."""
    return max(1, math.ceil(space / 2**30))


def _group_gone(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until ``proc`` and every process of its group (vLLM's engine core) have exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reaps the leader, so it stops counting as a group member
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@dataclass
class VllmEngine:
    """One supervised vLLM process; ``url`` is its base URL while ``ready`` is set."""

    spec: ModelSpec
    folder: Path
    dtype: str
    log_path: Path
    held_bytes: int
    stats: LoadStats = field(default_factory=LoadStats)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    restarts: int = 0
    last_error: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _spawn(self) -> None:
        assert self.spec.vllm is not None
        port = free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib(self.spec.vllm.kv_cache_space))}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(vllm_command(self.spec, self.folder, self.dtype, port), env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``."""
        self.ready.clear()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        if not _group_gone(proc, grace_s):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _group_gone(proc, grace_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def _healthy(self, client: httpx.AsyncClient) -> bool:
        try:
            return (await client.get(f"{self.url}/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def start(self, client: httpx.AsyncClient) -> None:
        """Spawn and wait until /health answers; raise RuntimeError naming the model and its log otherwise."""
        assert self.spec.vllm is not None
        started = time.perf_counter()
        await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + self.spec.vllm.start_timeout_s
        while not await self._healthy(client):
            if not self.alive():
                raise RuntimeError(f"vLLM for model '{self.name}' exited with code "
                                   f"{self.proc.returncode if self.proc else '?'} while starting; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM for model '{self.name}' did not answer /health within "
                                   f"{self.spec.vllm.start_timeout_s:g} s (vllm.start_timeout_s); "
                                   f"log {self.log_path}")
            await asyncio.sleep(0.5)
        self.stats.add(time.perf_counter() - started, self.held_bytes)
        self.last_error = None
        self.ready.set()

    async def supervise(self, client: httpx.AsyncClient) -> None:
        """Start, then health-check forever; restart on death or repeated failed checks. Cancel to stop."""
        assert self.spec.vllm is not None
        try:
            while True:
                try:
                    await self.start(client)
                    await self._watch(client)
                except RuntimeError as exc:
                    self.last_error = str(exc)
                except Exception as exc:  # e.g. Popen's OSError: retried too (cancellation still ends the loop)
                    self.last_error = f"vLLM for model '{self.name}' failed: {type(exc).__name__}: {exc}"
                await asyncio.to_thread(self.stop)
                self.restarts += 1
                await asyncio.sleep(1.0)  # a model that cannot start is retried, not spun on
        finally:
            await asyncio.to_thread(self.stop)

    async def _watch(self, client: httpx.AsyncClient) -> None:
        """Return when the process died or failed ``_FAILS_BEFORE_RESTART`` health checks in a row."""
        assert self.spec.vllm is not None
        fails = 0
        while fails < _FAILS_BEFORE_RESTART:
            await asyncio.sleep(self.spec.vllm.health_interval_s)
            if not self.alive():
                self.last_error = f"vLLM for model '{self.name}' exited; restarting. Log {self.log_path}"
                return
            fails = 0 if await self._healthy(client) else fails + 1
        self.last_error = f"vLLM for model '{self.name}' failed {fails} health checks; restarting"


class VllmEngines:
    """The ``engine: vllm`` models of a config: their processes, supervisors and budget share."""

    def __init__(self, config: ServingConfig, cache_dir: Path | None = None) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self.engines: dict[str, VllmEngine] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # both made by start(), only when there are engines: the proxy's client for forwarded requests, and
        # one of their own for the health checks, so that requests holding every pooled connection (long
        # streams) cannot make a check time out and restart a busy engine
        self.client: httpx.AsyncClient | None = None
        self._health: httpx.AsyncClient | None = None

    def __contains__(self, name: object) -> bool:
        return name in self.engines

    def reserved_bytes(self) -> int:
        return sum(e.held_bytes for e in self.engines.values())

    def _engine(self, spec: ModelSpec, logs: Path) -> VllmEngine:
        assert spec.vllm is not None
        if not spec.vllm.python.is_file():
            raise ConfigError(f"model '{spec.name}': vllm.python {spec.vllm.python} does not exist; build the "
                              "vLLM environment with `bash scripts/vllm_env.sh DIR` and point it at DIR/bin/python")
        folder = prepare_smollm2(self.cache_dir) if spec.source == "smollm2" else spec.path
        assert folder is not None
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model '{spec.name}': {folder} is not a Hugging Face model folder (no config.json)")
        dtype = self.config.dtype_of(spec)
        size = estimate_bytes(folder, dtype) + kv_cache_gib(spec.vllm.kv_cache_space) * 2**30
        return VllmEngine(spec, folder, dtype, logs / f"{spec.name}.log", size)

    async def start(self) -> None:
        """Check every vLLM model fits the budget and launch their supervisors (starts run in background)."""
        specs = [s for s in self.config.models if s.engine == "vllm"]
        if not specs:
            return
        logs = Path(tempfile.mkdtemp(prefix="thalamus-vllm-"))
        for spec in specs:
            self.engines[spec.name] = await asyncio.to_thread(self._engine, spec, logs)
        if self.reserved_bytes() > self.config.memory_budget:
            sizes = ", ".join(f"{e.name}: {e.held_bytes}" for e in self.engines.values())
            raise ConfigError(f"vLLM engines need {self.reserved_bytes()} bytes (weights + KV cache; {sizes}) "
                              f"but memory_budget is {self.config.memory_budget}; raise it or lower "
                              "vllm.kv_cache_space")
        self.client, self._health = httpx.AsyncClient(), httpx.AsyncClient()
        self._tasks = [asyncio.create_task(e.supervise(self._health)) for e in self.engines.values()]

    async def url_of(self, name: str, timeout_s: float) -> str:
        """The base URL of a ready engine, waiting up to ``timeout_s`` for a (re)start."""
        engine = self.engines[name]
        await asyncio.wait_for(engine.ready.wait(), timeout_s)
        return engine.url

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in (self.client, self._health):
            if client is not None:
                await client.aclose()


def vllm_entry(engine: VllmEngine) -> dict[str, object]:
    """The model's line in serve-local's ``GET /v1/models``, shaped like a torch model's (``loads`` counts
    (re)starts, load seconds are start-up to a healthy /health) plus the engine's own state."""
    stats = engine.stats
    return {"id": engine.name, "object": "model", "created": 0, "owned_by": "thalamus-local",
            "loaded": engine.ready.is_set(), "loads": stats.loads,
            "load_seconds_last": stats.last_s if stats.loads else None, "load_seconds_mean": stats.mean_s(),
            "bytes": engine.held_bytes, "engine": "vllm", "dtype": engine.dtype, "url": engine.url or None,
            "restarts": engine.restarts,
            "last_error": engine.last_error}
