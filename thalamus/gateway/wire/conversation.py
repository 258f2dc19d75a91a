"""What a request says about the conversation it continues: its explicit id, its earlier user turns, and
whether its history carries provider-specific state.

Provider state is what only the provider that made it can read back: Anthropic thinking blocks with their
``signature`` (and ``redacted_thinking``), litellm's ``thinking_blocks``, OpenRouter's ``reasoning_details``,
and the Responses API's ``reasoning`` items and ``encrypted_content``. A conversation holding such state
must stay with the provider family that produced it (gateway/core/affinity.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from thalamus.gateway.wire.protocol import content_text

STATE_KEYS = frozenset({"signature", "encrypted_content", "thinking_blocks", "reasoning_details"})
STATE_TYPES = frozenset({"thinking", "redacted_thinking", "reasoning"})
_MAX_DEPTH = 8  # provider state sits in an assistant message's parts, one or two levels down


def carries_state(value: Any, depth: int = 0) -> bool:
    """True when ``value`` (a message, an input item, a content part) holds provider-specific state."""
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, Mapping):
        if value.get("type") in STATE_TYPES or any(value.get(k) for k in STATE_KEYS):
            return True
        return any(carries_state(v, depth + 1) for v in value.values() if isinstance(v, Mapping | list))
    if isinstance(value, list):
        return any(carries_state(v, depth + 1) for v in value)
    return False


def provider_state(messages: Sequence[Mapping[str, Any]], native: Mapping[str, Any] | None) -> bool:
    """Whether the history (assistant messages; a Responses body's non-user input items) holds provider state."""
    if any(m.get("role") == "assistant" and carries_state(dict(m)) for m in messages):
        return True
    items = native.get("input") if native is not None else None
    return isinstance(items, list) and any(
        isinstance(i, Mapping) and i.get("role") != "user" and carries_state(i) for i in items)


def explicit_id(body: Mapping[str, Any], source: str) -> str | None:
    """The conversation id the body names: ``metadata.session_id`` (source "metadata") or ``user``."""
    if source == "metadata":
        meta = body.get("metadata")
        value = meta.get("session_id") if isinstance(meta, Mapping) else None
    else:
        value = body.get("user")
    return value if isinstance(value, str) and value else None


def _user_texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    return [content_text(m.get("content")) for m in messages if m.get("role") == "user"]


def history_parts(messages: Sequence[Mapping[str, Any]]) -> tuple[list[str] | None, list[str]]:
    """(what the previous turn stored its answer under, what this turn stores under for the next one).

    Both are the system prompt(s) and user turns, not the answers: a client sends its own turns back
    verbatim, while an answer may come back re-rendered. The first is system + the user turns before the
    last assistant message (None on a conversation's first turn: no answer yet); the second is system +
    every user turn of this request. A tool result turn (no new user message) looks up what it stores.
    """
    system = ["\x00" + content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    lookup = None if last is None else system + _user_texts(messages[:last])
    return lookup, system + _user_texts(messages)


def assistant_turns(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many answers the history holds: the number of this turn (0 for the first)."""
    return sum(1 for m in messages if m.get("role") == "assistant")
