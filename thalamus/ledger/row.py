"""The one typed record of a request, as the gateway builds it and the ledger stores it.

Every place that writes a ledger row fills a ``LedgerRow``; nothing else builds row dicts. ``storable()``
turns it into the column values the ``requests`` table takes, and never raises: whatever a client or an
upstream put in a field, the result can be inserted on SQLite and PostgreSQL and encoded as JSON
(the writer's journal). Strings lose lone surrogates and NULs and are cut to their column's length,
numbers outside their column's range are clamped, non-finite floats become NULL, and the structured
fields (knob, candidates, fallback chain) are cleaned the same way before they are JSON-encoded.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

import sqlalchemy as sa

from thalamus.ledger.schema import requests

_SURROGATES = re.compile("[\ud800-\udfff]")
_INT_RANGE = {sa.BigInteger: (-(2**63), 2**63 - 1), sa.Integer: (-(2**31), 2**31 - 1)}
_JSON_COLUMNS = ("knob", "candidates", "fallback_chain", "switch_cost", "guard")
_JSON_DEPTH = 32  # deeper structures are stored as their repr: nothing legitimate nests that far


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
    # learning loop (migration 6): with ledger.store_embeddings, the routing embedding instead of the text
    embedding: str | None = None            # base64 of little-endian float16 (gateway.learning.encode_embedding)
    embedder_id: str | None = None
    rollout: str | None = None              # serving | canary, when the router has a candidate
    shadow_model: str | None = None         # a shadow candidate's choice (logged, not used)
    shadow_version: str | None = None
    cache: str | None = None                # migration 7: "hit" when the response cache answered (cost 0)
    # migration 9: pool-aware routing (gateway/learning/pool_aware.py): {"per_second", "penalties": {model: {"load_s",
    # "penalty"}}, "router_choice": the router's own choice when a switching cost overturned it, else None}
    switch_cost: dict[str, Any] | None = None
    price_input_per_m: float | None = None  # the prices cost_usd was computed with (BackendConfig.cost)
    price_output_per_m: float | None = None
    session_id: str | None = None           # migration 12: conversation affinity (gateway/core/affinity.py)
    affinity: str | None = None             # new | kept | switched
    affinity_reason: str | None = None
    variant: str | None = None              # the backend variant that answered (BackendConfig.variants)
    guard: dict[str, Any] | None = None     # the guard stage's findings and time (gateway/core/guard.py)
    policy: str | None = None               # the named route that matched (gateway/learning/policies.py)

    def storable(self) -> dict[str, Any]:
        """Column values for the ``requests`` table, each one safe to insert; never raises."""
        out: dict[str, Any] = {}
        for f in fields(self):
            column = requests.columns.get(f.name)
            if column is None:  # a field without a column is caught by a test, not at run time
                continue
            try:
                out[f.name] = storable_value(column, getattr(self, f.name))
            except Exception:  # e.g. an object whose __float__ raises: NULL, never a lost row
                out[f.name] = None
        if out.get("created_at") is None:  # NOT NULL: a row is never refused for its timestamp
            out["created_at"] = time.time()
        if not out.get("id"):
            out["id"] = f"thl-unnamed-{time.time_ns():x}"
        return out


def clean_text(value: str) -> str:
    """Valid Unicode without NUL: what every database driver and JSON encoder accepts. A split
    surrogate pair is joined into its character; a lone surrogate becomes U+FFFD."""
    if _SURROGATES.search(value):
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value.replace("\x00", "")


def _as_text(value: Any, length: int | None) -> str:
    text = clean_text(value if isinstance(value, str) else _safe_repr(value))
    return text[:length] if length else text


def _safe_repr(value: Any) -> str:
    try:
        return str(value)
    except Exception as exc:  # a __str__ that raises still leaves a storable value
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def _as_int(value: Any, lo: int, hi: int) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    if not isinstance(value, int):
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            return None
    return int(min(max(value, lo), hi))


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data: str keys, clean strings, finite numbers (NaN and inf -> None)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else _as_float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return clean_text(value)
    if depth >= _JSON_DEPTH:
        return clean_text(_safe_repr(value))[:1000]
    if isinstance(value, dict):
        return {clean_text(k if isinstance(k, str) else _safe_repr(k)): json_safe(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    number = _as_float(value) if hasattr(value, "__float__") else None  # numpy scalars
    return number if number is not None else clean_text(_safe_repr(value))


def storable_value(column: sa.Column[Any], value: Any) -> Any:
    """``value`` as ``column`` stores it: within its type's length or range, or None."""
    if value is None:
        return None
    kind = column.type
    if isinstance(kind, sa.Text) and column.name in _JSON_COLUMNS:
        return json.dumps(json_safe(value), allow_nan=False)
    if isinstance(kind, sa.String):  # Text is a String without a length
        return _as_text(value, kind.length)
    if isinstance(kind, sa.Boolean):
        return bool(value) if isinstance(value, bool | int | float) else None
    for type_, (lo, hi) in _INT_RANGE.items():
        if isinstance(kind, type_):
            return _as_int(value, lo, hi)
    if isinstance(kind, sa.Float):
        return _as_float(value)
    return value
