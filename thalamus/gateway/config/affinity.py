"""Settings of conversation affinity (``affinity:`` in the gateway config; gateway/core/affinity.py).

A routed conversation stays on the model that answered its previous turn unless that model fails, is no
longer allowed, or the router predicts a utility gain above ``switch_margin`` (per router:
``routers.NAME.switch_margin``). A conversation is recognised by an explicit id (the
``x-thalamus-session-id`` header, ``metadata.session_id``, optionally the ``user`` field) or else by a keyed
hash of its earlier user turns. The state is bounded (``ttl_s``, ``max_sessions``), lives in the ledger
database (table ``sessions``) so replicas share it, with a small in-process cache in front.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Identifier = Literal["header", "metadata", "user", "history"]


def _default_identify() -> list[Identifier]:
    return ["header", "metadata", "history"]


class AffinityConfig(BaseModel):
    """``affinity:`` of the gateway config; on by default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # how a conversation is recognised, first match wins; "user" (the OpenAI end-user id) is left out by
    # default: one user holds many conversations, and pinning them all to one model defeats routing
    identify: list[Identifier] = Field(default_factory=_default_identify, min_length=1)
    header: str = "x-thalamus-session-id"
    # utility points (the router's knob units) the router's choice must beat the previous model by;
    # a router's own ``switch_margin`` overrides it
    switch_margin: float = Field(default=0.05, ge=0)
    ttl_s: float = Field(default=24 * 3600.0, gt=0)  # a conversation idle longer than this starts afresh
    max_sessions: int = Field(default=200_000, ge=1)  # rows kept in the table (the oldest go first)
    cache_entries: int = Field(default=10_000, ge=1)  # the in-process cache in front of the table
    flush_ms: int = Field(default=50, gt=0)  # session writes are batched off the request path
    prune_every_s: float = Field(default=60.0, gt=0)
