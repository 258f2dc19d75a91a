"""OpenAI wire shapes the gateway reads and writes, as small pure functions.

The gateway never re-models a request: the body stays a plain dict so that every field
a client sends (tools, response_format, n, seed, vendor extensions ...) reaches the
upstream untouched. This module only reads what routing needs (model, messages, the
``routing`` extension), raises OpenAI-shaped errors, estimates tokens and renders responses (strict JSON:
an upstream's NaN never reaches a client); error bodies and SSE
frames come from :mod:`thalamus.openai_wire`, shared with the local server.

Routing text policy: the system prompt(s) followed by the last user turn, joined by a
blank line. Content may be a string or a list of parts; text parts are joined, other
parts (images, audio) are ignored for routing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from thalamus.gateway.upstream.checks import UpstreamError

# error_body, sse and SSE_DONE are re-exported (``X as X``): gateway modules take them from here
from thalamus.openai_wire import SSE_DONE as SSE_DONE
from thalamus.openai_wire import APIError
from thalamus.openai_wire import error_body as error_body
from thalamus.openai_wire import sse as sse
from thalamus.router.policy import Knob


class RequestError(APIError):
    """An error the gateway answers with, already in OpenAI's shape; ``headers`` go out with it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        # a message may quote client text: keep it encodable whatever the client sent (lone surrogates)
        super().__init__(status, _printable(message), param=_printable(param) if param else param, code=code,
                         type_=type_)
        self.headers: dict[str, str] = {}


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


MAX_JSON_DEPTH = 64  # deeper bodies are refused: no OpenAI request nests beyond a dozen levels
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a \uD800-\uDFFF escape somewhere in the body


def _no_constant(name: str) -> Any:
    raise RequestError(400, f"request body is not valid JSON: {name} is not a JSON number", code="invalid_json")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(400, f"request body holds the number {text[:40]}, which is out of range for a float",
                           code="invalid_json")
    return value


def _check_tree(body: Any, strings: bool) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and (when ``strings``) text that is not valid Unicode.
    Iterative, so a hostile body cannot exhaust the stack here either."""
    stack: list[tuple[Any, int, str]] = [(body, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)  # type: ignore[assignment]
        else:
            if strings and isinstance(node, str):
                _check_unicode(node, path)
            continue
        for key, value in items:
            child = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
            if strings and isinstance(key, str):
                _check_unicode(key, child)
            stack.append((value, depth + 1, child))


def _check_unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, f"{path or 'body'}: text holds an unpaired UTF-16 surrogate (not valid Unicode)",
                           param=path or None, code="invalid_unicode") from None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A JSON object, strictly: no NaN/Infinity, finite numbers, bounded nesting, valid Unicode."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels",
                           code="invalid_json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", code="invalid_json")
    _check_tree(body, strings=_SURROGATE_ESCAPE.search(raw) is not None)
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
        _check_content(msg, f"messages[{i}]")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise RequestError(400, "'stream' must be a boolean", param="stream")


# the field each OpenAI content part type carries its payload in; litellm fails on a part without it (with an
# error it reports as a connection failure), and OpenAI answers 400: the gateway answers that 400 itself
_PART_FIELDS = {"text": "text", "image_url": "image_url", "input_audio": "input_audio", "file": "file",
                "refusal": "refusal"}


# roles whose content may be null or absent (an assistant turn that only calls tools); OpenAI answers 400 for a
# null content elsewhere, and litellm fails on a null developer message (reported as a connection error)
_NULLABLE_CONTENT = frozenset({"assistant"})
_KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _check_content(msg: dict[str, Any], path: str) -> None:
    """A message's content is a string or an array of parts (or null for an assistant turn); a number, a
    boolean or an object is refused as OpenAI refuses it (litellm fails on them with a connection error)."""
    content, role = msg.get("content"), msg["role"]
    if isinstance(content, list):
        _check_parts(content, f"{path}.content")
    elif content is None:
        if role in _KNOWN_ROLES and role not in _NULLABLE_CONTENT:
            raise RequestError(400, f"{path}.content is required for a '{role}' message: a string or an array "
                               "of content parts", param=f"{path}.content")
    elif not isinstance(content, str):
        raise RequestError(400, f"{path}.content must be a string or an array of content parts, not a JSON "
                           f"{_json_type(content)}", param=f"{path}.content")


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", dict: "object"}.get(type(value), type(value).__name__)


def _check_parts(parts: list[Any], path: str) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(400, f"{path}[{j}] must be an object with a string 'type'", param=f"{path}[{j}].type")
        field = _PART_FIELDS.get(part["type"])
        if field is not None and part.get(field) is None:
            raise RequestError(400, f"{path}[{j}]: a '{part['type']}' part needs its '{field}' field",
                               param=f"{path}[{j}].{field}")


def answer_text(response: dict[str, Any]) -> str:
    """The text of a chat completion's first choice ("" when it has none)."""
    choices = response.get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    return content_text((message or {}).get("content")) if isinstance(message, dict) else ""


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
            if isinstance(item, bool) or not isinstance(item, int | float) or not 0 <= item < math.inf:
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


def token_count(usage: Any, key: str) -> int | None:
    """A usage count the upstream reported as a non-negative integer, else None (then it is estimated)."""
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**63:
        return None
    return int(value)


def render(name: str, response: dict[str, Any]) -> bytes:
    """The response as JSON bytes; an upstream body that cannot be valid JSON (NaN, Infinity) is the
    upstream's failure, so the request can still fall back."""
    try:
        return json.dumps(response, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        raise UpstreamError(name, "retry", 502, f"upstream body is not valid JSON: {exc}",
                            "invalid_upstream_body") from None


def render_chunk(name: str, chunk: dict[str, Any]) -> bytes:
    return b"data: " + render(name, chunk) + b"\n\n"
