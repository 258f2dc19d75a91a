"""Calling the candidates in order: retries with backoff (or the upstream's Retry-After), then fallbacks.

A ``client`` failure (4xx) goes back to the client as it is; a ``context`` failure (prompt over the
model's window) goes to ``fallback.context_model`` once, when set; ``retry`` failures are retried
``max_retries`` times, then the next candidate is tried. Every failed try is on the row's ``fallback_chain``,
except a client error on the very first try: nothing was retried or fell back (the row's status and
``error_type`` say what happened), so the dashboard, ``/metrics`` and the access log count no fallback.

Each try is a child span of the request's trace: ``thalamus.attempt`` on the first candidate,
``thalamus.fallback`` on a later one, with the model, the try's number and its outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from thalamus.gateway.config import FallbackConfig
from thalamus.gateway.core.call import Call
from thalamus.gateway.stats.tracing import set_error
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.checks import UpstreamError
from thalamus.gateway.wire import protocol as p

T = TypeVar("T")


class Attempts:
    def __init__(self, backends: dict[str, Backend], fallback: FallbackConfig) -> None:
        self.backends, self.fallback = backends, fallback

    async def run(self, call: Call, candidates: list[str], fn: Callable[[Backend], Awaitable[T]]) -> tuple[str, T]:
        """The first candidate's answer that ``fn`` gets, with its name; a 502 naming every try otherwise."""
        chain = call.row.fallback_chain
        queue, used_context, first = list(candidates), False, candidates[0] if candidates else None
        while queue:
            name = queue.pop(0)
            backend = self.backends[name]
            for attempt in range(backend.config.max_retries + 1):
                try:
                    return name, await self._try(call, name, attempt, name != first, fn(backend))
                except UpstreamError as exc:
                    if exc.kind != "client" or chain or attempt:
                        chain.append({"model": name, "attempt": attempt + 1, "status": exc.status,
                                      "error": exc.code})
                    if exc.kind == "client":
                        raise p.RequestError(exc.status, f"upstream {name}: {exc.message}", param=exc.param,
                                         code=exc.code) from None
                    if exc.kind == "context":
                        queue, used_context = self._context_fallback(name, exc, used_context), True
                        break
                    if attempt < backend.config.max_retries:
                        wait = self._retry_wait(exc, attempt)
                        if wait is None:
                            break  # the upstream asks for a longer pause than we hold a client for
                        await asyncio.sleep(wait)
        tried = ", ".join(f"{c['model']} ({c['status']} {c['error']})" for c in chain)
        raise p.RequestError(502, f"all backends failed; tried: {tried}", type_="upstream_error",
                             code="all_backends_failed")

    async def _try(self, call: Call, name: str, attempt: int, fallback: bool, answer: Awaitable[T]) -> T:
        """One upstream try, timed as upstream wait, inside its own child span when the request is traced."""
        if call.trace is None:
            with call.upstream():
                return await answer
        attrs: dict[str, str | bool | int | float] = {"thalamus.model": name, "thalamus.attempt.number": attempt + 1,
                                                      "thalamus.fallback": fallback}
        with call.trace.child("thalamus.fallback" if fallback else "thalamus.attempt", attrs) as span:
            try:
                with call.upstream():
                    return await answer
            except UpstreamError as exc:
                set_error(span, exc.status, exc.code, exc.message)
                span.set_attribute("thalamus.error.kind", exc.kind)
                raise

    def _retry_wait(self, exc: UpstreamError, attempt: int) -> float | None:
        """Seconds before the next try: the upstream's Retry-After when it sent one (None past the cap),
        else exponential backoff."""
        if exc.retry_after is None:
            return float(self.fallback.backoff_s * 2**attempt)
        return exc.retry_after if exc.retry_after <= self.fallback.retry_after_cap_s else None

    def _context_fallback(self, name: str, exc: UpstreamError, used: bool) -> list[str]:
        larger = self.fallback.context_model
        if larger is None or used or larger == name:
            raise p.RequestError(400, f"upstream {name}: {exc.message}", param="messages",
                                 code="context_length_exceeded")
        return [larger]
