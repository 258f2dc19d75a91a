"""What the gateway knows about the model pools of the local servers it routes to, kept fresh by polling.

Each tracked backend is a model on an OpenAI-compatible server whose ``GET {api_base}/models`` says per
model whether it is ``loaded`` and how long its loads took (thalamus serve-local does). A poller reads
every server each ``poll_interval_s``, with ``poll_timeout_s`` per read; a failed poll (connection refused,
timeout, not JSON) leaves the last known state in place and is counted, so routing never waits on it or
breaks because of it. Between polls the tracker updates its own view when it sends a request to a model
that is not resident: that model is marked resident and, when the server's budget and the models' bytes
are known, the least recently chosen others are marked evicted until the marked set fits, as the
server's LRU pool will do. A poll that started before such a mark does not undo it.

With ``load_aware``, each poll also reads the server's ``{root}/metrics`` (vLLM's or serve-local's request
gauges, parsed by thalamus/engine_metrics.py) with the same timeout and the same keep-the-last-state rule,
and the load is the polled one: the gateway has no completion signal to count its own requests between
polls (counting sends for a while piled sequential requests up on the idle engine in
benchmarks/load_routing.py), so a burst within one ``poll_interval_s`` may still herd onto one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from thalamus.engine_metrics import EngineLoad, parse_load
from thalamus.gateway.config import BackendConfig
from thalamus.gateway.config.pool import PoolRoutingConfig

log = logging.getLogger("thalamus.gateway.pool")


@dataclass
class ModelState:
    """One model of one server, as last polled (or as the tracker itself changed it, at ``changed_at``)."""

    loaded: bool
    load_s_last: float | None = None
    load_s_mean: float | None = None
    bytes: int | None = None
    changed_at: float = 0.0  # monotonic time of the tracker's own change; 0: as polled
    chosen_at: float = 0.0  # monotonic time the gateway last sent it a routed request


@dataclass
class ServerState:
    """One polled server: its models' states, its budget, and how polling it went."""

    url: str  # the api_base; polled at {url}/models
    models: dict[str, ModelState] = field(default_factory=dict)
    budget: int | None = None
    polls: int = 0
    failures: int = 0
    last_error: str | None = None
    polled_at: float | None = None  # wall-clock time of the last successful poll
    load: dict[str, EngineLoad] = field(default_factory=dict)  # load_aware: per model, from {root}/metrics
    load_failures: int = 0
    load_error: str | None = None


def models_url(api_base: str) -> str:
    return api_base.rstrip("/") + "/models"


def metrics_url(api_base: str) -> str:
    """vLLM and serve-local publish /metrics at the server's root, beside /v1."""
    return api_base.rstrip("/").removesuffix("/v1") + "/metrics"


def tracked_backends(config: PoolRoutingConfig, backends: list[BackendConfig]) -> dict[str, tuple[str, str]]:
    """backend name -> (api_base, the model id its server knows it by). Backends with several
    deployments are left out: which deployment answers is decided later, per request."""
    names = set(config.backends) if config.backends is not None else None
    out: dict[str, tuple[str, str]] = {}
    for b in backends:
        if (names is None or b.name in names) and b.api_base and not b.deployments:
            out[b.name] = (b.api_base, (b.model or b.name).removeprefix("openai/"))
    return out


def parse_models(body: Any) -> tuple[dict[str, ModelState], int | None]:
    """The residency a ``/models`` answer reports (models without a boolean ``loaded`` are skipped)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError("not an OpenAI model list (no 'data' list)")
    states: dict[str, ModelState] = {}
    for entry in body["data"]:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("loaded"), bool):
            states[entry["id"]] = ModelState(entry["loaded"], _number(entry.get("load_seconds_last")),
                                             _number(entry.get("load_seconds_mean")), _int(entry.get("bytes")))
    budget = _int(body.get("memory_budget"))
    return states, budget


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class PoolTracker:
    """The polled pool state of the servers behind ``pool_routing``'s backends (see the module doc)."""

    def __init__(self, config: PoolRoutingConfig, backends: list[BackendConfig]) -> None:
        self.config = config
        self.members = tracked_backends(config, backends)
        self.servers = {url: ServerState(url) for url, _ in self.members.values()}
        self._lock = threading.Lock()  # routing threads read and mark; the poller merges
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    # -- reading ------------------------------------------------------------------------
    def expected_load_s(self, backend: str) -> float | None:
        """Seconds a request to ``backend`` is expected to wait for its model to load: 0 when resident,
        None when the backend is not tracked or its server never answered a poll (nothing known)."""
        state = self._state(backend)
        if state is None:
            return None
        if state.loaded:
            return 0.0
        measured = state.load_s_mean if self.config.estimate == "mean" else state.load_s_last
        return measured if measured is not None else self.config.default_load_s

    def expected_wait_s(self, backend: str) -> float | None:
        """Seconds a request to ``backend`` is expected to queue behind its engine's running and waiting
        requests (``load_aware``); None when not load-aware, not tracked, or its load was never read."""
        member = self.members.get(backend)
        if member is None or not self.config.load_aware:
            return None
        load = self.servers[member[0]].load.get(member[1])
        if load is None:
            return None
        return load.in_flight * self.config.service_s_by_backend.get(backend, self.config.service_s)

    def _state(self, backend: str) -> ModelState | None:
        member = self.members.get(backend)
        if member is None:
            return None
        return self.servers[member[0]].models.get(member[1])

    def snapshot(self) -> dict[str, Any]:
        """Every tracked server's state, JSON-ready (for logs, tests and benchmarks)."""
        with self._lock:
            return {url: {"polls": s.polls, "failures": s.failures, "last_error": s.last_error,
                          "budget": s.budget, "loaded": sorted(m for m, st in s.models.items() if st.loaded),
                          "load": {m: ld.in_flight for m, ld in s.load.items()}, "load_failures": s.load_failures,
                          "load_error": s.load_error}
                    for url, s in self.servers.items()}

    # -- the gateway's own updates --------------------------------------------------------
    def chosen(self, backend: str) -> None:
        """A routed request goes to ``backend``: its model will be resident, and others may be evicted."""
        member = self.members.get(backend)
        if member is None:
            return
        now = time.monotonic()
        with self._lock:
            server = self.servers[member[0]]
            state = server.models.get(member[1])
            if state is None:
                return
            state.chosen_at = now
            if not state.loaded:
                state.loaded, state.changed_at = True, now
                self._guess_evictions(server, member[1], now)

    def _guess_evictions(self, server: ServerState, keep: str, now: float) -> None:
        held = [(name, st) for name, st in server.models.items() if st.loaded]
        if server.budget is None or any(st.bytes is None for _, st in held):
            return  # cannot tell what must go; the next poll will
        used = sum(st.bytes or 0 for _, st in held)
        for name, st in sorted(held, key=lambda item: item[1].chosen_at):
            if used <= server.budget:
                break
            if name != keep:
                st.loaded, st.changed_at = False, now
                used -= st.bytes or 0

    # -- polling --------------------------------------------------------------------------
    async def start(self) -> None:
        if self.servers and self._task is None:
            self._client = httpx.AsyncClient(timeout=self.config.poll_timeout_s)
            await self.poll_once()  # the first state before the first request, bounded by the timeout
            self._task = asyncio.create_task(self._loop(), name="thalamus-pool-poller")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        """Read every server once, concurrently; failures are counted and keep the last known state."""
        loads = [self._poll_load(server) for server in self.servers.values()] if self.config.load_aware else []
        await asyncio.gather(*(self._poll(server) for server in self.servers.values()), *loads)

    async def _poll_load(self, server: ServerState) -> None:
        assert self._client is not None
        try:
            response = await self._client.get(metrics_url(server.url))
            response.raise_for_status()
            load = parse_load(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            with self._lock:
                first = server.load_error is None
                server.load_failures += 1
                server.load_error = f"{type(exc).__name__}: {exc}"[:300]
            if first:
                log.warning("load poll of %s failed (keeping the last known load): %s", metrics_url(server.url), exc)
            return
        with self._lock:
            server.load, server.load_error = load, None

    async def _poll(self, server: ServerState) -> None:
        assert self._client is not None
        started = time.monotonic()
        try:
            response = await self._client.get(models_url(server.url))
            response.raise_for_status()
            states, budget = parse_models(response.json())
        except (httpx.HTTPError, ValueError) as exc:  # JSON errors are ValueErrors
            with self._lock:
                first = server.last_error is None  # log a streak of failures once, not every interval
                server.polls, server.failures = server.polls + 1, server.failures + 1
                server.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if first:
                log.warning("pool poll of %s failed (keeping the last known state): %s", server.url, exc)
            return
        with self._lock:
            self._merge(server, states, started)
            server.budget, server.polls, server.polled_at = budget, server.polls + 1, time.time()
            server.last_error = None

    @staticmethod
    def _merge(server: ServerState, states: dict[str, ModelState], started: float) -> None:
        for name, new in states.items():
            old = server.models.get(name)
            if old is not None:
                new.chosen_at = old.chosen_at
                if old.changed_at > started:  # the tracker's own change is newer than this answer
                    new.loaded, new.changed_at = old.loaded, old.changed_at
            server.models[name] = new
