"""Storing a feedback score, one path for every source: ``POST /v1/feedback`` and the LLM judge.

Both wait (bounded) for the request's row when it is still in the writer's queue, store the feedback
row, then let the learning loop update the router that served the request. Sharing the path means a
judge score is stored, joined and learned from exactly as a client's score is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thalamus.gateway.ledger import Ledger
    from thalamus.gateway.service import GatewayService

log = logging.getLogger("thalamus.gateway")
FEEDBACK_FLUSH_WAIT_S = 2.0  # how long feedback waits for a still-queued request row


async def request_owner(service: GatewayService, ledger: Ledger, request_id: str,
                        wait_s: float = FEEDBACK_FLUSH_WAIT_S) -> tuple[bool, str | None]:
    """Whether the request has a row and the key that made it; waits up to ``wait_s`` for the writer
    when the row may still be queued (bounded: under load the writer may never idle)."""
    found, owner = await asyncio.to_thread(ledger.request_owner, request_id)
    if not found:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.writer.flush(), wait_s)
        found, owner = await asyncio.to_thread(ledger.request_owner, request_id)
    return found, owner


async def store_feedback(service: GatewayService, ledger: Ledger, request_id: str, score: float,
                         label: str | None, source: str | None, comment: str | None,
                         key_id: str | None) -> tuple[int, bool]:
    """Store one feedback row of a request known to be in the ledger; (feedback id, learned). Whether
    a source is learned from (``judge.learn``) is the learning loop's call (gateway/learning.py)."""
    fid = await asyncio.to_thread(ledger.add_feedback, request_id, score, label, source, comment, key_id)
    return fid, await learn_from(service, ledger, request_id, score, source)


async def learn_from(service: GatewayService, ledger: Ledger, request_id: str, score: float,
                     source: str | None = None) -> bool:
    """Online update of the router that served the request; a failure never fails the stored feedback."""
    try:
        return await asyncio.to_thread(service.learning.feedback, ledger, service.routers, request_id, score,
                                       source)
    except Exception:  # logged with its traceback: the feedback row is stored either way
        log.exception("online update from feedback on %s failed", request_id)
        return False
