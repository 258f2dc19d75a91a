"""Thin HTTP handlers: read the request, call the service, write an OpenAI-shaped response.

Every error leaves as ``{"error": {"message", "type", "param", "code"}}`` with its status;
Starlette's HTTP errors (unknown path, wrong method) are converted to the same shape. Handlers take
only the ``Request`` and parse the body themselves (``parse_json_body``), so FastAPI never raises
``RequestValidationError`` here and the app installs no handler for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from thalamus.gateway.core.call import Call, Result
from thalamus.gateway.core.endpoints import CHAT, Endpoint
from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.http.deps import Caller, Feedback, Service
from thalamus.gateway.tenancy.controls import router_allowed
from thalamus.gateway.wire.protocol import RequestError, parse_json_body
from thalamus.ledger import Ledger
from thalamus.openai_wire import error_body

log = logging.getLogger("thalamus.gateway")
_LABELS = {"good": 1.0, "bad": 0.0}
_TEXT_LIMITS = {"source": 128, "comment": 10_000}  # the feedback table's column sizes


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` (declared or streamed). A declared body
    not far over the limit is read and dropped first: closing a socket that still holds the client's bytes
    resets the connection, and the client would never see the 413."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        if int(length) <= 4 * limit:
            async for _ in request.stream():
                pass
        return None
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _declared_size(request: Request, limit: int) -> int:
    length = request.headers.get("content-length", "")
    return int(length) if length.isdigit() else limit + 1


def admitted(endpoint: Endpoint) -> Callable[..., Awaitable[Response]]:
    """A handler for a request that gets a ledger row: the key is checked before the body is read (401, no
    row), the body is capped (413 with a row), then the pipeline answers ``endpoint``'s request as JSON or SSE."""

    async def handle(request: Request, service: Service, key_id: Caller) -> Response:
        call = service.new_call(key_id, endpoint.path)
        call.session_header = request.headers.get(service.config.affinity.header)
        limit = service.config.server.max_body_bytes
        raw = await _read_capped(request, limit)
        if raw is None:
            return error_response(await service.reject(call, service.too_large(_declared_size(request, limit))))
        result = await _unless_gone(request, service, call, service.handle(endpoint, call, raw))
        if result is None:  # nobody is listening; the row says 499
            return Response(status_code=499)
        if result.stream is not None:
            return StreamingResponse(result.stream, media_type="text/event-stream", headers=result.headers)
        return Response(result.body, status_code=result.status, headers=result.headers,
                        media_type="application/json")

    return handle


chat_completions = admitted(CHAT)


async def _client_gone(request: Request) -> None:
    """Returns once the client has closed its connection: the body has been read, so the next ASGI message
    is ``http.disconnect``."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, service: GatewayService, call: Call,
                       flow: Awaitable[Result]) -> Result | None:
    """The pipeline's answer; or, when the client closes its connection before the answer is decided, None:
    the pipeline (and its upstream call) is cancelled and the row says 499 ``client_disconnected``, as a
    stream's row does. An answer already decided (its row set and being recorded) is left to finish."""
    work, gone = asyncio.ensure_future(flow), asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    finally:
        gone.cancel()
    if gone.done() and not gone.cancelled() and gone.exception() is not None:
        log.debug("disconnect watcher of %s failed: %r", call.row.id, gone.exception())  # counts as gone
    if work.done() or call.row.status:
        return await work
    work.cancel()
    try:
        return await work  # it finished before the cancellation reached it
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # this handler is cancelled too (shutdown)
            raise
    await service.reject(call, RequestError(499, "the client closed its connection before the answer",
                                            code="client_disconnected"))
    return None


async def list_models(service: Service, key_id: Caller) -> dict[str, Any]:
    """The backends, routers and aliases this key may call (a key scoped to some models or routers lists
    only those; a router's ``models`` are cut to the key's)."""
    now = int(time.time())
    record = service.controls.record(key_id)
    allowed = record.models if record is not None else None
    data: list[dict[str, Any]] = [{"id": name, "object": "model", "created": now, "owned_by": "thalamus:backend"}
                                  for name in service.backends if allowed is None or name in allowed]
    for name, loaded in service.routers.items():
        if record is not None and not router_allowed(record, name, tuple(loaded.config.aliases)):
            continue
        data.append({"id": f"router:{name}", "object": "model", "created": now, "owned_by": "thalamus:router",
                     "aliases": loaded.config.aliases,
                     "models": [m for m in loaded.servable if allowed is None or m in allowed],
                     "routellm": f"router-{name}-THRESHOLD" if loaded.config.strong else None})
        data.extend({"id": alias, "object": "model", "created": now, "owned_by": "thalamus:router",
                     "alias_of": f"router:{name}"} for alias in loaded.config.aliases)
    return {"object": "list", "data": data}


def _feedback_fields(body: dict[str, Any]) -> tuple[str, float, str | None]:
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise RequestError(400, "'request_id' is required (the x-thalamus-request-id header)", param="request_id")
    if len(request_id) > 64 or not request_id.isprintable():
        raise RequestError(400, "'request_id' is not a gateway request id (printable, at most 64 characters)",
                           param="request_id")
    label, score = body.get("label"), body.get("score")
    if score is None and label is None:
        raise RequestError(400, "give 'score' in [0, 1] or 'label' good/bad", param="score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1):
        raise RequestError(400, "'score' must be a number in [0, 1]", param="score")
    if label is not None and (not isinstance(label, str) or label not in _LABELS):
        raise RequestError(400, "'label' must be 'good' or 'bad'", param="label")
    value = float(score) if score is not None else _LABELS[str(label)]
    return request_id, value, label


async def post_feedback(request: Request, service: Service, desk: Feedback, key_id: Caller) -> JSONResponse:
    limit = service.config.server.max_body_bytes
    raw = await _read_capped(request, limit)
    if raw is None:
        raise service.too_large(_declared_size(request, limit))
    body = parse_json_body(raw)
    request_id, score, label = _feedback_fields(body)
    for key, limit in _TEXT_LIMITS.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit or "\x00" in value):
            raise RequestError(400, f"'{key}' must be a string of at most {limit} characters without NUL",
                               param=key)
    found, owner = await desk.request_owner(request_id)
    if not found:
        raise RequestError(404, f"unknown request_id {request_id!r}", param="request_id", code="request_not_found")
    if service.keys.enabled and owner != key_id:
        raise RequestError(403, f"request {request_id!r} was made with another API key; feedback is accepted "
                           "only from the key that made the request", param="request_id", code="not_your_request",
                           type_="permission_error")
    fid, learned = await desk.store(request_id, score, label, body.get("source"), body.get("comment"), key_id)
    return JSONResponse({"id": fid, "object": "feedback", "request_id": request_id, "score": score,
                         "learned": learned})


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    """200 when the ledger takes writes. Router names and counters only for an authenticated caller (or
    with auth off); the database error is named by its type, never by its message (it may name the host)."""
    found = await readiness_state(request)
    if found is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    status, inside = found
    return JSONResponse({"status": status} | inside, status_code=200 if status == "ready" else 503)


async def readiness_state(request: Request) -> tuple[str, dict[str, Any]] | None:
    """The ledger's state (``ready``, ``ledger degraded``, ``ledger unavailable``) and what an authenticated
    caller (or anyone with auth off) may also see: the ledger's details, router names and the backend count;
    None while the gateway starts. ``/readyz`` and ``/health/readiness`` format it."""
    service: GatewayService | None = getattr(request.app.state, "service", None)
    if service is None:
        return None
    status, details = await ledger_state(request.app.state.ledger, service,
                                          getattr(request.app.state, "health_executor", None))
    if service.keys.enabled and service.keys.identify(request.headers.get("authorization")) is None:
        return status, {}
    return status, details | {"routers": sorted(service.routers), "backends": len(service.backends)}


async def ledger_state(ledger: Ledger, service: GatewayService,
                        executor: Executor | None) -> tuple[str, dict[str, Any]]:
    try:
        await asyncio.get_running_loop().run_in_executor(executor, ledger.ping)
    except Exception as exc:  # any database failure means not ready
        log.warning("readiness: ledger ping failed: %s", exc)
        return "ledger unavailable", {"error": type(exc).__name__}
    health = service.writer.health()
    if not health.ok:  # live: back to ready by itself once the database answers and the journal is replayed
        details = health.as_dict()
        for key in ("last_error", "journal_path"):  # they name the host and the file system; the log has them
            details.pop(key, None)
        log.warning("readiness: ledger degraded: %s", health.last_error)
        return "ledger degraded", {"ledger": details}
    return "ready", {}


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body(f"internal gateway error: {type(exc).__name__}", "server_error"),
                        status_code=500)


def install(app: FastAPI) -> None:
    """Attach the routes and error handlers."""
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/feedback", post_feedback, methods=["POST"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
