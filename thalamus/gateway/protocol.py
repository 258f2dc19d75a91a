"""OpenAI wire shapes the gateway reads and writes, as small pure functions.

The gateway never re-models a request: the body stays a plain dict so that every field
a client sends (tools, response_format, n, seed, vendor extensions ...) reaches the
upstream untouched. This module only reads what routing needs (model, messages, the
``routing`` extension), raises OpenAI-shaped errors, and estimates tokens; error bodies and SSE
frames come from :mod:`thalamus.openai_wire`, shared with the local server.

Routing text policy: the system prompt(s) followed by the last user turn, joined by a
blank line. Content may be a string or a list of parts; text parts are joined, other
parts (images, audio) are ignored for routing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# error_body, sse and SSE_DONE are re-exported (``X as X``): gateway modules take them from here
from thalamus.openai_wire import SSE_DONE as SSE_DONE
from thalamus.openai_wire import APIError
from thalamus.openai_wire import error_body as error_body
from thalamus.openai_wire import sse as sse
from thalamus.router.policy import Knob


class RequestError(APIError):
    """An error the gateway answers with, already in OpenAI's shape."""


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", code="invalid_json")
    return body


def validate_chat(body: dict[str, Any]) -> None:
    """Check the fields the gateway itself reads; everything else is the upstream's business."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' is required and must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' is required and must be a non-empty array", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise RequestError(400, f"messages[{i}] must be an object with a string 'role'",
                               param=f"messages[{i}].role")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise RequestError(400, "'stream' must be a boolean", param="stream")


def content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    return ""


def routing_text(messages: list[dict[str, Any]]) -> str:
    """System prompt(s) + the last user turn (see the module docstring)."""
    system = [content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    users = [m for m in messages if m.get("role") == "user"]
    last = content_text(users[-1].get("content")) if users else content_text(messages[-1].get("content"))
    return "\n\n".join(t for t in [*system, last] if t)


@dataclass(frozen=True)
class RoutingOverrides:
    """The per-request ``routing`` extension (``extra_body={"routing": {...}}``)."""

    willingness_to_pay: float | None = None
    lambda_: float | None = None
    max_cost: float | None = None
    allowed: tuple[str, ...] | None = None
    excluded: tuple[str, ...] | None = None

    def apply(self, base: Knob) -> Knob:
        kind, value = base.kind, base.value
        if self.willingness_to_pay is not None:
            kind, value = "wtp", self.willingness_to_pay
        elif self.lambda_ is not None:
            kind, value = "lambda", self.lambda_
        return Knob(kind=kind, value=value, strong=base.strong,
                    max_cost=self.max_cost if self.max_cost is not None else base.max_cost,
                    allowed=self.allowed if self.allowed is not None else base.allowed,
                    excluded=self.excluded if self.excluded is not None else base.excluded)


_NUMBER_FIELDS = {"willingness_to_pay": "willingness_to_pay", "wtp": "willingness_to_pay",
                  "lambda": "lambda_", "max_cost": "max_cost"}


def parse_routing(raw: Any) -> RoutingOverrides:
    """Validate the ``routing`` object; errors name ``routing.<field>``."""
    if raw is None:
        return RoutingOverrides()
    if not isinstance(raw, dict):
        raise RequestError(400, "'routing' must be an object", param="routing")
    values: dict[str, Any] = {}
    for key, item in raw.items():
        if key in _NUMBER_FIELDS:
            if isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
                raise RequestError(400, f"routing.{key} must be a non-negative number", param=f"routing.{key}")
            values[_NUMBER_FIELDS[key]] = float(item)
        elif key in ("allowed", "excluded"):
            if not isinstance(item, list) or not all(isinstance(x, str) for x in item):
                raise RequestError(400, f"routing.{key} must be an array of model names", param=f"routing.{key}")
            values[key] = tuple(item)
        else:
            raise RequestError(400, f"routing.{key} is not a routing field (willingness_to_pay, lambda, "
                               "max_cost, allowed, excluded)", param=f"routing.{key}")
    if values.get("lambda_", 0.0) > 1:
        raise RequestError(400, "routing.lambda must be in [0, 1]", param="routing.lambda")
    return RoutingOverrides(**values)


def estimate_tokens(text: str) -> int:
    """Rough token count: one token per 4 characters (OpenAI's rule of thumb), at least 1."""
    return max(1, math.ceil(len(text) / 4))


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Per message: its text's estimate plus 4 tokens of chat framing."""
    return sum(estimate_tokens(content_text(m.get("content"))) + 4 for m in messages)
