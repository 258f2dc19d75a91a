"""What a request would have cost without routing, decided once, when its ledger row is written.

The dashboard's "savings" compare what was spent with what the same requests would have cost on a
baseline model (a router's ``baseline``, else its ``strong`` model). The counterfactual is priced per row
at write time, with the baseline backend's configured prices (the one price rule, ``BackendConfig.cost``) at
the request's tokens, and stored in two plain columns (``baseline_model``, ``baseline_cost_usd``): the stats
queries then stay portable sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from thalamus.gateway.config import BackendConfig
from thalamus.ledger.row import LedgerRow


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def baseline_for(row: LedgerRow, baseline: str | None,
                 price: Callable[[str], BackendConfig | None] | None = None) -> tuple[str | None, float | None]:
    """(baseline model, what this request would have cost on it).

    - a request that was not answered (no ``cost_usd``) has no counterfactual: (baseline, None);
    - a passthrough request (no router) is its own baseline: (chosen model, actual cost);
    - ``baseline`` None means the candidate with the highest expected cost (the premium default);
    - the baseline is priced with the one price rule (its backend's configured prices) at this request's
      tokens, so savings compare config-priced spend with a config-priced baseline; a baseline with no
      configured backend falls back to its expected cost from the decision;
    - a baseline that is not among the candidates prices the row at its own cost (no saving claimed).
    """
    cost = _finite(row.cost_usd)
    if row.router is None or not row.candidates:
        return row.chosen_model, cost
    if baseline is None:
        priced = {m: _finite(c.get("cost")) for m, c in row.candidates.items() if isinstance(c, dict)}
        known = {m: c for m, c in priced.items() if c is not None}
        baseline = max(known, key=lambda m: (known[m], m)) if known else None
    if cost is None:
        return baseline, None
    if baseline is None or baseline == row.chosen_model:
        return row.chosen_model, cost
    expected = row.candidates.get(baseline)
    if not isinstance(expected, dict):
        return row.chosen_model, cost
    config = price(baseline) if price is not None else None
    if config is not None and row.prompt_tokens is not None:
        return baseline, config.cost(row.prompt_tokens, row.completion_tokens or 0)
    value = _finite(expected.get("cost"))
    return (baseline, value) if value is not None else (row.chosen_model, cost)


def predicted_quality_for(row: LedgerRow) -> float | None:
    """The router's predicted quality of the model that answered (None for passthrough or unknown)."""
    if not row.candidates or row.chosen_model is None:
        return None
    entry = row.candidates.get(row.chosen_model)
    return _finite(entry.get("quality")) if isinstance(entry, dict) else None


def annotate(row: LedgerRow, baseline: str | None,
             price: Callable[[str], BackendConfig | None] | None = None) -> None:
    """Fill the row's dashboard columns; call once, when the row is final (``GatewayService.finish``)."""
    row.baseline_model, row.baseline_cost_usd = baseline_for(row, baseline, price)
    row.predicted_quality = predicted_quality_for(row)
