"""OpenAI chat-completion shapes: the request schema, response and chunk builders, and HTTP errors.

The request schema keeps unknown OpenAI fields (``extra="allow"``) rather than rejecting them, and only
constrains what this server reads. Errors have OpenAI's shape ``{"error": {message, type, param, code}}``
(see :mod:`thalamus.openai_wire`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thalamus.errors import ThalamusError
from thalamus.openai_wire import APIError


class ServingError(APIError, ThalamusError):
    """An error the local server answers with over HTTP: a status and OpenAI's error fields."""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """Content as plain text; list content keeps its text parts."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: keep generating past end-of-sequence (benchmarks)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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
