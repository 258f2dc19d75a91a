"""Exploration on top of any router's decision, with the propensity every off-policy estimate needs.

A deterministic router only ever shows the outcome of the model it prefers, so logs of it cannot tell
how another router would have done. Exploration spends a little quality to fix that: with
``epsilon`` the decision is replaced, with probability ``value``, by a model drawn uniformly from the
eligible ones (the knob's allowed set, within ``max_cost``); with ``softmax`` the model is drawn with
probability proportional to ``exp(utility / value)`` over the eligible models (``value`` is the
temperature, in the knob's utility units). Either way the returned ``Decision`` carries the
probability of the model actually chosen and ``probabilities``, the whole distribution, so the
ledger row records both.

A stochastic base router (Thompson sampling) reports only its chosen model's probability; under
epsilon the other models' base probability is taken as 0, so the recorded propensity is a lower
bound for them (docs/learning.md, "Propensities").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from thalamus.errors import ConfigError
from thalamus.router.policy import Decision, allowed_mask, utility

ExploreKind = Literal["epsilon", "softmax"]


def eligible(decision: Decision) -> np.ndarray:
    """Models the knob allows and the budget admits (all allowed ones when every one is over budget)."""
    mask = allowed_mask(decision.models, decision.knob)
    budget = decision.knob.max_cost
    if budget is not None:
        within = mask & (np.asarray(decision.expected_cost) <= budget)
        mask = within if within.any() else mask
    return mask


def base_probabilities(decision: Decision) -> np.ndarray:
    """The base router's distribution over models: its probability on its choice, 0 elsewhere."""
    p = np.zeros(len(decision.models))
    p[decision.index] = decision.probability
    return p


@dataclass
class Explorer:
    """``explore: {kind, value, seed}`` of a router config, with its own locked generator."""

    kind: ExploreKind
    value: float
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("epsilon", "softmax"):
            raise ConfigError(f"explore.kind must be 'epsilon' or 'softmax', got {self.kind!r}")
        if self.kind == "epsilon" and not 0.0 <= self.value <= 1.0:
            raise ConfigError(f"explore.value: epsilon must be in [0, 1], got {self.value}")
        if self.kind == "softmax" and self.value <= 0:
            raise ConfigError(f"explore.value: softmax temperature must be > 0, got {self.value}")
        self._rng = np.random.default_rng(self.seed)
        self._lock = threading.Lock()  # routing runs in worker threads; a Generator is not thread-safe

    def distribution(self, decision: Decision) -> np.ndarray:
        """Probability of every model under exploration (sums to 1 over the eligible models)."""
        mask = eligible(decision)
        if self.kind == "epsilon":
            base = base_probabilities(decision)
            return (1 - self.value) * base + self.value * mask / mask.sum()
        scores = utility(np.asarray([decision.predicted_quality]), np.asarray([decision.expected_cost]),
                         decision.knob, decision.models, cost_scale=decision.extra.get("cost_scale"))[0]
        z = np.where(mask, scores / self.value, -np.inf)
        z = np.exp(z - z[mask].max())
        return np.asarray(z / z.sum(), dtype=np.float64)

    def explore(self, decision: Decision) -> Decision:
        """The decision after exploration: maybe another model, always its probability."""
        p = self.distribution(decision)
        with self._lock:
            if self.kind == "epsilon":
                keep = self._rng.random() >= self.value
                index = decision.index if keep else int(self._rng.choice(len(p), p=eligible(decision) / eligible(
                    decision).sum()))
            else:
                index = int(self._rng.choice(len(p), p=p))
        if index == decision.index:
            return replace(decision, probability=float(p[index]), probabilities=p.tolist())
        return replace(decision, model=decision.models[index], index=index, probability=float(p[index]),
                       probabilities=p.tolist(), reason=f"explored ({self.kind} {self.value:g}); "
                       f"the router preferred {decision.model}")


def deterministic_probabilities(decision: Decision) -> list[float]:
    """What a decision without exploration records: its own probability on its choice."""
    if decision.probabilities is not None:
        return list(decision.probabilities)
    return base_probabilities(decision).tolist()
