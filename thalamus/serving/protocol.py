"""OpenAI chat-completion shapes: the request schema, response and chunk builders, and HTTP errors.

The request schema keeps unknown OpenAI fields (``extra="allow"``) rather than rejecting them, and only
constrains what this server reads. Errors have OpenAI's shape ``{"error": {message, type, param, code}}``
(see :mod:`thalamus.openai_wire`).

Sampling parameters are bounded by what the decode loop can compute, so a request that passes validation
cannot fail in generation because of its own numbers (and take its batch with it): temperatures between 0
and float32's smallest normal number would become subnormal or 0 in the float32 logits math, seeds must fit
``torch.Generator.manual_seed`` (-2**63 .. 2**64-1), NaN and infinities are refused, and every string must
be encodable as UTF-8 (a lone surrogate makes the Rust tokenizer raise).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thalamus.errors import ThalamusError
from thalamus.openai_wire import APIError

FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny, without importing torch here
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # the range torch.Generator.manual_seed accepts
MAX_STOP_CHARS = 512  # stop matching re-scans the text for each stop string's prefixes: keep them short


RETRY_AFTER_S = 1  # what a busy server's 503 asks the client to wait: the queue moves every decoding step


class ServingError(APIError, ThalamusError):
    """An error the local server answers with over HTTP: a status and OpenAI's error fields."""

    headers: dict[str, str] | None = None


class BusyError(ServingError):
    """A 503 worth retrying (the server is busy, not broken): it carries a Retry-After header."""

    def __init__(self, message: str, *, code: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(503, message, type_="server_error", code=code)
        self.headers = {"Retry-After": str(retry_after_s)}


def utf8(value: str) -> str:
    """``value`` unchanged when UTF-8 can encode it; a ValueError naming the position of a lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid Unicode (a lone surrogate) at character {exc.start}") from None
    return value


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        return utf8(value)

    @field_validator("content")
    @classmethod
    def _content(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, str):
            return utf8(value)
        for part in value or []:
            utf8(str(part.get("text", "")))
        return value

    def text(self) -> str:
        """Content as plain text; list content keeps its text parts."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: keep generating past end-of-sequence (benchmarks)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return utf8(value)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if 0 < value < FLOAT32_TINY:
            raise ValueError(f"temperature must be 0 (greedy) or at least {FLOAT32_TINY:.8g} (float32's "
                             "smallest normal number; smaller ones underflow in the logits math)")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        for stop in stops:
            utf8(stop)
            if len(stop) > MAX_STOP_CHARS:
                raise ValueError(f"a stop sequence is {len(stop)} characters long; at most {MAX_STOP_CHARS}")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_chars(self) -> int:
        """Characters of message text: what the prompt-size limit counts (cheap, before tokenizing)."""
        return sum(len(m.text()) + len(m.role) for m in self.messages)


def raw_prompt_chars(messages: Any) -> int:
    """:meth:`ChatRequest.prompt_chars` of a body that is not validated here (a vLLM model's, forwarded as
    it is): roles plus text, skipping whatever is malformed (vLLM rejects that itself)."""
    total = 0
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        role, content = message.get("role"), message.get("content")
        total += len(role) if isinstance(role, str) else 0
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(part.get("text", ""))) for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return total


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(cid: str, model: str, text: str, finish_reason: str, usage_: dict[str, int],
                    extra: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_,
    }
    if extra:
        body["thalamus"] = extra
    return body


def chunk_body(cid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
               usage_: dict[str, int] | None = None, extra: dict[str, Any] | None = None,
               with_choice: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        if with_choice else [],
    }
    if usage_ is not None:
        body["usage"] = usage_
    if extra:
        body["thalamus"] = extra
    return body
