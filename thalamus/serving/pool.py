"""The model pool: models load on first use and stay while they fit a memory budget (bytes of weights).

A model's size is estimated from its safetensors headers before loading, so a model that can never fit
is refused (503) without touching memory. To make room, the least recently used idle models are unloaded;
models serving requests are never evicted, so when only they stand in the way the request waits in a
bounded queue until a lease ends (``max_queued`` waiters, each for at most ``queue_timeout_s``; beyond
either, a 503 with Retry-After). Loading happens in a worker thread; requests for models already loaded
never wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thalamus.serving.batching import BatchWorker
from thalamus.serving.config import ModelSpec, OffloadSpec, ServingConfig, routing_of
from thalamus.serving.engine import Engine
from thalamus.serving.jobqueue import WorkerHooks
from thalamus.serving.machine import usable_cores
from thalamus.serving.metrics import ServingMetrics
from thalamus.serving.models import models_dir, prepare_smollm2
from thalamus.serving.moe import moe_info
from thalamus.serving.offload import ExpertOffload, store_folder
from thalamus.serving.offload_load import load_offloaded
from thalamus.serving.protocol import BusyError, ServingError

_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class LoadedModel:
    spec: ModelSpec
    tokenizer: Any
    engine: Engine
    worker: BatchWorker
    context_length: int
    bytes: int
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0
    offload: ExpertOffload | None = None


@dataclass
class LoadStats:
    """Measured loads of one model (evicting others to make room included), kept after it is unloaded:
    what a router needs to price switching to it (GET /v1/models)."""

    loads: int = 0
    total_s: float = 0.0
    last_s: float = 0.0
    bytes: int = 0

    def add(self, seconds: float, size: int) -> None:
        self.loads, self.total_s, self.last_s, self.bytes = self.loads + 1, self.total_s + seconds, seconds, size

    def mean_s(self) -> float | None:
        return self.total_s / self.loads if self.loads else None


def _safetensors_numels(path: Path) -> list[tuple[int, str, str]]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    out = []
    for name, info in header.items():
        if name != "__metadata__":
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
            out.append((numel, info["dtype"], name))
    return out


def _is_routed_expert(name: str) -> bool:
    """``...mlp.experts.3.w1.weight`` or fused ``...mlp.experts.gate_up_proj``; not ``shared_expert``."""
    return "experts" in name.split(".")


def estimate_bytes(folder: Path, dtype: str, offload: OffloadSpec | None = None) -> int:
    """Bytes the weights in ``folder`` take once loaded as ``dtype`` ("auto": as stored).

    With ``offload``, routed experts count only for the ``experts_resident`` of each layer kept in memory.
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return sum(p.stat().st_size for p in folder.glob("*.bin"))
    dense = experts = 0
    for file in files:
        for numel, stored, name in _safetensors_numels(file):
            width = _DTYPE_BYTES.get(dtype, 0) if stored in ("F32", "F16", "BF16") else 0
            size = numel * (width or _DTYPE_BYTES.get(stored, 4))
            if _is_routed_expert(name):
                experts += size
            else:
                dense += size
    routing = routing_of(folder) if offload is not None else None
    if offload is None or routing is None:
        return dense + experts
    return dense + experts * offload.experts_resident // routing[1]


class _NoRoom(Exception):
    """Models serving requests hold the memory a load needs; the request may wait for a lease to end."""


class ModelPool:
    """Loads, serves and evicts the configured models under ``config.memory_budget`` bytes."""

    def __init__(self, config: ServingConfig, metrics: ServingMetrics, cache_dir: Path | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.cache_dir = cache_dir
        self.specs = {spec.name: spec for spec in config.models if spec.engine == "torch"}
        self.loaded: dict[str, LoadedModel] = {}
        self.load_stats: dict[str, LoadStats] = {name: LoadStats() for name in self.specs}
        self._lock = asyncio.Lock()
        self._freed = asyncio.Event()  # set (and replaced) whenever a model stops serving requests
        self._room_waiters = 0
        self.reserved = 0  # bytes other engines (vLLM processes) hold out of the budget; never evicted here
        metrics.budget_bytes.set(config.memory_budget)

    def used_bytes(self) -> int:
        return self.reserved + sum(m.bytes for m in self.loaded.values())

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[LoadedModel]:
        """The loaded model, held (not evictable) until the block ends."""
        model = await self.get(name)
        model.in_use += 1
        try:
            yield model
        finally:
            model.in_use -= 1
            model.last_used = time.monotonic()
            if model.in_use == 0:
                self._freed.set()  # wake requests waiting for room; later waiters get a fresh event
                self._freed = asyncio.Event()

    async def get(self, name: str) -> LoadedModel:
        if name not in self.specs:
            raise ServingError(404, f"The model '{name}' does not exist on this server; "
                                    f"served models: {', '.join(sorted(m.name for m in self.config.models))}",
                               param="model", code="model_not_found")
        if name in self.loaded:
            return self.loaded[name]
        deadline = time.monotonic() + self.config.queue_timeout_s
        while True:
            freed = self._freed  # taken before trying, so a lease ending meanwhile is not missed
            try:
                async with self._lock:
                    if name not in self.loaded:
                        await self._load(self.specs[name])
                    return self.loaded[name]
            except _NoRoom as busy:
                await self._wait_for_room(name, str(busy), freed, deadline)

    async def _wait_for_room(self, name: str, why: str, freed: asyncio.Event, deadline: float) -> None:
        """Wait (outside the pool lock) until a model stops serving, or answer 503 with Retry-After."""
        limit, rejected = self.config.max_queued, self.metrics.queue_rejections
        if self._room_waiters >= limit:
            rejected.labels(name, "memory", "full").inc()
            raise BusyError(f"{why}; {self._room_waiters} requests already wait for room (max_queued={limit}); "
                            "retry later", code="queue_full")
        self._room_waiters += 1
        self.metrics.queued.labels(name, "memory").inc()
        started = time.monotonic()
        try:
            await asyncio.wait_for(freed.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            rejected.labels(name, "memory", "timeout").inc()
            raise BusyError(f"{why}; waited {self.config.queue_timeout_s:g} s (queue_timeout_s) and none "
                            "finished; retry later", code="queue_timeout") from None
        finally:
            self._room_waiters -= 1
            self.metrics.queued.labels(name, "memory").dec()
            self.metrics.queue_wait.labels(name, "memory").observe(time.monotonic() - started)

    async def _load(self, spec: ModelSpec) -> None:
        started = time.perf_counter()
        folder = await asyncio.to_thread(self._folder, spec)
        need = await asyncio.to_thread(estimate_bytes, folder, self.config.dtype_of(spec),
                                       spec.offload)
        evicted = await self._make_room(spec.name, need)
        try:
            model = await asyncio.to_thread(self._build, spec, folder)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ServingError(500, f"model '{spec.name}' failed to load from {folder}: {exc}",
                               type_="server_error", code="model_load_failed") from exc
        self.loaded[spec.name] = model
        elapsed = time.perf_counter() - started
        self.load_stats[spec.name].add(elapsed, model.bytes)
        self.metrics.load_seconds.labels(spec.name).observe(elapsed)
        if evicted:
            self.metrics.switch_seconds.labels(spec.name).observe(elapsed)
        self.publish()

    def _folder(self, spec: ModelSpec) -> Path:
        if spec.source == "smollm2":
            return prepare_smollm2(self.cache_dir)
        assert spec.path is not None
        if not (spec.path / "config.json").is_file():
            raise ServingError(500, f"model '{spec.name}': {spec.path} is not a Hugging Face model folder "
                                    "(no config.json)", type_="server_error", code="model_load_failed")
        return spec.path

    async def _make_room(self, name: str, need: int) -> list[str]:
        budget = self.config.memory_budget
        if need > budget - self.reserved:
            held = f" ({self.reserved} of them held by vLLM engines)" if self.reserved else ""
            raise ServingError(503, f"model '{name}' needs {need} bytes but the server's memory budget is "
                                    f"{budget} bytes{held}; raise memory_budget or serve a smaller model",
                               type_="server_error", code="model_too_large")
        evicted: list[str] = []
        idle = sorted((m for m in self.loaded.values() if m.in_use == 0), key=lambda m: m.last_used)
        while self.used_bytes() + need > budget and idle:
            victim = idle.pop(0)
            await self._unload(victim.spec.name)
            self.metrics.evictions.labels(victim.spec.name).inc()
            evicted.append(victim.spec.name)
        if self.used_bytes() + need > budget:
            busy = ", ".join(sorted(self.loaded))
            raise _NoRoom(f"model '{name}' needs {need} bytes; {self.used_bytes()} of the {budget}-byte "
                          f"budget are held by models serving requests ({busy})")
        return evicted

    async def _unload(self, name: str) -> None:
        started = time.perf_counter()
        model = self.loaded.pop(name)
        await asyncio.to_thread(model.worker.stop)
        model.engine.close()
        if model.offload is not None:
            model.offload.close()
        del model
        gc.collect()
        self.metrics.unload_seconds.labels(name).observe(time.perf_counter() - started)
        self.metrics.model_bytes.remove(name)
        self.publish()

    def _build(self, spec: ModelSpec, folder: Path) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        offload: ExpertOffload | None = None
        if spec.offload is not None:
            model, offload = self._load_offloaded(spec, spec.offload, folder)
        else:
            name = self.config.dtype_of(spec)
            dtype = "auto" if name == "auto" else getattr(torch, name)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        context = spec.context_length or getattr(model.config, "max_position_embeddings", None) \
            or tokenizer.model_max_length
        engine = Engine(model, tokenizer, int(context), moe_info(model))
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        size += offload.resident_bytes() if offload is not None else 0
        config = self.config
        worker = BatchWorker(engine, spec.name, config.batch_window_ms / 1000 if config.batching else 0.0,
                             config.max_batch_size if config.batching else 1, mode=config.batch_mode,
                             queue_timeout_s=config.queue_timeout_s, hooks=self._hooks(spec.name),
                             threads=config.torch_threads or usable_cores())
        return LoadedModel(spec, tokenizer, engine, worker, int(context), size, offload=offload)

    def _load_offloaded(self, spec: ModelSpec, offload: OffloadSpec, folder: Path) -> tuple[Any, ExpertOffload]:
        """Load with the routed experts in the on-disk store (written once per checkpoint, expert by
        expert): the full set of experts is never in memory, so a model larger than memory loads."""
        root = models_dir(self.cache_dir) / "offload"
        dtype = self.config.dtype_of(spec)
        model, experts = load_offloaded(folder, spec.name, dtype, offload.experts_resident, offload.policy,
                                        store_folder(root, spec.name, folder, dtype))
        experts.on_pass = lambda delta: self.metrics.record_offload(spec.name, delta)
        return model, experts

    def _hooks(self, name: str) -> WorkerHooks:
        m = self.metrics
        return WorkerHooks(on_batch=m.batch_size.labels(name).observe,
                           on_retry=lambda n: m.batch_retries.labels(name).inc(),
                           on_join=m.batch_joins.labels(name).inc, on_running=m.running.labels(name).set,
                           on_queued=m.queued.labels(name, "batch").set,
                           on_wait=m.queue_wait.labels(name, "batch").observe,
                           on_timeout=m.queue_rejections.labels(name, "batch", "timeout").inc)

    def publish(self) -> None:
        self.metrics.loaded_models.set(len(self.loaded))
        self.metrics.pool_bytes.set(self.used_bytes())
        for name, model in self.loaded.items():
            self.metrics.model_bytes.labels(name).set(model.bytes)

    async def close(self) -> None:
        for name in list(self.loaded):
            await self._unload(name)
