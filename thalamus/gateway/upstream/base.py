"""What every backend is to the pipeline: the ``Backend`` protocol (the error it raises, ``UpstreamError``,
lives in upstream/checks.py).

A Backend takes the client's request body (a dict, forwarded untouched apart from ``model``)
and returns the upstream's response body, or an async iterator of stream chunks. Chat completions are
every backend's (``complete`` / ``stream``); the other OpenAI endpoints (``/responses``, ``/embeddings``,
``/completions``) are called through ``post_json`` / ``stream_json`` where ``supports(path)`` says so.
Failures become ``UpstreamError`` (``upstream/checks.py``) with a ``kind`` the pipeline acts on:

- ``retry``:   connection errors, timeouts, 429 and 5xx, and answers the gateway cannot use (invalid JSON,
               NaN, a wrong shape, an error event, a stream that ends early); retried, then the next candidate
- ``context``: the prompt is over the model's context window; may go to a larger model
- ``client``:  any other 4xx; returned to the client as is

Timeouts: ``connect_timeout`` to connect, ``first_byte_timeout`` until the answer starts (a stream's first
chunk), ``idle_timeout`` between two chunks; a healthy stream may run for as long as it keeps sending.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from thalamus.gateway.config import BackendConfig


class Backend(Protocol):
    name: str
    config: BackendConfig

    def supports(self, path: str) -> bool:
        """Whether ``post_json`` / ``stream_json`` serve ``path`` (``/responses``, ``/embeddings``, ...)."""
        ...

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def post_json(self, path: str, body: dict[str, Any]) -> Any: ...

    def stream_json(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]: ...

    async def aclose(self) -> None: ...
