"""Health endpoints in LiteLLM's shape, beside ``/healthz`` and ``/readyz`` (http/api.py), so probes and
dashboards written for a LiteLLM proxy work against the gateway unchanged.

- ``GET /health/liveness`` (and LiteLLM's spelling ``/health/liveliness``): ``"I'm alive!"``; never waits on
  the database, the routers or an upstream. No key needed.
- ``GET /health/readiness``: ``{"status": "healthy", "db": "connected", ...}`` (200) while the ledger takes
  writes, else 503 with ``status: "unhealthy"`` and ``db`` saying why; the same check as ``/readyz``.
  Router names and backend counts only for an authenticated caller.
- ``GET /health``: the upstream checks: one 1-token chat call to every backend (or only
  ``?model=NAME``), concurrently, each within ``?timeout=`` seconds (default 10);
  ``{"healthy_endpoints": [...], "unhealthy_endpoints": [...], "healthy_count", "unhealthy_count"}``.
  It costs a token or two per backend, is not a client request (no ledger row) and needs a key when
  auth is on. Errors are the upstream's redacted message and status.
"""

from __future__ import annotations

import asyncio
import functools
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.http.api import readiness_state
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.checks import UpstreamError
from thalamus.gateway.wire.protocol import RequestError

PROBE = [{"role": "user", "content": "ping"}]
DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S = 10.0, 60.0
_DB = {"ready": "connected", "ledger degraded": "degraded", "ledger unavailable": "disconnected"}


@functools.cache
def _version() -> str:
    try:
        return version("thalamus")
    except PackageNotFoundError:
        return "unknown"


async def liveness() -> JSONResponse:
    return JSONResponse("I'm alive!")


async def readiness(request: Request) -> JSONResponse:
    found = await readiness_state(request)
    if found is None:
        return JSONResponse({"status": "unhealthy", "db": "starting", "thalamus_version": _version()},
                            status_code=503)
    state, inside = found
    body = {"status": "healthy" if state == "ready" else "unhealthy", "db": _DB.get(state, state),
            "ledger": state, "thalamus_version": _version(), "last_updated": time.time()} | inside
    return JSONResponse(body, status_code=200 if state == "ready" else 503)


async def check_backend(backend: Backend, timeout_s: float) -> dict[str, Any]:
    """One 1-token chat call: ``{"model", "status": "healthy", "latency_ms"}`` or the error it met."""
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"model": backend.name}
    try:
        async with asyncio.timeout(timeout_s):
            await backend.complete({"model": backend.name, "messages": PROBE, "max_tokens": 1})
    except UpstreamError as exc:
        return entry | {"status": "unhealthy", "error": exc.message[:300], "error_status": exc.status,
                        "error_code": exc.code}
    except TimeoutError:
        return entry | {"status": "unhealthy", "error": f"no answer within {timeout_s:g} s", "error_status": 504,
                        "error_code": "health_check_timeout"}
    return entry | {"status": "healthy", "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}


def _timeout(request: Request) -> float:
    raw = request.query_params.get("timeout")
    try:
        value = float(raw) if raw is not None else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_TIMEOUT_S:
        raise RequestError(400, f"'timeout' must be seconds in (0, {MAX_TIMEOUT_S:g}]", param="timeout")
    return value


async def health(request: Request) -> JSONResponse:
    service: GatewayService | None = getattr(request.app.state, "service", None)
    if service is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    service.authorize(request.headers.get("authorization"))
    timeout_s, only = _timeout(request), request.query_params.get("model")
    if only is not None and only not in service.backends:
        raise RequestError(404, f"model {only!r} is not a configured backend", param="model", code="model_not_found")
    chosen = [b for name, b in service.backends.items() if only is None or name == only]
    results = await asyncio.gather(*(check_backend(b, timeout_s) for b in chosen))
    healthy = [r for r in results if r["status"] == "healthy"]
    unhealthy = [r for r in results if r["status"] != "healthy"]
    return JSONResponse({"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
                         "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)})


def install_health(app: FastAPI) -> None:
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/health/readiness", readiness, methods=["GET"])
    app.add_api_route("/health/liveness", liveness, methods=["GET"])
    app.add_api_route("/health/liveliness", liveness, methods=["GET"])
