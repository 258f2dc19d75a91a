"""Single ledger rows for the dashboard: recent requests with their decision, and one request in full.

A row's decision is what the router saw and chose: every candidate's predicted quality and expected cost,
the chosen model and its probability, the fallback chain, and the feedback the request got. Prompt text is
never returned (the prompt hash is): the stats API is for operators, not a way to read prompts.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from thalamus.gateway.stats.breakdown import status_class
from thalamus.gateway.stats.sql import Filters
from thalamus.ledger import feedback, requests

MAX_LIMIT = 500
_JSON = ("knob", "candidates", "fallback_chain")
_COLUMNS = [col for col in requests.columns if col.name != "prompt_text"]


def _decode(rec: dict[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    for key in _JSON:
        raw = out.get(key)
        if isinstance(raw, str):
            try:
                out[key] = json.loads(raw)
            except ValueError:
                out[key] = None  # a damaged cell should not hide the row
    for attempt in out.get("fallback_chain") or []:
        if isinstance(attempt, dict):  # the class comes from the status, not from an exception's name
            attempt["class"] = status_class(attempt.get("status") if isinstance(attempt.get("status"), int) else None)
    return out


def _feedback_for(conn: Connection, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    query = (sa.select(feedback.c.request_id, feedback.c.created_at, feedback.c.score, feedback.c.label,
                       feedback.c.source).where(feedback.c.request_id.in_(ids)).order_by(feedback.c.id))
    for rec in conn.execute(query).mappings():
        item = dict(rec)
        out[str(item.pop("request_id"))].append(item)
    return out


def recent(engine: Engine, f: Filters, limit: int = 50, before: float | None = None) -> list[dict[str, Any]]:
    """The newest requests matching ``f`` (older than ``before`` when paging), newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: {limit} is not in [1, {MAX_LIMIT}]")
    where = f.where() + ([requests.c.created_at < before] if before is not None else [])
    query = sa.select(*_COLUMNS).where(*where).order_by(requests.c.created_at.desc(), requests.c.id).limit(limit)
    with engine.connect() as conn:
        rows = [_decode(dict(r)) for r in conn.execute(query).mappings()]
        fb = _feedback_for(conn, [r["id"] for r in rows])
    for r in rows:
        r["feedback"] = fb[r["id"]]
    return rows


def one(engine: Engine, request_id: str, f: Filters | None = None) -> dict[str, Any] | None:
    """One request with its decision and feedback, or None when the ledger has no such row (or ``f``'s
    scope does not reach it: another tenant's row reads as missing)."""
    scope = f.scoped(requests.c.api_key_id) if f is not None else []
    with engine.connect() as conn:
        hit = conn.execute(sa.select(*_COLUMNS).where(requests.c.id == request_id, *scope)).mappings().first()
        if hit is None:
            return None
        row = _decode(dict(hit))
        row["feedback"] = _feedback_for(conn, [request_id])[request_id]
    return row
