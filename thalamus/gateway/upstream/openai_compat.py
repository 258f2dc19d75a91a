"""A direct backend for OpenAI-compatible upstreams: the body goes out byte-for-byte as the client sent it.

litellm translates between providers, and costs ~5 ms of CPU per call (response re-modelling,
cost calculation, logging hooks) that a proxy in front of an OpenAI-compatible server (vLLM,
the replay server, our local model server, another gateway) does not need. This backend
posts the request body unchanged apart from ``model`` with aiohttp and relays the upstream
body, checked (thalamus.gateway.upstream.checks) but not re-modelled. Select it per backend with
``provider: openai-compatible``.

The stream reader is its own: it takes SSE lines of any length up to ``max_message_bytes`` (aiohttp's
line reader stops at 512 KiB), applies the first-byte deadline until the first chunk and the idle
timeout to every read after it (no total), and requires the closing ``[DONE]``. A JSON completion
answering a stream request is relayed as a stream of that completion: the client asked for the answer,
and the answer is there, so a fallback or an error would only lose it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from thalamus.gateway.config import BackendConfig
from thalamus.gateway.upstream.checks import (
    ErrorKind,
    UpstreamError,
    bad_answer,
    check_chunk,
    check_completion,
    loads,
    parse_retry_after,
    timed_out,
)
from thalamus.gateway.upstream.headers import upstream_headers

_CONTEXT_MARKERS = ("context_length_exceeded", "maximum context length", "context window")
_ERROR_BODY_BYTES = 64 * 1024  # what an error answer may say; the rest is not read


class _Reader:
    """SSE events of an upstream body, with the first-byte deadline, then the idle timeout, per read."""

    def __init__(self, content: aiohttp.StreamReader, max_bytes: int, idle_s: float, deadline: float) -> None:
        self.content, self.max_bytes, self.idle_s = content, max_bytes, idle_s
        self.deadline: float | None = deadline  # absolute; None once the first chunk is in
        self.buf, self.pos = bytearray(), 0
        self.loop = asyncio.get_running_loop()

    async def _fill(self) -> bool:
        del self.buf[: self.pos]
        self.pos = 0
        when = self.deadline if self.deadline is not None else self.loop.time() + self.idle_s
        async with asyncio.timeout_at(when):
            data = await self.content.readany()
        self.buf += data
        return bool(data)

    def _check(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise bad_answer(name, f"an SSE line is over max_message_bytes ({self.max_bytes} bytes)",
                             "upstream_line_too_long")

    async def line(self, name: str) -> bytes | None:
        """The next line without its end, or None at the end of the body."""
        scan = self.pos
        while (end := self.buf.find(b"\n", scan)) < 0:
            self._check(name, len(self.buf) - self.pos)
            scan = len(self.buf) - self.pos
            if not await self._fill():
                rest = bytes(self.buf[self.pos:])
                self.pos = len(self.buf)
                return rest or None
        self._check(name, end - self.pos)  # a whole long line can arrive in one read, too
        line = bytes(self.buf[self.pos:end])
        self.pos = end + 1
        return line.removesuffix(b"\r")

    async def event(self, name: str) -> bytes | None:
        """The next event's data (its ``data:`` lines joined), or None at the end of the body."""
        data: list[bytes] = []
        while (line := await self.line(name)) is not None:
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif not line and data:
                return b"\n".join(data)
            # comments (":") and the event / id / retry fields carry nothing the gateway relays
        return b"\n".join(data) if data else None


def _completion_chunks(done: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A completion as the stream chunks that would have carried it."""
    head = {"id": done.get("id"), "object": "chat.completion.chunk", "created": done.get("created"),
            "model": done.get("model")}
    chunks = []
    for i, choice in enumerate(done["choices"]):
        delta = {k: v for k, v in (choice.get("message") or {}).items() if v is not None}
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [{"index": k, **c} if isinstance(c, dict) else c
                                   for k, c in enumerate(delta["tool_calls"])]
        chunks.append({**head, "choices": [{"index": choice.get("index", i), "delta": delta,
                                            "logprobs": choice.get("logprobs"),
                                            "finish_reason": choice.get("finish_reason") or "stop"}]})
    if include_usage and done.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": done["usage"]})
    return chunks


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
            # only the connect timeout is aiohttp's; first byte and idle are enforced per read here
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_s)
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=timeout, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        return self._session

    def _payload(self, body: dict[str, Any]) -> bytes:
        return json.dumps({**body, "model": self.upstream_model}).encode()

    async def _post(self, body: dict[str, Any], deadline: float, url: str | None = None) -> aiohttp.ClientResponse:
        async with asyncio.timeout_at(deadline):
            response = await self._client().post(url or self.url, data=self._payload(body),
                                                 headers=upstream_headers() or None)
        if response.status != 200:
            try:
                raise await self._error(response)
            finally:
                response.release()
        return response

    async def _error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        async with asyncio.timeout(self.config.idle_s):
            text = (await resp.content.read(_ERROR_BODY_BYTES)).decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
            error = parsed.get("error") if isinstance(parsed, dict) else None
        except ValueError:
            error = None
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or text[:500] or resp.reason)
        code = str(error.get("code") or f"http_{resp.status}")
        kind: ErrorKind = "client"
        if resp.status in (408, 409, 429) or resp.status >= 500:
            kind = "retry"
        elif resp.status == 400 and any(m in (code + " " + message).lower() for m in _CONTEXT_MARKERS):
            kind = "context"
        param = error.get("param")
        return UpstreamError(self.name, kind, resp.status, message, code,
                             parse_retry_after(resp.headers.get("retry-after")),
                             str(param)[:200] if isinstance(param, str) and param else None)

    def _transport_error(self, exc: Exception, first: bool) -> UpstreamError:
        cfg = self.config
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return timed_out(self.name, "connect", cfg.connect_s)
        if isinstance(exc, TimeoutError):
            return timed_out(self.name, "first_byte", cfg.first_byte_s) if first else \
                timed_out(self.name, "idle", cfg.idle_s)
        return UpstreamError(self.name, "retry", 502, f"{type(exc).__name__}: {exc}", type(exc).__name__)

    async def _body(self, resp: aiohttp.ClientResponse, deadline: float) -> Any:
        reader = _Reader(resp.content, self.config.max_message_bytes, self.config.idle_s, deadline)
        reader.deadline = None  # the headers are in: the body is read with the idle timeout
        while await reader._fill():
            if len(reader.buf) > self.config.max_message_bytes:
                raise bad_answer(self.name, f"the body is over max_message_bytes ({self.config.max_message_bytes} "
                                 "bytes)", "upstream_body_too_large")
        return loads(self.name, bytes(reader.buf))

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        deadline, first = asyncio.get_running_loop().time() + self.config.first_byte_s, True
        try:
            resp = await self._post(body, deadline)
            first = False
            try:
                return check_completion(self.name, await self._body(resp, deadline))
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc, first) from exc

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        deadline, reader = asyncio.get_running_loop().time() + self.config.first_byte_s, None
        try:
            resp = await self._post(body, deadline)
            try:
                if resp.content_type == "application/json":  # the upstream ignored stream: true
                    done = check_completion(self.name, await self._body(resp, deadline))
                    include = bool((body.get("stream_options") or {}).get("include_usage"))
                    for chunk in _completion_chunks(done, include):
                        yield chunk
                    return
                reader = _Reader(resp.content, self.config.max_message_bytes, self.config.idle_s, deadline)
                async for chunk in self._chunks(reader):
                    yield chunk
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc, reader is None or reader.deadline is not None) from exc

    async def _chunks(self, reader: _Reader) -> AsyncIterator[dict[str, Any]]:
        count = 0
        while (data := await reader.event(self.name)) is not None:
            if data == b"[DONE]":
                if not count:
                    raise bad_answer(self.name, "the stream had no chunks before [DONE]", "empty_stream")
                return
            if data.strip():
                chunk = check_chunk(self.name, loads(self.name, data))
                reader.deadline, count = None, count + 1
                yield chunk
        raise bad_answer(self.name, f"the stream ended without [DONE] after {count} chunks (connection "
                         "closed early)", "incomplete_stream")

    # -- other endpoints of the same upstream (Responses API, embeddings, completions) ------------
    def supports(self, path: str) -> bool:
        return True  # an OpenAI-compatible server answers what it implements; the rest is its 404

    def endpoint(self, path: str) -> str:
        return (self.config.api_base or "").rstrip("/") + path

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` (model replaced) to ``{api_base}{path}``; the parsed JSON answer, or UpstreamError."""
        deadline, first = asyncio.get_running_loop().time() + self.config.first_byte_s, True
        try:
            resp = await self._post(body, deadline, self.endpoint(path))
            first = False
            try:
                return await self._body(resp, deadline)
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc, first) from exc

    async def stream_json(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """The parsed ``data`` of each SSE event of a streamed answer from ``{api_base}{path}`` (a closing
        ``[DONE]`` is optional: Responses streams end without one)."""
        deadline, reader = asyncio.get_running_loop().time() + self.config.first_byte_s, None
        try:
            resp = await self._post(body, deadline, self.endpoint(path))
            try:
                reader = _Reader(resp.content, self.config.max_message_bytes, self.config.idle_s, deadline)
                while (data := await reader.event(self.name)) is not None:
                    if data == b"[DONE]":
                        return
                    if data.strip():
                        reader.deadline = None
                        yield loads(self.name, data)
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc, reader is None or reader.deadline is not None) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
