"""What handlers receive through ``Depends``: the pipeline the app's lifespan built, the caller's key,
checked once per request (401, and no ledger row, for a missing or unknown key), and for read endpoints the
caller's ``Principal`` (role, key id, team, the keys whose rows it may read: tenancy/roles.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.learning.feedback import FeedbackDesk
from thalamus.gateway.tenancy.auth import bearer_token
from thalamus.gateway.tenancy.roles import ADMIN, Principal


def get_service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


def get_feedback(request: Request) -> FeedbackDesk:
    desk: FeedbackDesk = request.app.state.feedback
    return desk


def caller(request: Request) -> str | None:
    """The API key id of the request (None when auth is off)."""
    return get_service(request).authorize(request.headers.get("authorization"))


async def reader(request: Request) -> Principal:
    """Who reads: the admin key, a team admin or a key (401 for an unknown key). The standalone dashboard
    (``thalamus dashboard``, no service) is the operator's own read-only process: every row."""
    service: GatewayService | None = getattr(request.app.state, "service", None)
    if service is None:
        return ADMIN
    authorization = request.headers.get("authorization")
    token = bearer_token(authorization)
    if service.controls.is_admin(token):
        return ADMIN
    return await service.controls.principal(token, service.authorize(authorization))


Service = Annotated[GatewayService, Depends(get_service)]
Feedback = Annotated[FeedbackDesk, Depends(get_feedback)]
Caller = Annotated[str | None, Depends(caller)]
Reader = Annotated[Principal, Depends(reader)]
