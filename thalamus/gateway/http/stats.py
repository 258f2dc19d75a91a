"""The JSON stats API: ``/api/stats/*`` and ``/api/requests``, on the gateway and the standalone dashboard.

Handlers parse the query string into ``Filters``, run the SQL of ``stats`` / ``stats_rows`` in a worker
thread (the database calls are synchronous) and answer JSON. On the gateway the caller comes through the
``Reader`` dependency (tenancy/roles.py): the admin key reads every row, a team admin its team's keys' rows,
any other key its own; ``Filters.scope`` carries that into every query. The standalone dashboard
(``thalamus dashboard``) has no service and serves them read-only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from thalamus.gateway.http.deps import Reader
from thalamus.gateway.stats import affinity as stats_affinity
from thalamus.gateway.stats import aggregates as stats
from thalamus.gateway.stats import breakdown as stats_breakdown
from thalamus.gateway.stats import rollout as stats_rollout
from thalamus.gateway.stats import router as stats_router
from thalamus.gateway.stats import rows as stats_rows
from thalamus.gateway.stats import teams as stats_teams
from thalamus.gateway.stats.router_curves import live_rollouts, serving_curves
from thalamus.gateway.stats.sql import Filters
from thalamus.gateway.tenancy.roles import Principal
from thalamus.gateway.wire.protocol import RequestError


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.ledger.engine
    return engine


def _time(name: str, raw: str | None) -> float | None:
    """Epoch seconds, or an ISO 8601 time (a time without zone is UTC)."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise RequestError(400, f"'{name}' must be epoch seconds or an ISO 8601 time, got {raw!r}",
                               param=name) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        value = parsed.timestamp()
    if not math.isfinite(value):
        raise RequestError(400, f"'{name}' must be a finite time, got {raw!r}", param=name)
    return value


def filters(request: Request, who: Principal) -> Filters:
    """The query's filters, cut to what ``who`` may read (403 for a ``key`` outside it)."""
    q = request.query_params
    key = q.get("key") or None
    who.check_key(key)
    out = Filters(since=_time("since", q.get("since")), until=_time("until", q.get("until")),
                  router=q.get("router") or None, key=key, model=q.get("model") or None, scope=who.keys)
    if out.since is not None and out.until is not None and out.since >= out.until:
        raise RequestError(400, "'since' must be before 'until'", param="since")
    return out


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise RequestError(400, f"'{name}' must be an integer, got {raw!r}", param=name) from None


async def _run(fn: Callable[..., Any], *args: Any, param: str | None = None) -> Any:
    try:
        return await asyncio.to_thread(fn, *args)
    except ValueError as exc:  # the stats functions name the field at fault
        raise RequestError(400, str(exc), param=param) from None


async def overview(request: Request, who: Reader) -> JSONResponse:
    return JSONResponse(await _run(stats.overview, engine_of(request), filters(request, who)))


async def timeseries(request: Request, who: Reader) -> JSONResponse:
    bucket = request.query_params.get("bucket", "hour")
    f = filters(request, who)
    return JSONResponse(await _run(stats.timeseries, engine_of(request), f, bucket, param="bucket"))


async def models(request: Request, who: Reader) -> JSONResponse:
    return JSONResponse({"data": await _run(stats.grouped, engine_of(request), filters(request, who), "model")})


async def keys(request: Request, who: Reader) -> JSONResponse:
    return JSONResponse({"data": await _run(stats.grouped, engine_of(request), filters(request, who), "key")})


async def calibration(request: Request, who: Reader) -> JSONResponse:
    bins = _int(request, "bins", 10)
    if not 1 <= bins <= 100:
        raise RequestError(400, f"'bins' must be in [1, 100], got {bins}", param="bins")
    return JSONResponse({"data": await _run(stats.calibration, engine_of(request), filters(request, who), bins)})


async def breakdown(request: Request, who: Reader) -> JSONResponse:
    """Feedback per source (client, judge; per ``bucket`` of time too when given), errors per class of the
    status the client saw, the data's span."""
    bucket = request.query_params.get("bucket")
    if bucket is not None and bucket not in stats.BUCKET_SECONDS:
        raise RequestError(400, f"bucket: {bucket!r} is not one of {sorted(stats.BUCKET_SECONDS)}", param="bucket")
    width = stats.BUCKET_SECONDS[bucket] if bucket is not None else None
    return JSONResponse(await _run(stats_breakdown.breakdown, engine_of(request), filters(request, who), width))


async def filter_options(request: Request, who: Reader) -> JSONResponse:
    return JSONResponse(await _run(stats.filter_options, engine_of(request), filters(request, who)))


async def routers(request: Request, who: Reader) -> JSONResponse:
    """Realized points per router (and knob value), with the serving artifact's offline curve if any."""
    engine, f = engine_of(request), filters(request, who)
    service = getattr(request.app.state, "service", None)
    points = await _run(stats_router.router_points, engine, f)
    curves = await asyncio.to_thread(serving_curves, service)
    by_name = {p["router"]: p for p in points}
    for name in curves:
        if f.router is None or name == f.router:
            by_name.setdefault(name, {"router": name, "all": None, "knobs": []})
    return JSONResponse({"data": [by_name[n] | curves.get(n, {"curve": None}) for n in sorted(by_name)]})


async def rollout(request: Request, who: Reader) -> JSONResponse:
    """Serving vs candidate per router with shadow or canary rows in the range, plus the live state."""
    engine, f = engine_of(request), filters(request, who)
    rows = {r["router"]: r for r in await _run(stats_rollout.rollout_compare, engine, f)}
    live = live_rollouts(getattr(request.app.state, "service", None))
    for name in live:
        if f.router is None or name == f.router:
            rows.setdefault(name, {"router": name, "shadow": [], "canary": None})
    return JSONResponse({"data": [rows[n] | {"live": live.get(n)} for n in sorted(rows)]})


async def affinity(request: Request, who: Reader) -> JSONResponse:
    """Conversation turns kept or switched (gateway/core/affinity.py) and the switch rate."""
    return JSONResponse(await _run(stats_affinity.switch_rate, engine_of(request), filters(request, who)))


async def teams(request: Request, who: Reader) -> JSONResponse:
    """The admin's view across teams: per team spend, requests, tokens, errors, feedback (403 for other roles)."""
    who.require_admin("/api/stats/teams")
    service = getattr(request.app.state, "service", None)
    static = service.controls.static_teams() if service is not None else {}
    return JSONResponse({"data": await _run(stats_teams.team_stats, engine_of(request), filters(request, who),
                                            static)})


async def recent(request: Request, who: Reader) -> JSONResponse:
    engine, f = engine_of(request), filters(request, who)
    limit = _int(request, "limit", 50)
    before = _time("before", request.query_params.get("before"))
    return JSONResponse({"data": await _run(stats_rows.recent, engine, f, limit, before, param="limit")})


async def one_request(request: Request, who: Reader) -> JSONResponse:
    engine = engine_of(request)
    request_id = request.path_params["request_id"]
    row = await asyncio.to_thread(stats_rows.one, engine, request_id, Filters(scope=who.keys))
    if row is None:
        raise RequestError(404, f"unknown request id {request_id!r}", param="request_id", code="request_not_found")
    return JSONResponse(row)


ROUTES: dict[str, Callable[[Request, Principal], Any]] = {
    "/api/stats/overview": overview, "/api/stats/timeseries": timeseries, "/api/stats/models": models,
    "/api/stats/keys": keys, "/api/stats/calibration": calibration, "/api/stats/filters": filter_options,
    "/api/stats/routers": routers, "/api/stats/rollout": rollout, "/api/stats/breakdown": breakdown,
    "/api/stats/affinity": affinity, "/api/stats/teams": teams,
    "/api/requests": recent, "/api/requests/{request_id}": one_request,
}


def install_stats(app: FastAPI) -> None:
    for path, handler in ROUTES.items():
        app.add_api_route(path, handler, methods=["GET"])
