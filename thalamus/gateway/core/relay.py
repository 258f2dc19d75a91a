"""The one stream relay: every streamed endpoint's end-of-request rules, written once.

- the row says 499 (``client_disconnected``) until the stream ends, so a client that goes away, or a
  cancelled task, leaves a 499 row;
- the stream ends normally: the row becomes 200 and is recorded *before* the closing bytes (with
  ``ledger.durability: journal`` it is on disk before the client sees the end);
- the upstream fails after the first byte: there is no fallback any more, the client gets an error item
  and the row says 502; an endpoint whose stream must end with a closing item (Responses) counts a stream
  without one as cut;
- whatever happens, the upstream iterator is closed (its connection released).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from thalamus.gateway.core.call import Call
from thalamus.gateway.core.endpoints import Endpoint
from thalamus.gateway.upstream.checks import UpstreamError

Close = Callable[[int, str | None, dict[str, Any] | None, str], Awaitable[None]]


async def relay(call: Call, name: str, endpoint: Endpoint, iterator: AsyncIterator[dict[str, Any]],
                first: dict[str, Any] | None, close: Close) -> AsyncIterator[bytes]:
    """Relay ``first`` and the rest of ``iterator``; ``close(status, error, usage, text)`` accounts and
    records the row exactly once."""
    usage: dict[str, Any] | None = None
    parts: list[str] = []
    finished, seq = False, 0
    call.row.status, call.row.error_type = 499, "client_disconnected"

    async def end(status: int, error: str | None) -> None:
        nonlocal finished
        finished = True
        await close(status, error, usage, "".join(parts))

    try:
        item = first
        while item is not None:
            frame = endpoint.frame(name, item, seq)
            usage = frame.usage or usage
            parts.append(frame.text)
            if frame.last:
                await end(200, None)
            yield frame.data
            seq += 1
            with call.upstream():
                item = await anext(iterator, None)
        if not finished and endpoint.needs_last:
            raise UpstreamError(name, "retry", 502, "the stream ended before its closing event", "incomplete_stream")
        if not finished:
            await end(200, None)
        tail = endpoint.done()
        if tail is not None:
            yield tail
    except UpstreamError as exc:  # after the first byte there is no fallback: report in-stream
        if not finished:
            await end(502, exc.code)
        yield endpoint.failed(name, exc, seq)
    finally:
        if not finished:  # the client went away (or the task was cancelled): 499
            await end(499, "client_disconnected")
        closer = getattr(iterator, "aclose", None)
        if closer is not None:  # release the upstream connection if the client went away
            await closer()
