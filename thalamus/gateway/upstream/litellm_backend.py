"""The litellm backend: the only module that imports litellm.

Chat completions through ``litellm.acompletion``; ``/embeddings`` and ``/completions`` through
``litellm.aembedding`` / ``litellm.atext_completion``. litellm's answers are cleaned of its own additions so
they read like the upstream's, and its exceptions become ``UpstreamError`` (see ``upstream/base.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from thalamus.gateway.config import BackendConfig
from thalamus.gateway.upstream.checks import (
    ErrorKind,
    UpstreamError,
    check_chunk,
    check_completion,
    check_finite,
    parse_retry_after,
    timed_out,
)
from thalamus.gateway.upstream.headers import upstream_headers

_OTHER_ENDPOINTS = frozenset({"/embeddings", "/completions"})
# litellm-only keys that an OpenAI response never carries
_LITELLM_KEYS = ("provider_specific_fields", "_hidden_params", "_response_ms")
_NULL_MESSAGE_KEYS = ("tool_calls", "function_call", "audio", "reasoning_content", "thinking_blocks",
                      "annotations", "images")

# OpenAI chat parameters litellm knows and translates per provider; every other body field
# (user, metadata, vendor extensions) is sent through litellm's extra_body untouched
TRANSLATED = frozenset({
    "messages", "stream", "stream_options", "temperature", "top_p", "n", "stop", "max_tokens",
    "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "seed", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "modalities", "audio", "prediction", "reasoning_effort", "service_tier", "store", "web_search_options",
})


def clean(obj: Any) -> Any:
    """Drop litellm's additions so the body reads like the upstream's own."""
    if isinstance(obj, dict):
        out = {k: clean(v) for k, v in obj.items() if k not in _LITELLM_KEYS}
        for key in _NULL_MESSAGE_KEYS:
            if key in out and out[key] is None and ("role" in out or "content" in out):
                del out[key]
        return out
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj


def _usage_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage chunk has ``choices: []``; litellm adds an empty choice back."""
    choices = chunk.get("choices") or []
    if chunk.get("usage") and all(not c.get("delta") and not c.get("finish_reason") for c in choices):
        chunk["choices"] = []
    return chunk


def _message(exc: Exception) -> str:
    """The upstream's message without litellm's 'litellm.XError: OpenAIException - ' prefixes."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return re.sub(r"^(litellm\.\w+: )*(\w+Error: )*(\w*Exception - )?", "", text)


def _status(exc: Exception) -> int:
    """The HTTP status litellm attached; litellm copies the upstream's error ``code`` there at times
    (e.g. "overloaded"), which is no status."""
    value = getattr(exc, "status_code", 0)
    try:
        status = int(value or 0)
    except (TypeError, ValueError):
        return 0
    return status if 100 <= status <= 599 else 0


# litellm's own check of user messages raises a bare Exception with this text (before any request is sent),
# which it then reports as a connection error
_INVALID_MESSAGE = re.compile(r"Invalid (?:user )?message at index (\d+)")


def _refused_message(exc: Exception) -> int | None:
    """The index of the message litellm refused to send, when its own validation refused one."""
    cause = exc.__cause__ or exc.__context__
    match = _INVALID_MESSAGE.search(str(cause)) if type(cause) is Exception else None
    return int(match.group(1)) if match else None


def _detail(exc: Exception) -> tuple[str | None, str | None]:
    """The upstream's own error ``code`` and ``param``, which litellm keeps in the exception's ``body``."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        return None, None
    code, param = body.get("code"), body.get("param")
    return (str(code)[:100] if code not in (None, "") else None,
            str(param)[:200] if isinstance(param, str) and param else None)


def _snake(name: str) -> str:
    """``UnsupportedParamsError`` -> ``unsupported_params``: a code in OpenAI's style, not a class name."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Error")).lower() or "invalid_request"


def _classify(exc: Exception) -> tuple[ErrorKind, int]:
    import litellm

    status = _status(exc)
    if _refused_message(exc) is not None:
        return "client", 400
    if isinstance(exc, litellm.ContextWindowExceededError):
        return "context", 400
    if isinstance(exc, litellm.Timeout):
        return "retry", 504
    if isinstance(exc, litellm.APIConnectionError | litellm.RateLimitError) or status == 429:
        return "retry", status or 502
    if status >= 500 or status == 0 or status == 408:
        return "retry", status or 502
    return "client", status


def _retry_after(exc: Exception) -> float | None:
    """``Retry-After`` of the upstream response a litellm exception carries, in seconds."""
    for holder in (getattr(exc, "response", None), exc):
        for attr in ("headers", "litellm_response_headers"):
            headers = getattr(holder, attr, None)
            if headers is not None and hasattr(headers, "get"):
                value = headers.get("retry-after") or headers.get("Retry-After")
                if value:
                    return parse_retry_after(str(value))
    return None


class LiteLLMBackend:
    """A model reached through ``litellm.acompletion`` with the backend's api_base / key / timeouts.

    litellm's transport has a connect and a per-read timeout and no total: the gateway passes
    ``connect_timeout`` and the larger of first-byte and idle as the read timeout, and where the two
    differ it enforces the shorter one itself (the call and its first chunk, or each later chunk).
    litellm fills in a final chunk when a stream ends without one; a stream that never sent a
    ``finish_reason`` is taken as cut.
    """

    def __init__(self, config: BackendConfig) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        self.name = config.name
        self.config = config
        self._litellm = litellm

    def _read_s(self) -> float:
        return max(self.config.first_byte_s, self.config.idle_s)

    def _timer(self, seconds: float) -> float | None:
        """An asyncio timer only where the transport's per-read timeout (``_read_s``) is too long: a timer
        also counts litellm's own CPU time and event-loop queueing, which a busy gateway must not bill
        to the upstream."""
        return seconds if seconds < self._read_s() else None

    def _timeout(self) -> Any:
        import httpx

        return httpx.Timeout(self._read_s(), connect=self.config.connect_s)

    def _target(self) -> dict[str, Any]:
        """Where and how every litellm call of this backend goes: model, timeouts, no retries of litellm's
        own, api_base, forwarded headers and the key (chat and the other endpoints alike)."""
        kwargs: dict[str, Any] = {"model": self.config.model, "timeout": self._timeout(), "num_retries": 0,
                                  "max_retries": 0}
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
        if forwarded := upstream_headers():  # server.forward_headers (gateway/upstream/headers.py)
            kwargs["extra_headers"] = forwarded
        key = self.config.api_key()
        if key:
            kwargs["api_key"] = key
        elif self.config.api_base and self.config.model and self.config.model.startswith("openai/"):
            kwargs["api_key"] = "not-needed"  # OpenAI-compatible servers often need no key
        return kwargs

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in body.items() if k in TRANSLATED}
        extra = {k: v for k, v in body.items() if k not in TRANSLATED and k != "model"}
        if extra:  # fields litellm would drop or act on itself travel verbatim in the body
            kwargs["extra_body"] = extra
        if "tools" in kwargs:
            # litellm 1.106 routes any request with tools through its MCP bridge, which imports the
            # optional 'mcp' package and may execute MCP tools itself; a proxy must only forward them
            kwargs["_skip_mcp_handler"] = True
        return kwargs | self._target()

    def _error(self, exc: Exception, started: bool) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, TimeoutError | self._litellm.Timeout) or "Timeout on reading data" in str(exc):
            cfg = self.config
            return timed_out(self.name, "idle", cfg.idle_s) if started else \
                timed_out(self.name, "first_byte", cfg.first_byte_s)
        kind, status = _classify(exc)
        if kind == "retry":  # the class name says which failure it was, on the row's fallback chain
            return UpstreamError(self.name, kind, status, _message(exc), type(exc).__name__, _retry_after(exc))
        return self._client_error(exc, kind, status)

    def _client_error(self, exc: Exception, kind: ErrorKind, status: int) -> UpstreamError:
        """A 4xx for the client: the upstream's own code and param when it sent them (litellm keeps its
        error body), else litellm's refusal in OpenAI's style (``unsupported_params``, ``messages[2]``)."""
        code, param = _detail(exc)
        index = _refused_message(exc)
        if index is not None:
            message = f"messages[{index}] is not a valid OpenAI chat message (litellm refused to send it)"
            return UpstreamError(self.name, kind, status, message, "invalid_message", param=f"messages[{index}]")
        return UpstreamError(self.name, kind, status, _message(exc), code or _snake(type(exc).__name__),
                             _retry_after(exc), param)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._timer(self.config.first_byte_s)):
                response = await self._litellm.acompletion(**self._kwargs(body))
        except Exception as exc:  # every litellm/openai/httpx error and our timer become an UpstreamError
            raise self._error(exc, started=False) from exc
        out = dict(clean(response.model_dump()))
        check_finite(self.name, out)  # litellm parses NaN; the client's encoder would refuse it
        return check_completion(self.name, out)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        response, started, idle = None, False, self._timer(self.config.idle_s)
        try:
            async with asyncio.timeout(self._timer(self.config.first_byte_s)):
                response = await self._litellm.acompletion(**self._kwargs(body))
                chunk = await anext(response, None)
            while chunk is not None:
                started = True
                yield self._chunk(response, chunk)
                async with asyncio.timeout(idle):
                    chunk = await anext(response, None)
            if not started:
                raise UpstreamError(self.name, "retry", 502, "the upstream stream had no chunks", "empty_stream")
        except Exception as exc:  # as in complete(); the service decides whether to fall back
            raise self._error(exc, started) from exc
        finally:
            closer = getattr(response, "aclose", None)
            if closer is not None:  # releases the upstream connection of a stream left early
                await closer()

    def _chunk(self, response: Any, chunk: Any) -> dict[str, Any]:
        if getattr(response, "sent_last_chunk", False) and not (
                getattr(response, "received_finish_reason", "") or getattr(response, "intermittent_finish_reason", "")):
            # litellm made this final chunk up: the upstream's stream ended before any finish_reason
            raise UpstreamError(self.name, "retry", 502, "the upstream stream ended before its finish_reason "
                                "(connection closed early, or no stream at all)", "incomplete_stream")
        out = clean(chunk.model_dump(exclude_none=True))
        check_finite(self.name, out)
        return _usage_chunk(check_chunk(self.name, out))

    # -- the other endpoints: /embeddings and /completions --------------------------------------
    def supports(self, path: str) -> bool:
        return path in _OTHER_ENDPOINTS

    def _plain_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "model"} | self._target()

    async def _call_other(self, path: str, body: dict[str, Any]) -> Any:
        if path not in _OTHER_ENDPOINTS:
            raise UpstreamError(self.name, "client", 404, f"the litellm backend does not serve {path}",
                                "unsupported_endpoint")
        fn = self._litellm.aembedding if path == "/embeddings" else self._litellm.atext_completion
        try:
            return await fn(**self._plain_kwargs(body))
        except Exception as exc:  # litellm's errors become an UpstreamError the retry loop reads
            raise self._error(exc, False) from exc

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return dict(clean((await self._call_other(path, body)).model_dump()))

    async def stream_json(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        response = await self._call_other(path, body)
        try:
            async for chunk in response:
                out = dict(clean(chunk.model_dump(exclude_none=True)))
                for choice in out.get("choices") or []:
                    if isinstance(choice, dict):
                        choice.setdefault("text", "")  # litellm leaves it out of the closing chunk; OpenAI sends ""
                yield out
        except Exception as exc:  # as in _call_other
            raise UpstreamError(self.name, "retry", 502, f"stream failed: {exc}", type(exc).__name__) from exc

    async def aclose(self) -> None:
        return None  # litellm owns its client pool


