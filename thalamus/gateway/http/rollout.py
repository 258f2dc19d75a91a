"""The admin endpoints of the learning loop (``admin.enabled``; ``Authorization: Bearer <admin key>``).

- ``GET  /admin/routers``                      serving and candidate artifact of every router
- ``POST /admin/routers/{name}/reload``        ``{"artifact": DIR?}``: hot reload (default: the configured dir)
- ``POST /admin/routers/{name}/candidate``     ``{"artifact": DIR, "mode": "shadow"|"canary", "share": S}``
- ``DELETE /admin/routers/{name}/candidate``   stop shadow / canary
- ``POST /admin/routers/{name}/promote``       the candidate becomes the serving artifact
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from thalamus.errors import ConfigError, DataError
from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.rollout import load_checked
from thalamus.gateway.tenancy.auth import bearer_token
from thalamus.gateway.wire.protocol import RequestError, parse_json_body


def _admin(request: Request) -> GatewayService:
    """The service, after checking the admin key; 404 while the admin endpoints are off."""
    service: GatewayService = request.app.state.service
    admin = service.config.admin
    if not admin.enabled:
        raise RequestError(404, "the admin endpoints are off (admin.enabled: false)", code="not_found",
                           type_="not_found_error")
    secret, token = admin.secret(), bearer_token(request.headers.get("authorization"))
    if secret is None or token is None or not hmac.compare_digest(secret.encode(), token.encode("utf-8", "replace")):
        raise RequestError(401, "missing or invalid admin key", code="invalid_admin_key",
                           type_="authentication_error")
    return service


def _router(service: GatewayService, name: str) -> LoadedRouter:
    if name not in service.routers:
        raise RequestError(404, f"unknown router {name!r}; configured: {sorted(service.routers)}",
                           param="name", code="router_not_found", type_="not_found_error")
    return service.routers[name]


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    return parse_json_body(raw) if raw else {}


def _bad(exc: Exception, param: str) -> RequestError:
    return RequestError(400, str(exc), param=param, code="invalid_artifact")


async def list_routers(request: Request) -> JSONResponse:
    service = _admin(request)
    rollout = service.learning.rollout
    return JSONResponse({"routers": [rollout.state(r) for r in service.routers.values()]})


async def reload_router(request: Request) -> JSONResponse:
    service = _admin(request)
    name = request.path_params["name"]
    loaded = _router(service, name)
    directory = Path(str((await _body(request)).get("artifact") or loaded.config.artifact))
    try:
        router, version = await asyncio.to_thread(load_checked, directory, loaded, service.learning.config)
    except (ConfigError, DataError, OSError, ValueError) as exc:
        raise _bad(exc, "artifact") from None
    old = loaded.version
    service.learning.swap(loaded, router, version, set(service.backends))
    return JSONResponse({"router": name, "previous_version": old, "version": version, "artifact": str(directory)})


async def set_candidate(request: Request) -> JSONResponse:
    service = _admin(request)
    loaded = _router(service, request.path_params["name"])
    body = await _body(request)
    if not isinstance(body.get("artifact"), str):
        raise RequestError(400, "'artifact' (a router artifact directory) is required", param="artifact")
    share = body.get("share", 0.0)
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise RequestError(400, "'share' must be a number in (0, 1]", param="share")
    try:
        await asyncio.to_thread(service.learning.rollout.set_candidate, loaded, Path(body["artifact"]),
                                body.get("mode", "shadow"), float(share))
    except (ConfigError, DataError, OSError, ValueError) as exc:
        raise _bad(exc, "artifact") from None
    return JSONResponse(service.learning.rollout.state(loaded))


async def clear_candidate(request: Request) -> JSONResponse:
    service = _admin(request)
    loaded = _router(service, request.path_params["name"])
    service.learning.rollout.clear(loaded.name)
    return JSONResponse(service.learning.rollout.state(loaded))


async def promote(request: Request) -> JSONResponse:
    service = _admin(request)
    loaded = _router(service, request.path_params["name"])
    candidate = service.learning.rollout.clear(loaded.name)
    if candidate is None:
        raise RequestError(409, f"router {loaded.name!r} has no candidate to promote", code="no_candidate")
    old = loaded.version
    service.learning.swap(loaded, candidate.router, candidate.version, set(service.backends))
    return JSONResponse({"router": loaded.name, "previous_version": old, "version": candidate.version,
                         "artifact": str(candidate.artifact)})


def install_rollout(app: FastAPI) -> None:
    app.add_api_route("/admin/routers", list_routers, methods=["GET"])
    app.add_api_route("/admin/routers/{name}/reload", reload_router, methods=["POST"])
    app.add_api_route("/admin/routers/{name}/candidate", set_candidate, methods=["POST"])
    app.add_api_route("/admin/routers/{name}/candidate", clear_candidate, methods=["DELETE"])
    app.add_api_route("/admin/routers/{name}/promote", promote, methods=["POST"])
