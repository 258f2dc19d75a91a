"""CARROT-style cost-aware router (Somerstep et al. 2025): estimate quality and cost, then trade.

Per-model quality estimators on the prompt embedding, chosen by ``estimator``: ``knn``
(the kNN router), ``linear`` (logistic regression for 0/1 quality, ridge for graded),
``xgb`` (the xgboost router) or ``ensemble`` (the mean of all three). Per-model cost
estimators: when the dataset has per-model prices and output token counts, expected cost =
price_in x prompt tokens + price_out x predicted output tokens, with output (and prompt)
token counts regressed on the embedding in log space; otherwise the observed USD costs are
regressed in log space (with Duan's smearing factor, so the mean is not biased low).

The decision is the policy's lambda rule, ``argmax (1 - lambda) * quality - lambda * cost /
cost_scale_``, with ``cost_scale_`` fixed at fit time (the largest model mean cost), swept over
lambda for evaluation. Sub-estimators that are routers are saved in their own sub-folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError
from thalamus.router.base import Features, Router
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.knn import KNNRouter
from thalamus.router.xgb import XGBRouter, is_binary

Estimator = Literal["knn", "linear", "xgb", "ensemble"]
ESTIMATORS = ("knn", "linear", "xgb", "ensemble")
SUB_ROUTERS = {"knn": ("knn",), "xgb": ("xgb",), "linear": (), "ensemble": ("knn", "xgb")}  # saved in subfolders


def fit_log_ridge(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float, float]:
    """Ridge of log(y) on X over observed positive y: (coef, intercept, smearing factor)."""
    from sklearn.linear_model import Ridge

    seen = np.isfinite(y) & (y > 0)
    if seen.sum() < 2:
        fill = float(np.nanmean(y)) if np.isfinite(y).any() else 0.0
        return np.zeros(X.shape[1]), float(np.log(max(fill, 1e-12))), 1.0
    model = Ridge(alpha=alpha).fit(X[seen], np.log(y[seen]))
    resid = np.log(y[seen]) - model.predict(X[seen])
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_), float(np.mean(np.exp(resid)))


def prompt_tokens(dataset: RoutingDataset) -> np.ndarray:
    """Per-prompt input tokens, backed out of cost = (p_in * in + p_out * out) / 1e6 where possible.

    Different tokenizers give slightly different counts; the median over models is used, and
    prompts where no model allows the computation fall back to ~4 characters per token.
    """
    assert dataset.output_tokens is not None
    p_in = np.asarray([dataset.prices[m].input_per_m for m in dataset.models])
    p_out = np.asarray([dataset.prices[m].output_per_m for m in dataset.models])
    with np.errstate(invalid="ignore", divide="ignore"):
        per_model = (dataset.cost * 1e6 - p_out * dataset.output_tokens) / p_in
        per_model = np.where(per_model > 0, per_model, np.nan)
        tokens = np.nanmedian(np.where(np.isfinite(per_model), per_model, np.nan), axis=1)
    chars = np.asarray([len(t) / 4 + 1 for t in dataset.texts])
    return np.where(np.isfinite(tokens), tokens, chars)


class CarrotRouter(Router):
    """Per-model quality and cost estimators; decisions by the lambda trade-off."""

    name = "carrot"

    def __init__(self, estimator: Estimator = "knn", k: int = 100, C: float = 1.0, n_estimators: int = 200,
                 cost_alpha: float = 10.0, embedder: str = DEFAULT_EMBEDDER, seed: int = 0) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.estimator = estimator
        self.k = k
        self.C = C
        self.n_estimators = n_estimators
        self.cost_alpha = cost_alpha

    # -- fitting -------------------------------------------------------------------------
    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"carrot: estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        emb = np.asarray(X, dtype=np.float64)
        self.sub_routers_: dict[str, Router] = {
            key: self._new_sub_router(key).fit(dataset, features=X) for key in SUB_ROUTERS[self.estimator]
        }
        if self.estimator in ("linear", "ensemble"):
            self._fit_linear(emb, dataset)
        self._fit_cost(emb, dataset)

    def _new_sub_router(self, key: str) -> Router:
        if key == "knn":
            return KNNRouter(k=self.k, embedder=self.embedder, seed=self.seed)
        return XGBRouter(n_estimators=self.n_estimators, embedder=self.embedder, seed=self.seed)

    def _fit_linear(self, emb: np.ndarray, dataset: RoutingDataset) -> None:
        from sklearn.linear_model import LogisticRegression, Ridge

        m = dataset.n_models
        self.linear_coef_: np.ndarray = np.zeros((m, emb.shape[1]))
        self.linear_intercept_: np.ndarray = np.zeros(m)
        self.linear_logistic_: np.ndarray = np.zeros(m, dtype=bool)
        for j in range(m):
            y = dataset.quality[:, j]
            seen = ~np.isnan(y)
            if seen.sum() == 0 or np.ptp(y[seen]) == 0:  # constant: intercept only
                self.linear_intercept_[j] = float(y[seen].mean()) if seen.any() else 0.5
                continue
            if is_binary(y):
                clf = LogisticRegression(C=self.C, max_iter=1000).fit(emb[seen], y[seen].astype(int))
                self.linear_coef_[j], self.linear_intercept_[j] = clf.coef_[0], clf.intercept_[0]
                self.linear_logistic_[j] = True
            else:
                reg = Ridge(alpha=1.0 / self.C).fit(emb[seen], y[seen])
                self.linear_coef_[j], self.linear_intercept_[j] = reg.coef_, reg.intercept_

    def _fit_cost(self, emb: np.ndarray, dataset: RoutingDataset) -> None:
        self.uses_prices_: bool = bool(
            dataset.output_tokens is not None and all(m in dataset.prices for m in dataset.models)
            and np.isfinite(dataset.output_tokens).any()
        )
        m = dataset.n_models
        self.cost_coef_: np.ndarray = np.zeros((m + 1, emb.shape[1]))  # row m: prompt tokens
        self.cost_intercept_: np.ndarray = np.zeros(m + 1)
        self.cost_smear_: np.ndarray = np.ones(m + 1)
        targets = dataset.output_tokens if self.uses_prices_ else dataset.cost
        assert targets is not None
        for j in range(m):
            y = targets[:, j] + (1.0 if self.uses_prices_ else 0.0)  # log1p for token counts
            self.cost_coef_[j], self.cost_intercept_[j], self.cost_smear_[j] = \
                fit_log_ridge(emb, y, self.cost_alpha)
        if self.uses_prices_:
            self.price_in_: np.ndarray = np.asarray([dataset.prices[x].input_per_m for x in dataset.models])
            self.price_out_: np.ndarray = np.asarray([dataset.prices[x].output_per_m for x in dataset.models])
            self.cost_coef_[m], self.cost_intercept_[m], self.cost_smear_[m] = \
                fit_log_ridge(emb, prompt_tokens(dataset) + 1.0, self.cost_alpha)

    # -- prediction ----------------------------------------------------------------------
    def _predict_quality(self, X: Features) -> np.ndarray:
        parts = [r.quality_from_features(X) for r in self.sub_routers_.values()]
        if hasattr(self, "linear_coef_"):
            parts.append(self._linear_quality(np.asarray(X, dtype=np.float64)))
        return np.mean(parts, axis=0)

    def _linear_quality(self, emb: np.ndarray) -> np.ndarray:
        z = emb @ self.linear_coef_.T + self.linear_intercept_
        return np.where(self.linear_logistic_, 1.0 / (1.0 + np.exp(-z)), z)

    def _log_regression(self, emb: np.ndarray) -> np.ndarray:
        return np.exp(emb @ self.cost_coef_.T + self.cost_intercept_) * self.cost_smear_

    def _predict_cost(self, X: Features) -> np.ndarray:
        pred = self._log_regression(np.asarray(X, dtype=np.float64))
        m = len(self.models_)
        if not self.uses_prices_:
            return pred[:, :m]
        out_tokens = np.maximum(pred[:, :m] - 1.0, 0.0)
        in_tokens = np.maximum(pred[:, m:] - 1.0, 0.0)
        return np.asarray((in_tokens * self.price_in_ + out_tokens * self.price_out_) / 1e6)

    def predicted_output_tokens(self, X: Features) -> np.ndarray:
        """(n, m) predicted output tokens (only when fitted with prices and token counts)."""
        self.check_fitted()
        if not self.uses_prices_:
            raise ConfigError("carrot: this router was fitted without token counts; no token predictions")
        return np.maximum(self._log_regression(np.asarray(X, dtype=np.float64))[:, : len(self.models_)] - 1, 0)

    # -- persistence ---------------------------------------------------------------------
    def _extra_attributes(self) -> tuple[str, ...]:
        return ("sub_routers_",)

    def _save_extra(self, directory: Path) -> None:
        for key, router in self.sub_routers_.items():
            router.save(directory / key)

    def _load_extra(self, directory: Path) -> None:
        self.sub_routers_ = {k: Router.load(directory / k) for k in SUB_ROUTERS[self.estimator]}
