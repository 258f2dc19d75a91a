"""Gradient-boosted router: one xgboost model per backend model, on prompt embeddings.

A model whose observed quality is only 0/1 gets a binary classifier (``binary:logistic``);
one with graded scores gets a regressor with a logistic link (``reg:logistic``), so both
predict in [0, 1]. Rows where a model's quality is NaN are left out of that model's
training set. Boosters are saved in xgboost's own format (``booster.save_model``, UBJSON).
Cost is each model's mean observed cost (the base default). ``n_jobs`` defaults to 1: on a
busy 2-core machine xgboost's OpenMP threads spin and two threads ran 13x slower than one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError
from thalamus.router.base import Features, Router, observed_mean
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.forest import FlatForest

BOOSTER_DIR = "boosters"
FLAT_MAX_ROWS = 64  # up to this many rows the numpy forest is faster; larger batches go to xgboost


def is_binary(values: np.ndarray) -> bool:
    observed = values[~np.isnan(values)]
    return bool(np.isin(observed, (0.0, 1.0)).all())


class XGBRouter(Router):
    """P(model answers well | prompt) from one boosted-tree model per backend model."""

    name = "xgb"

    def __init__(self, n_estimators: int = 200, max_depth: int = 4, learning_rate: float = 0.05,
                 subsample: float = 0.8, colsample_bytree: float = 0.5, min_child_weight: float = 2.0,
                 reg_lambda: float = 1.0, n_jobs: int = 1, embedder: str = DEFAULT_EMBEDDER, seed: int = 0) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs

    def _check_params(self) -> None:
        if self.n_estimators < 1:
            raise ConfigError(f"xgb: n_estimators must be >= 1, got {self.n_estimators}")
        if self.max_depth < 1:
            raise ConfigError(f"xgb: max_depth must be >= 1, got {self.max_depth}")
        if self.learning_rate <= 0:
            raise ConfigError(f"xgb: learning_rate must be > 0, got {self.learning_rate}")

    def _booster_params(self, binary: bool) -> dict[str, Any]:
        return {
            "objective": "binary:logistic" if binary else "reg:logistic",
            "max_depth": self.max_depth, "eta": self.learning_rate, "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree, "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda, "tree_method": "hist", "nthread": self.n_jobs,
            "seed": self.seed, "verbosity": 0,
        }

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        import xgboost as xgb

        self._check_params()  # before any booster: a constant dataset trains none
        emb = np.asarray(X, dtype=np.float32)
        boosters: list[Any] = []
        kinds: list[str] = []
        fallback = observed_mean(dataset.quality)
        for j in range(dataset.n_models):
            y = dataset.quality[:, j]
            seen = ~np.isnan(y)
            binary = is_binary(y)
            kinds.append("classifier" if binary else "regressor")
            if seen.sum() == 0 or np.ptp(y[seen]) == 0:
                boosters.append(None)  # constant (or unseen) model: predict its mean
                continue
            dtrain = xgb.DMatrix(emb[seen], label=y[seen], nthread=self.n_jobs)
            boosters.append(xgb.train(self._booster_params(binary), dtrain, self.n_estimators))
        self.boosters_: list[Any] = boosters
        self._flatten()
        self.kinds_: list[str] = kinds
        self.quality_mean_: np.ndarray = fallback  # used for models without a booster

    def _flatten(self) -> None:
        trained = [b for b in self.boosters_ if b is not None]
        self._forest = FlatForest(trained) if trained else None
        self._trained = [j for j, b in enumerate(self.boosters_) if b is not None]

    def _predict_quality(self, X: Features) -> np.ndarray:
        emb = np.asarray(X, dtype=np.float32)
        if self._forest is not None and len(emb) <= FLAT_MAX_ROWS:  # skip xgboost's per-call overhead
            out = np.tile(self.quality_mean_, (len(emb), 1))
            out[:, self._trained] = self._forest.predict(emb)
            return out
        out = np.empty((len(emb), len(self.models_)))
        for j, booster in enumerate(self.boosters_):
            if booster is None:
                out[:, j] = self.quality_mean_[j]
            else:
                out[:, j] = booster.inplace_predict(emb)
        return out

    # -- persistence ---------------------------------------------------------------------
    def _extra_attributes(self) -> tuple[str, ...]:
        return ("boosters_",)

    def _save_extra(self, directory: Path) -> None:
        folder = directory / BOOSTER_DIR
        folder.mkdir(exist_ok=True)
        for j, booster in enumerate(self.boosters_):
            if booster is not None:
                booster.save_model(str(folder / f"model_{j}.ubj"))

    def _load_extra(self, directory: Path) -> None:
        import xgboost as xgb

        boosters: list[Any] = []
        for j in range(len(self.models_)):
            path = directory / BOOSTER_DIR / f"model_{j}.ubj"
            if path.exists():
                booster = xgb.Booster()
                booster.load_model(str(path))
                boosters.append(booster)
            else:
                boosters.append(None)
        self.boosters_ = boosters
        self._flatten()
