"""Off-policy evaluation: how a candidate router would have done on traffic another router served.

The logged traffic is a contextual-bandit record per request: the model that answered (action ``a``),
the probability the serving policy gave it (``mu``, the propensity), the feedback score (reward) and
the cost, plus every candidate model's predicted quality and expected cost (the reward model).
For a candidate policy ``pi`` (a matrix of each row's probability of each model):

- IPS   = mean(w * r), with w = pi(a|x) / mu(a|x)
- SNIPS = sum(w * r) / sum(w)
- DR    = mean(sum_m pi(m|x) rhat(x, m) + w * (r - rhat(x, a)))

``rhat`` is the serving router's predicted quality (expected cost for the cost estimate), shifted per
model by its mean residual on the rows that model answered, so a biased predictor is corrected where
it was observed. Intervals are percentile bootstrap (rows resampled with replacement). The effective
sample size ``(sum w)^2 / sum w^2`` says how many logged rows the estimate really rests on.

Support: a row where the candidate gives probability to a model the serving policy could not have
picked (its logged probability is 0) cannot be evaluated by any of these estimators; when more than
``max_unsupported`` of the rows are like that, the result says so and carries no estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thalamus.errors import DataError

ESTIMATORS = ("ips", "snips", "dr")


@dataclass
class LoggedBandit:
    """Logged decisions in index form; ``logging_p`` (n, m) is the serving policy's full distribution
    (NaN where the row does not say), ``pred_quality`` / ``pred_cost`` (n, m) its predictions."""

    models: list[str]
    action: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    cost: np.ndarray
    pred_quality: np.ndarray
    pred_cost: np.ndarray
    logging_p: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.action)
        if n == 0:
            raise DataError("off-policy evaluation needs at least one logged row with feedback")
        bad = ~(self.propensity > 0) | (self.propensity > 1 + 1e-9)
        if bad.any():
            raise DataError(f"logged row {int(np.flatnonzero(bad)[0])}: propensity "
                            f"{self.propensity[bad][0]!r} is not in (0, 1]")

    @property
    def n(self) -> int:
        return len(self.action)


@dataclass
class Interval:
    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


@dataclass
class Support:
    """Rows the candidate sends where the logs never went, per model."""

    unsupported_rows: int
    n: int
    by_model: dict[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.unsupported_rows / self.n


@dataclass
class OpeResult:
    """Estimates of one candidate on one log, or why there are none (``supported`` False)."""

    n: int
    support: Support
    supported: bool
    ess: float | None = None
    estimates: dict[str, dict[str, Interval]] = field(default_factory=dict)  # metric -> estimator -> interval

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "supported": self.supported, "ess": self.ess,
                "unsupported_rows": self.support.unsupported_rows, "unsupported_by_model": self.support.by_model,
                "estimates": {k: {e: iv.as_dict() for e, iv in v.items()} for k, v in self.estimates.items()}}


def support(log: LoggedBandit, pi: np.ndarray) -> Support:
    """Rows where ``pi`` puts mass on a model whose logged probability is 0 (unknown counts as possible)."""
    zero = (log.logging_p == 0) & (pi > 0)
    rows = zero.any(axis=1)
    by_model = {log.models[j]: int(zero[:, j].sum()) for j in range(len(log.models)) if zero[:, j].any()}
    return Support(int(rows.sum()), log.n, by_model)


def calibrated(pred: np.ndarray, observed: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``pred`` shifted per model by its mean residual where that model was observed; NaN filled."""
    out = np.array(pred, dtype=np.float64)
    fill = float(np.mean(observed))
    for j in range(out.shape[1]):
        rows = action == j
        col = out[:, j]
        col[np.isnan(col)] = fill
        if rows.any():
            col += float(np.mean(observed[rows] - col[rows]))
    return out


def _terms(log: LoggedBandit, pi: np.ndarray, value: np.ndarray, vhat: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row IPS numerator, weight and DR term: every estimator is a (ratio of) mean(s) of these."""
    idx = np.arange(log.n)
    w = pi[idx, log.action] / log.propensity
    dr = (pi * vhat).sum(axis=1) + w * (value - vhat[idx, log.action])
    return w * value, w, dr


def _estimate(ips_t: np.ndarray, w: np.ndarray, dr_t: np.ndarray, picks: np.ndarray | None
              ) -> dict[str, np.ndarray]:
    """Estimators on the whole log (picks None) or per bootstrap resample (picks: (B, n) row indices)."""
    if picks is None:
        return {"ips": np.asarray(ips_t.mean()), "snips": np.asarray(ips_t.sum() / max(w.sum(), 1e-300)),
                "dr": np.asarray(dr_t.mean())}
    sw = w[picks].sum(axis=1)
    return {"ips": ips_t[picks].mean(axis=1), "snips": ips_t[picks].sum(axis=1) / np.maximum(sw, 1e-300),
            "dr": dr_t[picks].mean(axis=1)}


def evaluate(log: LoggedBandit, pi: np.ndarray, utility: Callable[[np.ndarray, np.ndarray], np.ndarray],
             n_boot: int = 500, seed: int = 0, max_unsupported: float = 0.01) -> OpeResult:
    """Mean quality, cost and utility of policy ``pi`` (n, m) on the log; ``utility(q, c)`` is elementwise."""
    if pi.shape != (log.n, len(log.models)):
        raise DataError(f"candidate policy has shape {pi.shape}; the log has {log.n} rows x {len(log.models)} models")
    sup = support(log, pi)
    if sup.share > max_unsupported:
        return OpeResult(log.n, sup, supported=False)
    qhat = calibrated(log.pred_quality, log.reward, log.action)
    chat = calibrated(log.pred_cost, log.cost, log.action)
    metrics = {"quality": (log.reward, qhat), "cost": (log.cost, chat),
               "utility": (utility(log.reward, log.cost), utility(qhat, chat))}
    picks = np.random.default_rng(seed).integers(0, log.n, size=(n_boot, log.n))
    estimates: dict[str, dict[str, Interval]] = {}
    w = np.zeros(log.n)
    for name, (value, vhat) in metrics.items():
        ips_t, w, dr_t = _terms(log, pi, value, vhat)
        point, boot = _estimate(ips_t, w, dr_t, None), _estimate(ips_t, w, dr_t, picks)
        estimates[name] = {e: Interval(float(point[e]), *map(float, np.percentile(boot[e], [2.5, 97.5])))
                           for e in ESTIMATORS}
    ess = float(w.sum() ** 2 / max(float((w**2).sum()), 1e-300))
    return OpeResult(log.n, sup, supported=True, ess=ess, estimates=estimates)


def logged_value(log: LoggedBandit, utility: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 n_boot: int = 500, seed: int = 0) -> dict[str, Interval]:
    """The serving policy's own (on-policy) mean quality, cost and utility, with bootstrap intervals."""
    picks = np.random.default_rng(seed).integers(0, log.n, size=(n_boot, log.n))
    out: dict[str, Interval] = {}
    for name, value in (("quality", log.reward), ("cost", log.cost), ("utility", utility(log.reward, log.cost))):
        boot = value[picks].mean(axis=1)
        out[name] = Interval(float(value.mean()), *map(float, np.percentile(boot, [2.5, 97.5])))
    return out


def one_hot(choice: np.ndarray, m: int) -> np.ndarray:
    """A deterministic policy's probability matrix."""
    pi = np.zeros((len(choice), m))
    pi[np.arange(len(choice)), choice] = 1.0
    return pi
