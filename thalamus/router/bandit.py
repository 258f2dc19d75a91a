"""Contextual-bandit routers (LinUCB, linear Thompson sampling) that keep learning online.

Context: the prompt embedding, optionally reduced by PCA (whitened, stored as plain arrays)
plus a bias term. Every model (arm) keeps a ridge regression of its quality and of its cost
on the context, sharing one design matrix per arm: ``A = ridge * I + sum z z^T``. The reward
being optimised is ``quality - cost / wtp`` (the policy's willingness-to-pay rule), so with
no knob ``route`` uses ``Knob("wtp", wtp_)``; any other knob works too.

``fit(dataset)`` is the warm start on offline, full-information rows: every model's arm is
updated with every row where that model was observed. ``partial_fit(feedback)`` is the
online update with bandit feedback: one (prompt, chosen model, quality, cost) per item, and
only that arm learns. Exploration lives in ``route`` only: LinUCB adds an upper-confidence
bonus to quality (deterministic, probability 1.0); Thompson samples each arm's quality from
its posterior with a generator seeded by (seed, prompt, number of updates), so a decision is
reproducible, and reports the chosen arm's probability estimated from ``n_prob_samples`` draws.
``predict_quality`` / ``predict_cost`` return the posterior means (quality clipped to [0, 1]).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Self

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.router.base import Features, Feedback, Router
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.policy import Decision, Knob, choose, decide


class LinearBanditRouter(Router):
    """Shared machinery of the linear bandits: context map, per-arm ridge posteriors, updates."""

    def __init__(self, n_components: int | None = 32, ridge: float = 1.0, wtp: float | None = None,
                 embedder: str = DEFAULT_EMBEDDER, seed: int = 0) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.n_components = n_components
        self.ridge = ridge
        self.wtp = wtp

    # -- context -------------------------------------------------------------------------
    def _fit_projection(self, emb: np.ndarray) -> None:
        d = emb.shape[1]
        k = self.n_components
        self.center_: np.ndarray = emb.mean(axis=0)
        if k is None or k <= 0 or k >= min(d, len(emb)):
            self.projection_: np.ndarray = np.eye(d)
            return
        from sklearn.decomposition import PCA

        pca = PCA(n_components=k, random_state=self.seed).fit(emb)
        scale = np.sqrt(np.maximum(pca.explained_variance_, 1e-12))
        self.projection_ = pca.components_.T / scale  # whitened: unit variance per component

    def context(self, X: Features) -> np.ndarray:
        """(n, p) bandit context: projected embedding plus a bias column."""
        Z = (np.asarray(X, dtype=np.float64) - self.center_) @ self.projection_
        return np.hstack([Z, np.ones((len(Z), 1))])

    # -- warm start ----------------------------------------------------------------------
    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        if self.ridge <= 0:
            raise ConfigError(f"{self.name}: ridge must be > 0, got {self.ridge}")
        if self.wtp is not None and self.wtp <= 0:
            raise ConfigError(f"{self.name}: wtp must be > 0, got {self.wtp}")
        self._check_exploration()
        emb = np.asarray(X, dtype=np.float64)
        self._fit_projection(emb)
        Z = self.context(emb)
        m, p = dataset.n_models, Z.shape[1]
        A = np.empty((m, p, p))
        self.b_quality_: np.ndarray = np.zeros((m, p))
        self.b_cost_: np.ndarray = np.zeros((m, p))
        self.counts_: np.ndarray = np.zeros(m, dtype=np.int64)
        for j in range(m):
            seen = ~(np.isnan(dataset.quality[:, j]) | np.isnan(dataset.cost[:, j]))
            Zj = Z[seen]
            A[j] = self.ridge * np.eye(p) + Zj.T @ Zj
            self.b_quality_[j] = Zj.T @ dataset.quality[seen, j]
            self.b_cost_[j] = Zj.T @ dataset.cost[seen, j]
            self.counts_[j] = int(seen.sum())
        self.A_inv_: np.ndarray = np.linalg.inv(A)
        self.wtp_: float = float(self.wtp) if self.wtp is not None else self.cost_scale_
        self.n_updates_: int = 0

    def _check_exploration(self) -> None:
        """The exploration parameters of the subclass; none here."""

    # -- online updates ------------------------------------------------------------------
    def partial_fit(self, feedback: Sequence[Feedback]) -> Self:
        """Update the chosen arms with bandit feedback; returns self."""
        self.check_fitted()
        if not feedback:
            return self
        Z = self.context(self._feedback_features(feedback))
        for z, (_, model, quality, cost) in zip(Z, feedback, strict=True):
            j = self._arm(model)
            if np.isnan(quality) or np.isnan(cost):
                raise DataError(f"{self.name}.partial_fit: feedback for model {self.models_[j]!r} "
                                "has NaN quality or cost; send only observed outcomes")
            Az = self.A_inv_[j] @ z
            self.A_inv_[j] -= np.outer(Az, Az) / (1.0 + z @ Az)  # Sherman-Morrison
            self.b_quality_[j] += float(quality) * z
            self.b_cost_[j] += float(cost) * z
            self.counts_[j] += 1
            self.n_updates_ += 1
        return self

    def _feedback_features(self, feedback: Sequence[Feedback]) -> np.ndarray:
        items = [f[0] for f in feedback]
        texts = [t for t in items if isinstance(t, str)]
        embedded = iter(self.features(texts)) if texts else iter(())
        return np.stack([np.asarray(next(embedded) if isinstance(t, str) else t, dtype=np.float64)
                         for t in items])

    def _arm(self, model: str | int) -> int:
        if isinstance(model, str):
            if model not in self.models_:
                raise DataError(f"{self.name}.partial_fit: unknown model {model!r}; known: {self.models_}")
            return self.models_.index(model)
        if not 0 <= int(model) < len(self.models_):
            raise DataError(f"{self.name}.partial_fit: model index {model} out of range")
        return int(model)

    # -- posterior -----------------------------------------------------------------------
    def _posterior_mean(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean quality (clipped to [0, 1]) and cost (>= 0), each (n, m), for contexts Z."""
        theta_q = np.einsum("mpq,mq->mp", self.A_inv_, self.b_quality_)
        theta_c = np.einsum("mpq,mq->mp", self.A_inv_, self.b_cost_)
        return np.clip(Z @ theta_q.T, 0.0, 1.0), np.maximum(Z @ theta_c.T, 0.0)

    def _predict(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        return self._posterior_mean(self.context(X))

    # -- acting --------------------------------------------------------------------------
    def route_features(self, X: Features, knob: Knob | None = None) -> Decision:
        self.check_fitted()
        knob = knob or Knob("wtp", self.wtp_)
        Z = self.context(X)[:1]
        mean_q, cost = (a[0] for a in self._posterior_mean(Z))
        width = np.sqrt(np.maximum(np.einsum("p,mpq,q->m", Z[0], self.A_inv_, Z[0]), 0.0))  # sqrt(z A^-1 z)
        scored, probability = self._explore(X, mean_q, cost, width, knob)
        decision = decide(scored.tolist(), cost.tolist(), self.models_, knob, cost_scale=self.cost_scale_)
        return replace(decision, predicted_quality=mean_q.tolist(),
                       probability=probability(decision.index),
                       extra={**decision.extra, "explored_quality": float(scored[decision.index])})

    def _explore(self, X: Features, mean_q: np.ndarray, cost: np.ndarray, width: np.ndarray,
                 knob: Knob) -> tuple[np.ndarray, Any]:
        raise NotImplementedError


class LinUCBRouter(LinearBanditRouter):
    """LinUCB: optimistic quality = mean + alpha * sqrt(z A^-1 z); deterministic choice."""

    name = "linucb"

    def __init__(self, alpha: float = 0.5, n_components: int | None = 32, ridge: float = 1.0,
                 wtp: float | None = None, embedder: str = DEFAULT_EMBEDDER, seed: int = 0) -> None:
        super().__init__(n_components=n_components, ridge=ridge, wtp=wtp, embedder=embedder, seed=seed)
        self.alpha = alpha

    def _check_exploration(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"linucb: alpha must be >= 0, got {self.alpha}")

    def _explore(self, X: Features, mean_q: np.ndarray, cost: np.ndarray, width: np.ndarray,
                 knob: Knob) -> tuple[np.ndarray, Any]:
        return mean_q + self.alpha * width, lambda _index: 1.0


class ThompsonRouter(LinearBanditRouter):
    """Linear Thompson sampling: quality drawn from N(mean, (v * sqrt(z A^-1 z))^2) per arm."""

    name = "thompson"

    def __init__(self, v: float = 0.3, n_prob_samples: int = 256, n_components: int | None = 32,
                 ridge: float = 1.0, wtp: float | None = None, embedder: str = DEFAULT_EMBEDDER,
                 seed: int = 0) -> None:
        super().__init__(n_components=n_components, ridge=ridge, wtp=wtp, embedder=embedder, seed=seed)
        self.v = v
        self.n_prob_samples = n_prob_samples

    def _check_exploration(self) -> None:
        if self.v < 0:
            raise ConfigError(f"thompson: v must be >= 0, got {self.v}")
        if self.n_prob_samples < 1:
            raise ConfigError(f"thompson: n_prob_samples must be >= 1, got {self.n_prob_samples}")

    def _rng(self, X: Features) -> np.random.Generator:
        digest = hashlib.sha1(np.asarray(X, dtype=np.float32).tobytes()).digest()
        return np.random.default_rng([self.seed, self.n_updates_, int.from_bytes(digest[:8], "big")])

    def _explore(self, X: Features, mean_q: np.ndarray, cost: np.ndarray, width: np.ndarray,
                 knob: Knob) -> tuple[np.ndarray, Any]:
        rng = self._rng(X)
        draws = mean_q + self.v * width * rng.standard_normal((1 + self.n_prob_samples, len(mean_q)))
        # the draw acted on is counted too, so the chosen arm's estimated probability is > 0
        picks = choose(draws, np.broadcast_to(cost, draws.shape), knob, self.models_,
                       cost_scale=self.cost_scale_)
        share = np.bincount(picks, minlength=len(mean_q)) / len(picks)
        return draws[0], lambda index: float(share[index])
