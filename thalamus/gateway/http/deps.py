"""What handlers receive through ``Depends``: the pipeline the app's lifespan built, and the caller's key,
checked once per request (401, and no ledger row, for a missing or unknown key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.learning.feedback import FeedbackDesk


def get_service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


def get_feedback(request: Request) -> FeedbackDesk:
    desk: FeedbackDesk = request.app.state.feedback
    return desk


def caller(request: Request) -> str | None:
    """The API key id of the request (None when auth is off)."""
    return get_service(request).authorize(request.headers.get("authorization"))


Service = Annotated[GatewayService, Depends(get_service)]
Feedback = Annotated[FeedbackDesk, Depends(get_feedback)]
Caller = Annotated[str | None, Depends(caller)]
