"""A cap on request body bytes, applied before the body is parsed (a huge body would otherwise be read into
memory and decoded on the event loop).

A declared ``Content-Length`` over the cap is refused without being parsed (read and dropped first when it is
not far over, so the client's socket is not reset before the 413 arrives); a body without one (chunked) is counted as
it arrives and refused as soon as it passes the cap. Either way the answer is an OpenAI-shaped 413 naming
the limit and the config key that sets it.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thalamus.openai_wire import error_body

DRAIN_FACTOR = 4  # a refused body up to this many times the cap is read and dropped before the 413


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, int(declared))
            await self._refuse(send)
            return
        over = False
        seen = 0

        async def counted() -> Message:
            nonlocal over, seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True  # the app sees a client that left and gives up on the body
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not over:  # once over, whatever the app answers is replaced by the 413
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over:
            await self._refuse(send)

    async def _drain(self, receive: Receive, declared: int) -> None:
        """Read and drop a refused body that is not far over the cap: closing a socket whose receive buffer
        still holds the client's bytes resets the connection, and the client would never see the 413."""
        if declared > DRAIN_FACTOR * self.max_bytes:
            return  # far over: not worth reading; the client may see a reset instead of the 413
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(f"The request body is over {self.max_bytes} bytes, this server's limit "
                                     "(max_request_bytes in its serving config)", "invalid_request_error",
                                     None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
