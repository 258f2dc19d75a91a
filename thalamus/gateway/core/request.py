"""The frozen view of one request that every pipeline step reads, made once by the endpoint's parser.

The client's body is never mutated: ``forward`` is the body the upstream gets (the client's fields,
without the gateway's ``routing`` extension), ``original`` the body as the client sent it (the response
cache's key). What routing, budgets and accounting read (routing text, the prompt-token estimate,
``max_tokens``, the routing overrides) is computed here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thalamus.gateway.wire import protocol as p


@dataclass(frozen=True)
class RequestView:
    model: str
    stream: bool
    routing_text: str  # what the router and the prompt hash read
    prompt_tokens: int  # the estimate used for reservations and when an upstream reports no usage
    max_tokens: int | None
    overrides: p.RoutingOverrides
    messages: tuple[Mapping[str, Any], ...]  # the chat form, for the judge
    original: Mapping[str, Any]
    forward: dict[str, Any]  # the upstream body (chat form for chat-only backends)
    native: dict[str, Any] | None = field(default=None)  # the endpoint's own body (Responses API) when it differs


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    most = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
    return most if isinstance(most, int) and not isinstance(most, bool) and most > 0 else None


def without_routing(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "routing"}


def chat_view(body: dict[str, Any], chat: dict[str, Any], native: dict[str, Any] | None = None) -> RequestView:
    """The view of a chat-shaped request (``chat`` is ``body`` itself, or the Responses body's chat form)."""
    messages = chat["messages"]
    return RequestView(model=body["model"], stream=bool(body.get("stream")), routing_text=p.routing_text(messages),
                       prompt_tokens=p.estimate_prompt_tokens(messages), max_tokens=max_tokens_of(body),
                       overrides=p.parse_routing(body.get("routing")), messages=tuple(messages), original=body,
                       forward=without_routing(chat), native=without_routing(native) if native is not None else None)


def text_view(body: dict[str, Any], text: str) -> RequestView:
    """The view of an embeddings or legacy completions request: no routing, the input text as the prompt."""
    return RequestView(model=body["model"], stream=bool(body.get("stream")), routing_text=text,
                       prompt_tokens=p.estimate_tokens(text), max_tokens=max_tokens_of(body),
                       overrides=p.RoutingOverrides(), messages=(), original=body, forward=without_routing(body))
