"""From a router's Decision to what the gateway tries and logs: the fallback order, RouteLLM's threshold
knob, the knob as the ledger stores it. Pure functions, so the request flow in service.py stays short."""

from __future__ import annotations

from typing import Any

import numpy as np

from thalamus.router.policy import Decision, Knob, allowed_mask


def threshold_knob(pair: tuple[str, str], knob: Knob, threshold: float) -> Knob:
    """RouteLLM's ``router-NAME-THRESHOLD``: the configured strong/weak pair, still under the request's
    ``routing.allowed`` / ``excluded`` / ``max_cost``."""
    allowed = tuple(m for m in pair if knob.allowed is None or m in knob.allowed)
    return Knob("threshold", threshold, strong=pair[0], max_cost=knob.max_cost, allowed=allowed,
                excluded=knob.excluded)


def fallback_order(decision: Decision) -> list[str]:
    """The other candidates in score order, within the knob's allowed set and budget."""
    mask = allowed_mask(decision.models, decision.knob)
    budget = decision.knob.max_cost
    return [m for m in decision.score_order()
            if mask[decision.models.index(m)]
            and (budget is None or decision.expected_cost[decision.models.index(m)] <= budget)]


def unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def knob_dict(knob: Knob) -> dict[str, Any]:
    return {"kind": knob.kind, "value": None if not np.isfinite(knob.value) else knob.value,
            "strong": knob.strong, "max_cost": knob.max_cost,
            "allowed": list(knob.allowed) if knob.allowed is not None else None, "excluded": list(knob.excluded)}
