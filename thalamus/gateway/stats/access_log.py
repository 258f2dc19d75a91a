"""One structured JSON access-log line per request, on the dedicated logger ``thalamus.access``.

Written at the request's finish (``GatewayService.finish``) from its final ledger row, so the line says what
the client saw and what the ledger keeps: request id, key, team, requested and chosen model, router, status,
error, latency, tokens, cost, whether an upstream try failed and was retried or fell back. Never a prompt.

The logger is at INFO; ``thalamus serve`` prints it to stderr. Elsewhere it goes where the application's
logging sends ``thalamus.access`` (``logging.getLogger("thalamus.access").disabled = True`` turns it off);
building the line is skipped when nothing listens at INFO.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from thalamus.ledger.row import LedgerRow

ACCESS_LOGGER = "thalamus.access"
log = logging.getLogger(ACCESS_LOGGER)


def access_record(row: LedgerRow, team: str | None) -> dict[str, Any]:
    """The access line's fields, from a finished row."""
    return {"request_id": row.id, "key": row.api_key_id, "team": team, "requested_model": row.requested_model,
            "chosen_model": row.chosen_model, "router": row.router, "status": row.status,
            "error": row.error_type, "stream": row.stream, "latency_ms": _round(row.total_ms, 3),
            "ttft_ms": _round(row.ttft_ms, 3), "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens, "cost_usd": _round(row.cost_usd, 12),
            "fallback": bool(row.fallback_chain),
            "attempts": [f"{a.get('model')}:{a.get('status')}" for a in row.fallback_chain],
            "cache": row.cache}


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None and math.isfinite(value) else None


def log_access(row: LedgerRow, team: str | None) -> None:
    """Write the request's access line (one JSON object) when the logger is enabled at INFO."""
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps(access_record(row, team), ensure_ascii=False, default=str))


def stderr_access_log() -> None:
    """``thalamus serve``: print the access lines to stderr, bare (each line is the JSON object), unless the
    application already gave the logger a handler."""
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
