"""The one typed record of a request, as the gateway builds it and the ledger stores it.

Every place that writes a ledger row fills a ``LedgerRow``; nothing else builds row dicts. ``storable()``
turns it into the column values the ``requests`` table takes (structured fields JSON-encoded).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LedgerRow:
    """One request that reached the gateway, whatever happened to it; ``status`` is what the client saw."""

    id: str
    created_at: float
    finished_at: float | None = None
    api_key_id: str | None = None
    requested_model: str | None = None
    router: str | None = None
    artifact_version: str | None = None
    knob: dict[str, Any] | None = None
    candidates: dict[str, dict[str, float]] | None = None  # {model: {"quality": q, "cost": c}}
    chosen_model: str | None = None
    probability: float | None = None
    fallback_chain: list[dict[str, Any]] = field(default_factory=list)  # [{"model", "attempt", "status", "error"}]
    status: int = 0
    error_type: str | None = None
    stream: bool | None = None
    routing_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cost_estimated: bool | None = None
    prompt_hash: str | None = None
    prompt_text: str | None = None
    # dashboard columns (migration "dashboard"), filled at write time by gateway.counterfactual.annotate
    baseline_model: str | None = None       # the model the counterfactual spend is priced on
    baseline_cost_usd: float | None = None  # what this request would have cost on it
    predicted_quality: float | None = None  # the router's predicted quality of the model that answered
    upstream_ms: float | None = None        # time spent waiting on upstreams (all attempts): overhead = total - this

    def storable(self) -> dict[str, Any]:
        """Column values for the ``requests`` table: structured fields as JSON text."""
        out = asdict(self)
        for key in ("knob", "candidates", "fallback_chain"):
            if out[key] is not None:
                out[key] = json.dumps(out[key])
        return out
