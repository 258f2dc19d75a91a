"""The admin API for virtual keys (``/admin/keys``) and the spend API (``/api/spend``).

``/admin/*`` needs the admin key (``auth.admin_key_env``); it is separate from the keys that call models,
and only it sees every key's spend. Keys are created, listed, updated (``PATCH``), rotated (a new secret,
the old one valid for a grace period) and revoked here. ``/api/spend`` answers a key's own spend to that
key, a team's to its team admin (tenancy/roles.py), read from the ledger's rows (the ledger is the source
of truth; the counters that enforce budgets are written from the same rows).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from thalamus.errors import ConfigError
from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.http.deps import Reader
from thalamus.gateway.http.stats import _time as parse_time
from thalamus.gateway.tenancy.auth import bearer_token
from thalamus.gateway.tenancy.keys import KeyNotFound, KeyRecord, record_from
from thalamus.gateway.tenancy.teams import team_from
from thalamus.gateway.tenancy.usage import Periods
from thalamus.gateway.wire.protocol import RequestError, parse_json_body
from thalamus.ledger.schema import requests

ADMIN_BODY_BYTES = 64 * 1024


def _service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


def _require_admin(request: Request) -> GatewayService:
    service = _service(request)
    if not service.controls.is_admin(bearer_token(request.headers.get("authorization"))):
        raise RequestError(401, "the admin API needs 'Authorization: Bearer <admin key>' (auth.admin_key_env)",
                           code="invalid_admin_key", type_="authentication_error")
    if not service.controls.enabled:
        raise RequestError(400, "virtual keys are off (auth.enabled and auth.virtual_keys)", code="keys_disabled")
    return service


async def create_key(request: Request) -> JSONResponse:
    service = _require_admin(request)
    fields = await _fields(request)
    try:
        record = record_from(fields)
        stored, secret = await asyncio.to_thread(service.controls.store.create, record,
                                                 service.controls.static_ids)
    except ConfigError as exc:
        raise RequestError(400, str(exc), code="invalid_key") from None
    service.controls.created(stored, secret)
    return JSONResponse({"object": "api_key", **stored.public(), "key": secret})


async def list_keys(request: Request) -> JSONResponse:
    service = _require_admin(request)
    revoked = request.query_params.get("include_revoked", "").lower() in ("1", "true", "yes")
    records = await asyncio.to_thread(service.controls.store.list, revoked)
    return JSONResponse({"object": "list", "data": [{"object": "api_key", **r.public()} for r in records]})


async def revoke_key(request: Request) -> JSONResponse:
    service = _require_admin(request)
    key_id = request.path_params["key_id"]
    if not await asyncio.to_thread(service.controls.store.revoke, key_id):
        raise RequestError(404, f"no active virtual key {key_id!r}", param="key_id", code="key_not_found")
    service.controls.revoked(key_id)
    return JSONResponse({"object": "api_key", "id": key_id, "revoked": True})


def _spend_rows(engine: Engine, key: str | None, since: float | None, until: float | None,
                scope: frozenset[str] | None = None) -> list[Any]:
    c = requests.c
    query = (sa.select(c.api_key_id, sa.func.count().label("requests"),
                       sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0).label("spend_usd"),
                       sa.func.coalesce(sa.func.sum(c.prompt_tokens), 0).label("prompt_tokens"),
                       sa.func.coalesce(sa.func.sum(c.completion_tokens), 0).label("completion_tokens"))
             .group_by(c.api_key_id).order_by(c.api_key_id))
    if key is not None:
        query = query.where(c.api_key_id == key)
    if scope is not None:
        query = query.where(c.api_key_id.in_(sorted(scope)))
    if since is not None:
        query = query.where(c.created_at >= since)
    if until is not None:
        query = query.where(c.created_at < until)
    with engine.connect() as conn:
        return list(conn.execute(query))


def _limits(service: GatewayService, record: KeyRecord | None) -> dict[str, Any]:
    if record is None:
        return {}
    periods = Periods.at(time.time())
    usage = service.controls.usage
    return {"team": record.team, "owner": record.owner, "budget_day_usd": record.budget_day_usd,
            "budget_month_usd": record.budget_month_usd, "rpm": record.rpm, "tpm": record.tpm,
            "spent_today_usd": usage.total(record.id, periods.day).spend_usd,
            "spent_this_month_usd": usage.total(record.id, periods.month).spend_usd}


async def spend(request: Request, who: Reader) -> JSONResponse:
    """Spend per key: a key's own, a team admin's team, every key's for the admin key (or auth off)."""
    service = _service(request)
    asked = request.query_params.get("key") or None
    who.check_key(asked)
    if who.role == "key":
        asked = who.key_id
    since = parse_time("since", request.query_params.get("since"))
    until = parse_time("until", request.query_params.get("until"))
    rows = await asyncio.to_thread(_spend_rows, request.app.state.ledger.engine, asked, since, until, who.keys)
    data = [{"key": r.api_key_id, "requests": int(r.requests), "spend_usd": float(r.spend_usd),
             "prompt_tokens": int(r.prompt_tokens), "completion_tokens": int(r.completion_tokens),
             **_limits(service, service.controls.record(r.api_key_id))} for r in rows]
    return JSONResponse({"object": "spend", "since": since, "until": until, "key": asked, "data": data})


async def _fields(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > ADMIN_BODY_BYTES:
        raise RequestError(413, f"admin request body over {ADMIN_BODY_BYTES} bytes", code="request_too_large")
    return parse_json_body(raw) if raw else {}  # a JSON object, else a 400 (wire/protocol.py)


async def update_key(request: Request) -> JSONResponse:
    """``PATCH /admin/keys/{id}``: change a key's scope, limits, team, role or expiry (the secret stays)."""
    service = _require_admin(request)
    fields = await _fields(request)
    try:
        record = await asyncio.to_thread(service.controls.store.update, request.path_params["key_id"], fields)
    except KeyNotFound as exc:
        raise RequestError(404, str(exc), param="key_id", code="key_not_found") from None
    except ConfigError as exc:
        raise RequestError(400, str(exc), code="invalid_key") from None
    await service.controls.reload()  # this replica enforces the new limits at once
    return JSONResponse({"object": "api_key", **record.public()})


async def rotate_key(request: Request) -> JSONResponse:
    """``POST /admin/keys/{id}/rotate`` ``{"grace_s": 3600}``: a new secret; the old one works for grace_s."""
    service = _require_admin(request)
    grace = (await _fields(request)).get("grace_s", 0)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= 90 * 86400:
        raise RequestError(400, "'grace_s' must be seconds in [0, 7776000]", param="grace_s", code="invalid_key")
    try:
        record, secret = await asyncio.to_thread(service.controls.store.rotate, request.path_params["key_id"],
                                                 float(grace))
    except KeyNotFound as exc:
        raise RequestError(404, str(exc), param="key_id", code="key_not_found") from None
    await service.controls.reload()
    return JSONResponse({"object": "api_key", **record.public(), "key": secret, "grace_s": grace})


async def put_team(request: Request) -> JSONResponse:
    """``POST /admin/teams`` ``{"id", "budget_day_usd", "budget_month_usd", "rpm", "tpm", "metadata"}``: create
    a team or replace its limits (over all its keys; tenancy/teams.py)."""
    service = _require_admin(request)
    try:
        team = await asyncio.to_thread(service.controls.teams.put, team_from(await _fields(request)))
    except ConfigError as exc:
        raise RequestError(400, str(exc), code="invalid_team") from None
    await service.controls.reload()
    return JSONResponse({"object": "team", **team.public()})


async def list_teams(request: Request) -> JSONResponse:
    service = _require_admin(request)
    teams = await asyncio.to_thread(service.controls.teams.load)
    return JSONResponse({"object": "list", "data": [{"object": "team", **t.public()} for t in teams.values()]})


def install_admin(app: FastAPI) -> None:
    app.add_api_route("/admin/teams", put_team, methods=["POST"])
    app.add_api_route("/admin/teams", list_teams, methods=["GET"])
    app.add_api_route("/admin/keys", create_key, methods=["POST"])
    app.add_api_route("/admin/keys", list_keys, methods=["GET"])
    app.add_api_route("/admin/keys/{key_id}/rotate", rotate_key, methods=["POST"])
    app.add_api_route("/admin/keys/{key_id:path}", revoke_key, methods=["DELETE"])
    app.add_api_route("/admin/keys/{key_id:path}", update_key, methods=["PATCH"])
    app.add_api_route("/api/spend", spend, methods=["GET"])
