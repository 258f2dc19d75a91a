"""HTTP handlers of the OpenAI surface beyond chat completions: ``/v1/responses`` (more to come here).

They follow api.py's rules: the key is checked before the body is read (401, no ledger row), the body
size is capped (413 with a row), and every admitted request leaves one row.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from thalamus.gateway.api import _declared_size, _read_capped, _service, error_response
from thalamus.gateway.responses_flow import ResponsesFlow


async def create_response(request: Request) -> Response:
    service = _service(request)
    call = service.new_call(service.authorize(request.headers.get("authorization")))
    limit = service.config.server.max_body_bytes
    raw = await _read_capped(request, limit)
    if raw is None:
        return error_response(await service.reject(call, service.too_large(_declared_size(request, limit))))
    result = await ResponsesFlow(service).handle(call, raw)
    if result.stream is not None:
        return StreamingResponse(result.stream, media_type="text/event-stream", headers=result.headers)
    return Response(result.body, status_code=result.status, headers=result.headers, media_type="application/json")


def install_surface(app: FastAPI) -> None:
    app.add_api_route("/v1/responses", create_response, methods=["POST"])
