"""Operating points of a fitted router over its knob: predict once, sweep cheaply.

A router's predictions (quality and cost for every test prompt and model) are computed
once; each knob setting is then one vectorised call of the serving policy
(``thalamus.router.policy.choose``), so the sweep evaluates exactly the decisions the
gateway would make. Predictions only decide: a choice's realised quality and cost are the
observed matrices' entries for the chosen model.

Many models: the CARROT-style ``lambda`` knob on a grid. Two models: the exact RouteLLM
curve, sending prompts to the strong model in order of predicted margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thalamus.eval.metrics import OperatingPoint, TwoModelCurve, operating_point, two_model_curve
from thalamus.router.base import Features, Router
from thalamus.router.policy import Knob, choose


@dataclass(frozen=True)
class Predictions:
    """A router's predictions for the evaluated prompts.

    ``cost`` is already divided by the router's own cost scale (``cost_scale_``, fixed at
    fit time), so predictions from routers fitted on different folds share one lambda scale.
    """

    quality: np.ndarray
    cost: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        return cls(np.concatenate([p.quality for p in parts]), np.concatenate([p.cost for p in parts]))


@dataclass(frozen=True)
class SweepPoint:
    """The operating point reached at one knob value."""

    knob: float
    point: OperatingPoint

    def to_dict(self) -> dict[str, float]:
        return {"lambda": self.knob, **self.point.to_dict()}


def predict(router: Router, X: Features) -> Predictions:
    """Predicted quality and scaled predicted cost of a fitted router on features ``X``."""
    scale = float(getattr(router, "cost_scale_", 1.0)) or 1.0
    quality, cost = router.predict_from_features(X)
    return Predictions(quality, cost / scale)


def lambda_grid(n: int = 145, span: float = 1e6) -> np.ndarray:
    """Lambda values dense near both ends: lambda = r / (1 + r) with r log-spaced in
    [1/span, span].

    The policy's trade-off is ``lambda / (1 - lambda)`` units of scaled cost per unit of
    quality; the decisions change at ratios spread over many decades (tiny quality
    differences between dear models, tiny cost differences between cheap ones), so the grid
    is uniform in log(ratio). The exact ends 0 and 1 are left out: there the policy sees
    only one of the two terms and breaks ties by model order, not by the other term.
    """
    r = np.geomspace(1.0 / span, span, n)
    return r / (1.0 + r)


def sweep_lambda(pred: Predictions, quality: np.ndarray, cost: np.ndarray, models: Sequence[str],
                 grid: np.ndarray | None = None) -> list[SweepPoint]:
    """Realised operating points over the lambda grid; repeated points are kept once
    (the one with the smallest lambda)."""
    out: list[SweepPoint] = []
    seen: set[tuple[float, float]] = set()
    for lam in lambda_grid() if grid is None else grid:
        picked = choose(pred.quality, pred.cost, Knob("lambda", float(lam)), models, cost_scale=1.0)
        point = operating_point(quality, cost, picked)
        key = (point.quality, point.cost)
        if key not in seen:
            seen.add(key)
            out.append(SweepPoint(float(lam), point))
    return out


def sweep_two_model(pred: Predictions, quality: np.ndarray, cost: np.ndarray, strong: int) -> TwoModelCurve:
    """The exact call-share curve: margin = predicted quality of strong minus weak."""
    margin = pred.quality[:, strong] - pred.quality[:, 1 - strong]
    return two_model_curve(quality, cost, margin, strong)
