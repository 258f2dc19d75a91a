"""Read-only endpoints of the learning loop: the controllers' state and the judge's counters (operator-wide
state: the admin key, or anyone while auth is off)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from thalamus.gateway.http.deps import Reader, Service
from thalamus.gateway.learning.controller import Controllers


async def controller_state(request: Request, who: Reader) -> JSONResponse:
    who.require_admin("/api/controller")
    controllers: Controllers = request.app.state.controllers
    return JSONResponse({"controllers": controllers.states()})


async def judge_stats(service: Service, who: Reader) -> JSONResponse:
    """``GET /api/judge``: the judge's counts, queue and spend (the admin key when auth is on)."""
    who.require_admin("/api/judge")
    judge = service.judge
    return JSONResponse(judge.stats() if judge is not None else {"enabled": False})


def install_learning_api(app: FastAPI) -> None:
    app.add_api_route("/api/controller", controller_state, methods=["GET"])
    app.add_api_route("/api/judge", judge_stats, methods=["GET"])
