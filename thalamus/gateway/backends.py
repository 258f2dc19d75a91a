"""Backends: how the gateway calls a model. The litellm backend is the only module importing litellm.

A Backend takes the client's request body (a dict, forwarded untouched apart from ``model``)
and returns the upstream's response body, or an async iterator of stream chunks. Failures
become ``UpstreamError`` with a ``kind`` the service acts on:

- ``retry``:   connection errors, timeouts, 429 and 5xx; retried, then the next candidate
- ``context``: the prompt is over the model's context window; may go to a larger model
- ``client``:  any other 4xx; returned to the client as is
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from thalamus.errors import BackendError
from thalamus.gateway.config import BackendConfig

ErrorKind = Literal["retry", "context", "client"]

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


class UpstreamError(BackendError):
    """An upstream call failed; ``status`` is the HTTP status to report, ``kind`` what to do next."""

    def __init__(self, backend: str, kind: ErrorKind, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.kind = kind
        self.status = status
        self.message = message
        self.code = code


class Backend(Protocol):
    name: str
    config: BackendConfig

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


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


def _classify(exc: Exception) -> tuple[ErrorKind, int]:
    import litellm

    status = int(getattr(exc, "status_code", 0) or 0)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return "context", 400
    if isinstance(exc, litellm.Timeout):
        return "retry", 504
    if isinstance(exc, litellm.APIConnectionError | litellm.RateLimitError) or status == 429:
        return "retry", status or 502
    if status >= 500 or status == 0 or status == 408:
        return "retry", status or 502
    return "client", status


class LiteLLMBackend:
    """A model reached through ``litellm.acompletion`` with the backend's api_base / key / timeout."""

    def __init__(self, config: BackendConfig) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        self.name = config.name
        self.config = config
        self._litellm = litellm

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in body.items() if k in TRANSLATED}
        extra = {k: v for k, v in body.items() if k not in TRANSLATED and k != "model"}
        if extra:  # fields litellm would drop or act on itself travel verbatim in the body
            kwargs["extra_body"] = extra
        kwargs.update(model=self.config.model, timeout=self.config.timeout, num_retries=0, max_retries=0)
        if "tools" in kwargs:
            # litellm 1.106 routes any request with tools through its MCP bridge, which imports the
            # optional 'mcp' package and may execute MCP tools itself; a proxy must only forward them
            kwargs["_skip_mcp_handler"] = True
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
        key = self.config.api_key()
        if key:
            kwargs["api_key"] = key
        elif self.config.api_base and self.config.model and self.config.model.startswith("openai/"):
            kwargs["api_key"] = "not-needed"  # OpenAI-compatible servers often need no key
        return kwargs

    def _error(self, exc: Exception) -> UpstreamError:
        kind, status = _classify(exc)
        return UpstreamError(self.name, kind, status, _message(exc), type(exc).__name__)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._litellm.acompletion(**self._kwargs(body))
        except Exception as exc:  # every litellm/openai/httpx error becomes an UpstreamError
            raise self._error(exc) from exc
        return dict(clean(response.model_dump()))

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            response = await self._litellm.acompletion(**self._kwargs(body))
            async for chunk in response:
                yield _usage_chunk(clean(chunk.model_dump(exclude_none=True)))
        except Exception as exc:  # as in complete(); the service decides whether to fall back
            raise self._error(exc) from exc


    async def aclose(self) -> None:
        return None  # litellm owns its client pool


def make_backend(config: BackendConfig) -> Backend:
    """The backend for a config entry: litellm unless ``provider: openai-compatible``."""
    if config.provider == "openai-compatible":
        from thalamus.gateway.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(config)
    return LiteLLMBackend(config)


def make_backends(configs: list[BackendConfig]) -> dict[str, Backend]:
    return {c.name: make_backend(c) for c in configs}
