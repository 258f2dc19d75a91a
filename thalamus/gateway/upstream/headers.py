"""Request headers the operator lists (``server.forward_headers``, e.g. ``traceparent``) travel upstream.

An ASGI middleware copies the listed headers of each request into a context variable; the backends read
it when they call the upstream (``upstream_headers``). A context variable rather than a parameter: the
header set belongs to the request, and the Backend interface stays the body-in, answer-out it is. A
stream's body is produced in a task started by the response, which inherits the request's context.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

_FORWARDED: ContextVar[dict[str, str] | None] = ContextVar("thalamus_forwarded_headers", default=None)

# never forwarded whatever the config says: the gateway's own credentials and the transport's framing
NEVER = frozenset({"authorization", "cookie", "host", "content-length", "content-type", "transfer-encoding",
                   "connection", "accept-encoding", "api-key", "x-api-key"})


def non_ascii_header() -> str | None:
    """The name of a forwarded header of this request whose value is not ASCII, if any: HTTP clients (httpx,
    under litellm) refuse to send one, so the gateway refuses the request instead (a 400, not a 502)."""
    for name, value in (_FORWARDED.get() or {}).items():
        if not value.isascii():
            return name
    return None


def upstream_headers() -> dict[str, str]:
    """The current request's forwarded headers (empty outside a request)."""
    return dict(_FORWARDED.get() or {})


class ForwardHeaders:
    """Pure ASGI middleware (so the context variable is set in the task that runs the handler)."""

    def __init__(self, app: Any, names: list[str]) -> None:
        self.app = app
        self.names = frozenset(n.lower() for n in names) - NEVER

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.names:
            await self.app(scope, receive, send)
            return
        found = {}
        for raw_name, raw_value in scope.get("headers") or []:
            name = raw_name.decode("latin-1").lower()
            if name in self.names:
                found[name] = raw_value.decode("latin-1")
        token = _FORWARDED.set(found or None)
        try:
            await self.app(scope, receive, send)
        finally:
            _FORWARDED.reset(token)
