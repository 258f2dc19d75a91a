"""The state of one request as it moves through the pipeline, and what the pipeline answers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.sessions import SessionEntry
from thalamus.gateway.stats.tracing import RequestTrace
from thalamus.ledger.row import LedgerRow
from thalamus.router.policy import Decision


@dataclass
class Target:
    """What the ``model`` field resolved to."""

    backend: str | None = None
    router: LoadedRouter | None = None
    threshold: float | None = None  # RouteLLM form


@dataclass
class Turn:
    """One turn of a conversation as affinity sees it (gateway/core/affinity.py), kept until the answer."""

    conversation: str  # the id every turn's row records
    store_key: str  # where this turn's answer is recorded for the next turn
    number: int  # answers before this one
    previous: SessionEntry | None  # the answer to the previous turn, when known
    kept: bool = False  # the plan put the previous model first


@dataclass
class Result:
    """What the pipeline answers: a rendered JSON body or an SSE byte stream, with its headers."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None  # the rendered JSON response
    stream: AsyncIterator[bytes] | None = None


@dataclass
class Call:
    """The state of one request as it moves through the flow; becomes its ledger row."""

    row: LedgerRow
    started: float = field(default_factory=time.perf_counter)
    decision: Decision | None = None
    answer: str | None = None  # the answer's text and the request's routing text, for the LLM judge
    question: str | None = None
    trace: RequestTrace | None = None  # the request's span, ended at finish (stats/tracing.py)
    restrict: tuple[str, ...] | None = None  # the guard stage's restriction of the models that may answer
    session_header: str | None = None  # the conversation id header (affinity.header), as the client sent it
    turn: Turn | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    @contextlib.contextmanager
    def upstream(self) -> Iterator[None]:
        """Count the time inside as waiting on upstreams (gateway overhead = total - upstream)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.row.upstream_ms = (self.row.upstream_ms or 0.0) + (time.perf_counter() - t0) * 1000
