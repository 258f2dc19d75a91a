"""A direct backend for OpenAI-compatible upstreams: the body goes out byte-for-byte as the client sent it.

litellm translates between providers, and costs ~5 ms of CPU per call (response re-modelling,
cost calculation, logging hooks) that a proxy in front of an OpenAI-compatible server (vLLM,
the replay server, our local model server, another gateway) does not need. This backend
posts the request body unchanged apart from ``model`` with aiohttp and relays the upstream
body unchanged. Select it per backend with ``provider: openai-compatible``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from thalamus.gateway.backends import ErrorKind, UpstreamError
from thalamus.gateway.config import BackendConfig

_CONTEXT_MARKERS = ("context_length_exceeded", "maximum context length", "context window")


class OpenAICompatBackend:
    """POST {api_base}/chat/completions with one pooled aiohttp session per backend."""

    def __init__(self, config: BackendConfig) -> None:
        if not config.api_base:
            raise ValueError(f"backend {config.name!r}: provider openai-compatible needs api_base")
        self.name = config.name
        self.config = config
        self.url = config.api_base.rstrip("/") + "/chat/completions"
        self.upstream_model = (config.model or config.name).removeprefix("openai/")
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"content-type": "application/json"}
            key = self.config.api_key()
            if key:
                headers["authorization"] = f"Bearer {key}"
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        return self._session

    def _payload(self, body: dict[str, Any]) -> bytes:
        return json.dumps({**body, "model": self.upstream_model}).encode()

    async def _error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        text = await resp.text()
        try:
            error = json.loads(text).get("error") or {}
        except (json.JSONDecodeError, AttributeError):
            error = {}
        message = str(error.get("message") or text[:500] or resp.reason)
        code = str(error.get("code") or f"http_{resp.status}")
        kind: ErrorKind = "client"
        if resp.status in (408, 409, 429) or resp.status >= 500:
            kind = "retry"
        elif resp.status == 400 and any(m in (code + " " + message).lower() for m in _CONTEXT_MARKERS):
            kind = "context"
        return UpstreamError(self.name, kind, resp.status, message, code)

    def _transport_error(self, exc: Exception) -> UpstreamError:
        status = 504 if isinstance(exc, TimeoutError) else 502
        return UpstreamError(self.name, "retry", status, f"{type(exc).__name__}: {exc}", type(exc).__name__)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._client().post(self.url, data=self._payload(body)) as resp:
                if resp.status != 200:
                    raise await self._error(resp)
                result: dict[str, Any] = json.loads(await resp.read())
                return result
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise self._transport_error(exc) from exc

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._client().post(self.url, data=self._payload(body)) as resp:
                if resp.status != 200:
                    raise await self._error(resp)
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    yield json.loads(data)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise self._transport_error(exc) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
