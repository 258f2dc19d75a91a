"""The decision policy: predicted quality and cost plus a knob -> the chosen model.

Pure functions, no state. Every knob reduces to one rule: pick the model maximising
``quality - cost / wtp`` (willingness to pay, USD per unit of quality) among the models
allowed by the request's constraints. A CARROT-style ``lambda`` in [0, 1] is the same rule
with ``wtp = (1 - lambda) / lambda * cost_scale``; a RouteLLM-style ``threshold`` on two
models sends a prompt to the strong model when its predicted quality margin over the weak
one is at least the threshold. Because the rule is an argmax of a linear trade-off, moving
the knob toward quality never lowers the chosen model's expected cost.

Targets (a share of calls to a strong model, a mean cost per request) are turned into one
of these knobs by ``calibrate`` on a set of predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from thalamus.errors import ConfigError

KnobKind = Literal["wtp", "lambda", "threshold"]


@dataclass(frozen=True)
class Knob:
    """How much quality is worth.

    kind="wtp": value is USD per unit of quality (larger = more quality).
    kind="lambda": value in [0, 1] weighs normalised cost (0 = pure quality, 1 = cheapest).
    kind="threshold": two models only (the router's, or two named in ``allowed``); value is the
    minimum predicted quality margin of the strong model (``strong``) over the other for the
    strong one to be chosen.
    ``max_cost`` caps the expected cost of a request; ``allowed`` / ``excluded`` restrict models.
    """

    kind: KnobKind = "lambda"
    value: float = 0.5
    strong: str | None = None
    max_cost: float | None = None
    allowed: tuple[str, ...] | None = None
    excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("wtp", "lambda", "threshold"):
            raise ConfigError(f"knob.kind must be 'wtp', 'lambda' or 'threshold', got {self.kind!r}")
        if self.kind == "lambda" and not 0.0 <= self.value <= 1.0:
            raise ConfigError(f"knob.value: lambda must be in [0, 1], got {self.value}")
        if self.kind == "wtp" and self.value < 0:
            raise ConfigError(f"knob.value: willingness to pay must be >= 0, got {self.value}")
        if self.max_cost is not None and self.max_cost < 0:
            raise ConfigError(f"knob.max_cost must be >= 0, got {self.max_cost}")


@dataclass
class Decision:
    """The routing decision for one prompt, with what was predicted for every candidate."""

    model: str
    index: int
    reason: str
    models: list[str]
    predicted_quality: list[float]
    expected_cost: list[float]
    knob: Knob
    probability: float = 1.0
    extra: dict[str, float] = field(default_factory=dict)
    # every model's probability when the decision is stochastic (exploration); None: all on ``model``
    probabilities: list[float] | None = None
    # the routing features (embedding) the decision was made on, for online updates; not serialised
    features: np.ndarray | None = field(default=None, repr=False, compare=False)
    # what the gateway logs about how the decision was made (rollout variant, shadow choice)
    log: dict[str, Any] = field(default_factory=dict)

    @property
    def quality(self) -> float:
        return self.predicted_quality[self.index]

    @property
    def cost(self) -> float:
        return self.expected_cost[self.index]

    def score_order(self) -> list[str]:
        """Candidates from best to worst under the knob: the fallback order."""
        scores = utility(np.asarray([self.predicted_quality]), np.asarray([self.expected_cost]),
                         self.knob, self.models, cost_scale=self.extra.get("cost_scale"))[0]
        return [self.models[i] for i in np.argsort(-scores, kind="stable")]

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["knob"] = asdict(self.knob)
        out.pop("features", None)
        return out


def allowed_mask(models: Sequence[str], knob: Knob) -> np.ndarray:
    mask = np.ones(len(models), dtype=bool)
    if knob.allowed is not None:
        unknown = set(knob.allowed) - set(models)
        if unknown:
            raise ConfigError(f"routing.allowed names unknown models {sorted(unknown)}; known: {list(models)}")
        mask &= np.isin(models, knob.allowed)
    mask &= ~np.isin(models, list(knob.excluded))
    if not mask.any():
        raise ConfigError("routing.allowed / routing.excluded leave no model to route to")
    return mask


def utility(quality: np.ndarray, cost: np.ndarray, knob: Knob, models: Sequence[str],
            cost_scale: float | None = None) -> np.ndarray:
    """Score of every (prompt, model) under the knob; higher is better. Shape (n, m)."""
    if knob.kind == "wtp":
        if knob.value == 0:
            return -cost + 1e-12 * quality  # pure cheapest; quality breaks ties
        return quality - cost / knob.value
    if knob.kind == "lambda":
        scale = cost_scale if cost_scale else float(np.nanmax(cost)) or 1.0
        return (1 - knob.value) * quality - knob.value * cost / scale
    # threshold: the strong model wins by the margin it must beat over the other of the pair
    pair = [m for m in models if knob.allowed is None or m in knob.allowed]
    if len(pair) != 2 or knob.strong not in pair:
        raise ConfigError("a 'threshold' knob needs exactly two models (the router's, or two in knob.allowed) "
                          "and knob.strong naming one of them")
    s = list(models).index(knob.strong)
    w = list(models).index(pair[1 - pair.index(knob.strong)])
    out = np.zeros_like(quality)
    out[:, s] = quality[:, s] - quality[:, w] - knob.value
    return out - 1e-12 * cost  # at exactly the threshold the cheaper model wins


def choose(quality: np.ndarray, cost: np.ndarray, knob: Knob, models: Sequence[str],
           cost_scale: float | None = None) -> np.ndarray:
    """Vectorised policy: the chosen model index for every row of (n, m) predictions."""
    quality = np.atleast_2d(quality)
    cost = np.atleast_2d(cost)
    score = utility(quality, cost, knob, models, cost_scale)
    allowed = allowed_mask(models, knob)
    score = np.where(allowed, score, -np.inf)
    if knob.max_cost is not None:
        over = cost > knob.max_cost
        # if every allowed model is over budget, fall back to the cheapest allowed one
        all_over = np.all(over | ~allowed, axis=1, keepdims=True)
        cheapest = np.where(allowed, cost, np.inf).argmin(axis=1)
        score = np.where(over & ~all_over, -np.inf, score)
        forced = all_over[:, 0]
        choice = score.argmax(axis=1)
        choice[forced] = cheapest[forced]
        return choice
    return score.argmax(axis=1)


def decide(quality: Sequence[float], cost: Sequence[float], models: Sequence[str], knob: Knob,
           cost_scale: float | None = None) -> Decision:
    """The Decision for one prompt."""
    q = np.asarray(quality, dtype=np.float64)[None, :]
    c = np.asarray(cost, dtype=np.float64)[None, :]
    idx = int(choose(q, c, knob, models, cost_scale)[0])
    reason = f"max {knob.kind}-utility at {knob.value:g}"
    if knob.max_cost is not None and c[0, idx] > knob.max_cost:
        reason = f"every allowed model over max_cost {knob.max_cost:g}; chose the cheapest"
    return Decision(
        model=models[idx], index=idx, reason=reason, models=list(models),
        predicted_quality=q[0].tolist(), expected_cost=c[0].tolist(), knob=knob,
        extra={"cost_scale": cost_scale} if cost_scale else {},
    )


def calibrate(quality: np.ndarray, cost: np.ndarray, models: Sequence[str], *,
              strong_share: float | None = None, strong: str | None = None,
              mean_cost: float | None = None, cost_scale: float | None = None) -> Knob:
    """Turn a target into a knob on calibration predictions (n, m).

    ``strong_share`` + ``strong``: the threshold (two models) or lambda (many models) whose
    share of calls to ``strong`` is closest to the target without exceeding it.
    ``mean_cost``: the most quality-leaning lambda whose mean chosen cost stays within it.
    """
    if (strong_share is None) == (mean_cost is None):
        raise ConfigError("calibrate needs exactly one target: strong_share or mean_cost")
    if strong_share is not None:
        if strong is None or strong not in models:
            raise ConfigError(f"calibrate: strong model {strong!r} is not one of {list(models)}")
        if not 0 <= strong_share <= 1:
            raise ConfigError(f"calibrate: strong_share must be in [0, 1], got {strong_share}")
        s = list(models).index(strong)
        if len(models) == 2:
            margin = np.sort(quality[:, s] - quality[:, 1 - s])[::-1]
            k = int(np.floor(strong_share * len(margin)))
            value = np.inf if k == 0 else float(margin[k - 1])
            return Knob(kind="threshold", value=value, strong=strong)
        return _bisect_lambda(lambda kn: float(np.mean(choose(quality, cost, kn, models, cost_scale) == s)),
                              strong_share)
    assert mean_cost is not None

    def spend(kn: Knob) -> float:
        picked = choose(quality, cost, kn, models, cost_scale)
        return float(np.mean(cost[np.arange(len(picked)), picked]))

    return _bisect_lambda(spend, mean_cost)


def _bisect_lambda(measure: object, target: float, iters: int = 40) -> Knob:
    """Smallest lambda (most quality) whose measure (non-increasing in lambda) is <= target."""
    assert callable(measure)
    lo, hi = 0.0, 1.0
    if measure(Knob("lambda", lo)) <= target:
        return Knob("lambda", lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if measure(Knob("lambda", mid)) <= target:
            hi = mid
        else:
            lo = mid
    return Knob("lambda", hi)
