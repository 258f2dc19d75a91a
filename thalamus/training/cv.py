"""k-fold cross-validated hyperparameter search for any router.

Every candidate setting is fitted on k-1 folds and predicts the held-out fold; the
out-of-fold predictions of all folds are pooled and swept over the lambda knob exactly as
the evaluation harness does. The objective, maximised, is the AIQ of the pooled sweep:
the mean of the non-decreasing upper convex hull of (mean cost, mean quality) over the
cost range of the single models (``thalamus.eval.metrics.aiq``). It rewards a router
for quality at every budget, not only at one operating point. Folds are fixed by prompt
text hash, evaluation uses fully observed prompts only, and the embeddings are computed
once and sliced per fold.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError
from thalamus.eval.metrics import aiq, cost_range_of, single_model_points, upper_hull
from thalamus.eval.sweep import Predictions, predict, sweep_lambda
from thalamus.router.base import Features
from thalamus.router.registry import make_router

# the default search space of ``--tune`` per router; others need an explicit grid
DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "knn": {"k": [10, 20, 40, 80, 160, 250, 400], "weighting": ["uniform", "similarity"]},
    "carrot": {"k": [20, 50, 100, 200]},
    "xgb": {"max_depth": [2, 4, 6]},
    "linucb": {"ridge": [0.3, 1.0, 3.0]},
    "thompson": {"ridge": [0.3, 1.0, 3.0]},
    "cluster": {"C": [1.0, 10.0], "prior": [0.0, 5.0, 20.0]},
}
OBJECTIVE = "AIQ of pooled out-of-fold lambda sweep over the single-model cost range"


@dataclass
class TuneResult:
    best_params: dict[str, Any]
    best_score: float
    scores: list[tuple[dict[str, Any], float]]  # every candidate, in grid order
    objective: str = OBJECTIVE
    folds: int = 5

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "folds": self.folds, "best_params": self.best_params,
                "best_score": self.best_score,
                "scores": [{"params": p, "score": s} for p, s in self.scores]}


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def cv_score(name: str, params: Mapping[str, Any], dataset: RoutingDataset, X: Features,
             k: int = 5, seed: int = 0) -> float:
    """The objective (see module docstring) of one setting."""
    fold = dataset.fold_ids(k, seed)  # the same assignment as RoutingDataset.kfold
    complete = dataset.complete_mask()
    parts: list[Predictions] = []
    rows: list[np.ndarray] = []
    for i in range(k):
        test = np.flatnonzero((fold == i) & complete)
        train = np.flatnonzero(fold != i)
        if len(test) == 0 or len(train) == 0:
            continue
        router = make_router(name, **{"seed": seed, **params}).fit(dataset.subset(train), features=_take(X, train))
        parts.append(predict(router, _take(X, test)))
        rows.append(test)
    if not parts:
        raise ConfigError(f"cross-validation of {name}: no fold has both training and test prompts")
    idx = np.concatenate(rows)
    quality, cost = dataset.quality[idx], dataset.cost[idx]
    points = sweep_lambda(Predictions.concat(parts), quality, cost, dataset.models)
    hull = upper_hull(np.array([p.point.cost for p in points]), np.array([p.point.quality for p in points]))
    singles = single_model_points(quality, cost)
    return aiq(hull, cost_range_of(np.array([p.cost for p in singles])))


def tune(name: str, dataset: RoutingDataset, X: Features, base_params: Mapping[str, Any],
         grid: Mapping[str, Sequence[Any]] | None = None, k: int = 5, seed: int = 0) -> TuneResult:
    """Grid search by k-fold CV; ``base_params`` are fixed, ``grid`` values vary."""
    grid = grid if grid is not None else DEFAULT_GRIDS.get(name)
    if not grid:
        raise ConfigError(f"--tune: router {name!r} has no default search grid; pass one with --grid "
                          f"(known defaults: {sorted(DEFAULT_GRIDS)})")
    scores = []
    for candidate in expand_grid(grid):
        params = {**base_params, **candidate}
        scores.append((params, cv_score(name, params, dataset, X, k=k, seed=seed)))
    best_params, best_score = max(scores, key=lambda s: s[1])
    return TuneResult(best_params, best_score, scores, folds=k)


def _take(X: Features, rows: np.ndarray) -> Features:
    if isinstance(X, np.ndarray):
        return X[rows]
    return [X[i] for i in rows]
