"""Models as profiles: a model's expected quality per routing group, with its uncertainty, and its cost.

A router built on groups (``cluster``) predicts a model's quality on a prompt as the P(group | prompt)
weighted mean of the model's per-group quality. That per-group table is all the router needs to know
about a model, so a model it was never trained on can be added by giving it a profile, and narrowed
by a few graded answers (``thalamus onboard``) or live feedback.

The estimate is a two-level shrinkage (empirical Bayes) that knows how hard each group is:

    quality(model, group) = base[group] + offset(model) + residual(model, group)

``base`` is the prior: the pooled mean of the known models in each group, a named model's profile
(``like: MODEL``) or a tier (a quantile of the known models in each group). The ``offset`` (is the
new model better or worse than its prior overall?) is estimated from every graded answer together,
shrunk by ``offset_count`` pseudo-answers; the per-group residual only from the answers in that group,
shrunk by ``prior_count[group]`` pseudo-answers. Both strengths are fitted on the training data (noise
variance of one answer over the spread of the model effects), so a few noisy probes move the whole
profile a little rather than one group a lot: in the leave-models-out benchmark this is what keeps a
new model that is not the best from pulling traffic after 25 probes.

A profile is a plain record (``to_dict`` / ``from_dict``: JSON), so a gateway can keep one per model in
its database and update it from feedback.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thalamus.errors import ConfigError

TIERS = {"top": 1.0, "high": 0.75, "mid": 0.5, "low": 0.25, "bottom": 0.0}
MIN_VAR = 1e-4  # floor of a fitted between-model variance (a strength of 2,500 pseudo-answers at most)
MAX_STRENGTH = 1000.0
RESID_QUANTILE = 0.9


@dataclass
class ModelProfile:
    """Per-group sufficient statistics of one model; every array has one entry per group."""

    name: str
    source: str  # "trained", "pooled", "like:MODEL", "tier:NAME"
    prior_mean: np.ndarray
    prior_count: np.ndarray
    offset_count: float
    noise_var: np.ndarray  # variance of one graded answer in each group
    prior_cost: np.ndarray
    obs_weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    obs_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cost_weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cost_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    resid_sum: float = 0.0
    resid_n: float = 0.0
    spent_usd: float = 0.0

    def __post_init__(self) -> None:
        g = len(self.prior_mean)
        for key in ("prior_mean", "prior_count", "noise_var", "prior_cost", "obs_weight", "obs_sum",
                    "cost_weight", "cost_sum"):
            value = np.asarray(getattr(self, key), dtype=np.float64)
            if value.size == 0 and key in ("obs_weight", "obs_sum", "cost_weight", "cost_sum"):
                value = np.zeros(g)
            if value.shape != (g,):
                raise ConfigError(f"profile of {self.name!r}: {key} has shape {value.shape}, expected ({g},) "
                                  "(one entry per router group)")
            setattr(self, key, value)

    @property
    def n_observed(self) -> float:
        return float(self.resid_n)

    def offset(self) -> float:
        """The model's overall shift from its prior, shrunk by ``offset_count`` pseudo-answers."""
        return float(self.resid_sum / (self.resid_n + self.offset_count)) if self.resid_n > 0 else 0.0

    def mean(self) -> np.ndarray:
        """Posterior mean quality per group, in [0, 1]."""
        base = self.prior_mean + self.offset()
        mean = (self.prior_count * base + self.obs_sum) / np.maximum(self.prior_count + self.obs_weight, 1e-12)
        return np.asarray(np.clip(mean, 0.0, 1.0))

    def variance(self) -> np.ndarray:
        """Posterior variance of the per-group mean: prior pseudo-answers plus graded ones."""
        n = self.prior_count + self.obs_weight
        shrink = self.prior_count / np.maximum(n, 1e-12)
        offset_var = float(np.mean(self.noise_var)) / (self.resid_n + self.offset_count + 1e-12)
        return np.asarray(self.noise_var / np.maximum(n, 1e-12) + shrink**2 * offset_var)

    def cost(self) -> np.ndarray:
        """Expected USD per call per group: the prior cost (one pseudo-call) and the observed calls."""
        return np.asarray((self.prior_cost + self.cost_sum) / (1.0 + self.cost_weight))

    def observe(self, probs: np.ndarray, scores: np.ndarray, costs: np.ndarray | None = None) -> None:
        """Add graded answers: ``probs`` (n, groups) P(group | prompt), ``scores`` (n,) in [0, 1] (NaN =
        no grade), ``costs`` (n,) USD per call (NaN = unknown)."""
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if probs.shape != (len(scores), len(self.prior_mean)):
            raise ConfigError(f"profile of {self.name!r}: {len(scores)} scores need group probabilities of "
                              f"shape ({len(scores)}, {len(self.prior_mean)}), got {probs.shape}")
        graded = np.isfinite(scores)
        if graded.any() and ((scores[graded] < 0) | (scores[graded] > 1)).any():
            raise ConfigError(f"profile of {self.name!r}: scores must be in [0, 1]")
        p, s = probs[graded], scores[graded]
        self.obs_weight = self.obs_weight + p.sum(axis=0)
        self.obs_sum = self.obs_sum + p.T @ s
        self.resid_sum += float(np.sum(s - p @ self.prior_mean))
        self.resid_n += float(len(s))
        if costs is not None:
            c = np.asarray(costs, dtype=np.float64).reshape(-1)
            seen = np.isfinite(c)
            self.cost_weight = self.cost_weight + probs[seen].sum(axis=0)
            self.cost_sum = self.cost_sum + probs[seen].T @ c[seen]
            self.spent_usd += float(c[seen].sum())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "source": self.source, "offset_count": self.offset_count,
                               "resid_sum": self.resid_sum, "resid_n": self.resid_n, "spent_usd": self.spent_usd}
        for key in ("prior_mean", "prior_count", "noise_var", "prior_cost", "obs_weight", "obs_sum",
                    "cost_weight", "cost_sum"):
            out[key] = [float(v) for v in getattr(self, key)]
        out["mean"] = [float(v) for v in self.mean()]  # for readers of the JSON; recomputed on load
        out["sd"] = [float(v) for v in np.sqrt(self.variance())]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "profile") -> ModelProfile:
        try:
            kwargs = {k: data[k] for k in ("name", "source", "prior_mean", "prior_count", "offset_count",
                                           "noise_var", "prior_cost")}
            extra = {k: data[k] for k in ("obs_weight", "obs_sum", "cost_weight", "cost_sum", "resid_sum",
                                          "resid_n", "spent_usd") if k in data}
        except KeyError as exc:
            raise ConfigError(f"{where}: field {exc.args[0]!r} is missing") from None
        return cls(**kwargs, **extra)


@dataclass
class GroupPrior:
    """What the training data says about the groups, for building the profile of a new model.

    ``means`` (groups, models): the known models' profiles; ``noise_var`` (groups,): variance of one
    graded answer; ``resid_var``: between-model variance of the per-group residuals; ``offset_var``:
    between-model variance of the overall offsets."""

    means: np.ndarray
    noise_var: np.ndarray
    resid_var: float
    offset_var: float

    def strengths(self) -> tuple[np.ndarray, float]:
        """(pseudo-answers per group, pseudo-answers of the offset): noise over between-model spread."""
        per_group = np.clip(self.noise_var / max(self.resid_var, MIN_VAR), 1.0, MAX_STRENGTH)
        offset = float(np.clip(np.mean(self.noise_var) / max(self.offset_var, MIN_VAR), 1.0, MAX_STRENGTH))
        return per_group, offset


def fit_group_prior(quality: np.ndarray, groups: np.ndarray, means: np.ndarray) -> GroupPrior:
    """``quality`` (n, m) training outcomes (NaN = unseen), ``groups`` (n,) group index, ``means``
    (g, m) the fitted per-group profiles."""
    g = means.shape[0]
    noise = np.zeros(g)
    for k in range(g):
        rows = quality[groups == k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a model unseen in a group: NaN, skipped
            var = np.nanvar(rows, axis=0) if len(rows) > 1 else np.full(quality.shape[1], np.nan)
        noise[k] = float(np.nanmean(var)) if np.isfinite(var).any() else 0.25
    noise = np.maximum(noise, 1e-3)
    size = np.bincount(groups, minlength=g).astype(np.float64)
    weight = size / max(size.sum(), 1.0)
    mu = means.mean(axis=1, keepdims=True)
    offsets = weight @ (means - mu)  # (m,)
    resid = means - mu - offsets[None, :]
    sampling = noise / np.maximum(size, 1.0)  # part of each group's spread that is noise
    m = means.shape[1]
    # a high quantile, not the mean: a specialist (a maths model on maths) deviates from its offset far
    # more than the typical model, and a prior fitted to the typical one would hide it behind shrinkage
    excess = resid**2 * m / max(m - 1, 1) - sampling[:, None]
    resid_var = float(np.quantile(excess, RESID_QUANTILE))
    offset_var = float(np.var(offsets, ddof=1)) if m > 1 else MIN_VAR
    return GroupPrior(means, noise, max(resid_var, MIN_VAR), max(offset_var, MIN_VAR))


def prior_base(prior: GroupPrior, models: list[str], spec: str | None) -> tuple[np.ndarray, str]:
    """(base per group, source label) for ``prior``: None/"pooled", "like:MODEL", "tier:NAME" (top, high,
    mid, low, bottom) or "tier:Q" with Q in [0, 1]."""
    if spec is None or spec in ("", "pooled"):
        return prior.means.mean(axis=1), "pooled"
    kind, _, value = spec.partition(":")
    if kind == "like":
        if value not in models:
            raise ConfigError(f"prior 'like: {value}': the router knows no model {value!r}; its models are "
                              f"{', '.join(models)}")
        return prior.means[:, models.index(value)].copy(), f"like:{value}"
    if kind == "tier":
        q = TIERS.get(value)
        if q is None:
            try:
                q = float(value)
            except ValueError:
                q = -1.0
        if not 0.0 <= q <= 1.0:
            raise ConfigError(f"prior 'tier: {value}': a tier is one of {', '.join(TIERS)} or a quantile in [0, 1]")
        return np.quantile(prior.means, q, axis=1), f"tier:{value}"
    raise ConfigError(f"prior {spec!r}: expected 'pooled', 'like:MODEL' or 'tier:NAME'")


def new_profile(name: str, prior: GroupPrior, models: list[str], spec: str | None,
                cost: np.ndarray) -> ModelProfile:
    """The profile of a model the router was not trained on, before any graded answer."""
    base, source = prior_base(prior, models, spec)
    per_group, offset = prior.strengths()
    return ModelProfile(name, source, base, per_group, offset, prior.noise_var.copy(), cost)


def trained_profile(name: str, mean: np.ndarray, count: np.ndarray, noise_var: np.ndarray,
                    cost: np.ndarray) -> ModelProfile:
    """The profile of a model the router was trained on: its group means, as many pseudo-answers as it
    had training answers (so feedback moves it as one more answer would)."""
    counts = np.maximum(count, 1.0)
    return ModelProfile(name, "trained", mean, counts, float(counts.sum()), noise_var.copy(), cost)
