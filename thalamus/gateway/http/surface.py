"""HTTP handlers of the OpenAI surface beyond chat completions, and the app-wide surface settings.

``/v1/responses``, ``/v1/embeddings``, ``/v1/completions`` and ``/v1/models/{id}`` (ids may hold ``/``);
every ``/v1/...`` route is also served without the prefix (clients configured with a bare base URL);
CORS when ``server.cors.allow_origins`` lists origins; ``server.forward_headers`` (gateway/upstream/headers.py).
The handlers follow api.py's rules: the key is checked before the body is read (401, no ledger row), the
body size is capped (413 with a row), and every admitted request leaves one row.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from thalamus.gateway.config import ServerConfig
from thalamus.gateway.core.endpoints import COMPLETIONS, EMBEDDINGS, RESPONSES
from thalamus.gateway.http.api import admitted, list_models
from thalamus.gateway.http.deps import Caller, Service
from thalamus.gateway.upstream.headers import ForwardHeaders
from thalamus.gateway.wire.protocol import RequestError


async def retrieve_model(request: Request, service: Service, key_id: Caller) -> JSONResponse:
    """``models.retrieve``: one entry of ``GET /v1/models`` by its id (``router:NAME``, aliases, ``a/b``)."""
    model_id = request.path_params["model_id"]
    listing: dict[str, Any] = await list_models(service, key_id)
    for entry in listing["data"]:
        if entry["id"] == model_id:
            return JSONResponse(entry)
    raise RequestError(404, f"model {model_id!r} is not a configured backend, router or alias", param="model",
                       code="model_not_found", type_="not_found_error")


def install_surface(app: FastAPI, server: ServerConfig) -> None:
    """Call after every other install: the unprefixed copies are made of the routes present then."""
    app.add_api_route("/v1/responses", admitted(RESPONSES), methods=["POST"])
    app.add_api_route("/v1/embeddings", admitted(EMBEDDINGS), methods=["POST"])
    app.add_api_route("/v1/completions", admitted(COMPLETIONS), methods=["POST"])
    app.add_api_route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"])
    for route in [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/v1/")]:
        app.add_api_route(route.path.removeprefix("/v1"), route.endpoint, methods=sorted(route.methods or ()))
    if server.forward_headers:
        app.add_middleware(ForwardHeaders, names=server.forward_headers)
    cors = server.cors
    if cors.allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors.allow_origins, allow_methods=cors.allow_methods,
                           allow_headers=cors.allow_headers, allow_credentials=cors.allow_credentials,
                           max_age=cors.max_age, expose_headers=["x-thalamus-request-id", "x-thalamus-model",
                                                                 "x-thalamus-router"])
