"""Pool-aware routing: the router's decision, re-scored with the expected cost of switching models and
(``load_aware``) of queueing behind a busy engine.

The router scores candidates by its utility (predicted quality against expected cost under the knob). A
candidate on a local server that is not resident would first wait for a load (measured by the server,
evictions included); a candidate whose engine is running and queueing requests would wait behind them
(``running + waiting`` times ``service_s``). ``pool_routing.per_second`` turns those expected seconds into
utility points that are subtracted from its score. Only a decision whose choice is itself charged is
re-scored, so an uncharged choice (and a stochastic router's sampled choice of an idle resident model) is
never overturned; the re-scored choice is the best eligible candidate (the knob's allowed models within
``max_cost``). The penalties (``load_s``, ``wait_s``, ``penalty``), and the router's own choice when it
was overturned, go to the ledger row (``switch_cost``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from thalamus.gateway.learning.pool_state import PoolTracker
from thalamus.router.policy import Decision, allowed_mask, utility


def penalties(tracker: PoolTracker, decision: Decision) -> dict[str, dict[str, float]]:
    """{model: {"load_s"?, "wait_s"?, "penalty"}} of every candidate expected to load first (tracked, not
    resident) or to queue behind its engine's requests (load_aware)."""
    out: dict[str, dict[str, float]] = {}
    for model in decision.models:
        load_s, wait_s = tracker.expected_load_s(model) or 0.0, tracker.expected_wait_s(model) or 0.0
        entry = {key: round(value, 4) for key, value in (("load_s", load_s), ("wait_s", wait_s)) if value}
        if entry:
            out[model] = {**entry, "penalty": round((load_s + wait_s) * tracker.config.per_second, 6)}
    return out


def _why(charged: dict[str, float]) -> str:
    parts = [f"expected load {charged['load_s']:g} s" if "load_s" in charged else "",
             f"expected wait {charged['wait_s']:g} s" if "wait_s" in charged else ""]
    return ", ".join(p for p in parts if p)


def _eligible(decision: Decision) -> np.ndarray:
    mask = allowed_mask(decision.models, decision.knob)
    if decision.knob.max_cost is not None:
        mask &= np.asarray(decision.expected_cost) <= decision.knob.max_cost
    return mask


def adjust(tracker: PoolTracker, decision: Decision) -> Decision:
    """The decision with switching costs applied (see the module doc); unchanged when none apply."""
    charged, rate = penalties(tracker, decision), tracker.config.per_second
    if decision.model not in charged:
        return _logged(decision, charged, None, rate) if charged else decision
    mask = _eligible(decision)
    if not mask.any():  # every model over budget: the router's forced cheapest choice stands
        return _logged(decision, charged, None, rate)
    scores = utility(np.asarray([decision.predicted_quality]), np.asarray([decision.expected_cost]),
                     decision.knob, decision.models, cost_scale=decision.extra.get("cost_scale"))[0]
    cost = np.asarray([charged.get(m, {}).get("penalty", 0.0) for m in decision.models])
    scores = np.where(mask, scores - cost, -np.inf)
    best = int(np.argmax(scores))
    if best == decision.index or scores[best] <= scores[decision.index]:
        return _logged(decision, charged, None, rate)
    new = replace(decision, model=decision.models[best], index=best,
                  reason=f"pool-aware: {decision.model} ({_why(charged[decision.model])}); {decision.reason}")
    return _logged(new, charged, decision.model, rate)


def _logged(decision: Decision, charged: dict[str, dict[str, float]], overturned: str | None,
            per_second: float) -> Decision:
    record: dict[str, Any] = {"per_second": per_second, "penalties": charged, "router_choice": overturned}
    return replace(decision, log={**decision.log, "switch_cost": record})
