"""OpenAI's wire format shared by the gateway and the local server: error bodies and SSE frames.

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. Only json and typing are
imported here, so either side can use this module without pulling in the other's dependencies.
"""

from __future__ import annotations

import json
from typing import Any


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class APIError(Exception):
    """An error answered over HTTP with ``status`` and an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event frame: a dict is sent as compact JSON, a string as is."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
