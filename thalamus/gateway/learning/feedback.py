"""Feedback on a request: find its row (waiting briefly for the writer), store the score, learn from it.

The client API (``POST /v1/feedback``) and the LLM judge both go through ``FeedbackDesk``, so a score is
stored and learned the same way whoever gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import sqlalchemy as sa

from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.loop import LearningLoop
from thalamus.gateway.stats.metrics import GatewayMetrics
from thalamus.ledger import Ledger, LedgerWriter, requests

log = logging.getLogger(__name__)
FEEDBACK_FLUSH_WAIT_S = 2.0  # how long feedback waits for a still-queued request row


class FeedbackDesk:
    """Stores feedback rows and hands them to the learning loop; shared by the API and the judge."""

    def __init__(self, ledger: Ledger, writer: LedgerWriter, learning: LearningLoop,
                 routers: dict[str, LoadedRouter], metrics: GatewayMetrics | None = None) -> None:
        self.ledger, self.writer, self.learning, self.routers = ledger, writer, learning, routers
        self.metrics = metrics  # the feedback-score histogram of /metrics

    async def request_owner(self, request_id: str, wait_s: float = FEEDBACK_FLUSH_WAIT_S) -> tuple[bool, str | None]:
        """Whether the request has a row and the key that made it; waits up to ``wait_s`` for that row
        when it may still be queued (its own row, not the whole writer queue: under load the writer may never
        idle)."""
        found, owner = await asyncio.to_thread(self.ledger.request_owner, request_id)
        if not found:
            waiting = asyncio.create_task(self.writer.handled(request_id, wait_s))
            await asyncio.sleep(0)  # registered before the second look: a row written in between is seen there
            found, owner = await asyncio.to_thread(self.ledger.request_owner, request_id)
            if not found and await waiting:
                found, owner = await asyncio.to_thread(self.ledger.request_owner, request_id)
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        return found, owner

    async def store(self, request_id: str, score: float, label: str | None, source: str | None,
                    comment: str | None, key_id: str | None) -> tuple[int, bool]:
        """Store one feedback row of a request known to be in the ledger; (feedback id, learned). Whether
        a source is learned from (``judge.learn``) is the learning loop's call (learning/loop.py)."""
        fid = await asyncio.to_thread(self.ledger.add_feedback, request_id, score, label, source, comment, key_id)
        if self.metrics is not None:
            model = await asyncio.to_thread(self._answered_by, request_id)
            self.metrics.observe_feedback(model, score, source)
        return fid, await self.learn_from(request_id, score, source)

    def _answered_by(self, request_id: str) -> str | None:
        with self.ledger.engine.connect() as conn:
            return conn.execute(sa.select(requests.c.chosen_model).where(requests.c.id == request_id)).scalar()

    async def learn_from(self, request_id: str, score: float, source: str | None = None) -> bool:
        """Online update of the router that served the request; a failure never fails the stored feedback."""
        try:
            return await asyncio.to_thread(self.learning.feedback, self.ledger, self.routers, request_id, score,
                                           source)
        except Exception:  # logged with its traceback: the feedback row is stored either way
            log.exception("online update from feedback on %s failed", request_id)
            return False
