"""Several xgboost boosters flattened into numpy arrays, for routing one prompt at a time.

Each ``Booster.inplace_predict`` call costs about 0.35 ms of fixed overhead on these CPUs, so
a router with one booster per backend model spends ~4 ms per single-prompt prediction in call
overhead alone. ``FlatForest`` reads the boosters' own JSON dump (the trees, thresholds and base
score xgboost saved) once and walks every tree of every model at the same time with vectorised
numpy indexing. It follows xgboost's rules: go left when ``x < threshold`` (compared in float32),
the saved default direction for a missing value, the sum of the reached leaves plus the base
margin, then the objective's inverse link. Predictions match ``inplace_predict`` to float32
rounding; a test checks this.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

LOGISTIC = {"binary:logistic", "reg:logistic"}
IDENTITY = {"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror"}


def _base_score(learner: dict[str, Any]) -> float:
    raw = str(learner["learner_model_param"]["base_score"]).strip("[]")
    return float(raw.split(",")[0])


class FlatForest:
    """All trees of a list of single-output gbtree boosters as padded arrays (trees x nodes)."""

    def __init__(self, boosters: list[Any]) -> None:
        trees: list[dict[str, Any]] = []
        owner: list[int] = []
        self.base_margin = np.zeros(len(boosters))
        self.logistic = np.zeros(len(boosters), dtype=bool)
        for j, booster in enumerate(boosters):
            learner = json.loads(booster.save_raw("json"))["learner"]
            objective = learner["objective"]["name"]
            if objective not in LOGISTIC | IDENTITY or learner["gradient_booster"]["name"] != "gbtree":
                raise ValueError(f"FlatForest supports gbtree with {sorted(LOGISTIC | IDENTITY)}, got {objective}")
            base = _base_score(learner)
            self.logistic[j] = objective in LOGISTIC
            self.base_margin[j] = np.log(base / (1 - base)) if self.logistic[j] else base
            model_trees = learner["gradient_booster"]["model"]["trees"]
            trees += model_trees
            owner += [j] * len(model_trees)
        width = max(len(t["left_children"]) for t in trees)
        shape = (len(trees), width)
        self.feature = np.zeros(shape, dtype=np.int64)
        self.threshold = np.zeros(shape, dtype=np.float32)
        self.left = np.zeros(shape, dtype=np.int64)
        self.right = np.zeros(shape, dtype=np.int64)
        self.default_left = np.zeros(shape, dtype=bool)
        self.is_leaf = np.ones(shape, dtype=bool)
        for t, tree in enumerate(trees):
            n = len(tree["left_children"])
            left = np.asarray(tree["left_children"], dtype=np.int64)
            self.is_leaf[t, :n] = left == -1
            self.left[t, :n] = np.where(left == -1, 0, left)
            self.right[t, :n] = np.maximum(np.asarray(tree["right_children"], dtype=np.int64), 0)
            self.feature[t, :n] = tree["split_indices"]
            self.threshold[t, :n] = tree["split_conditions"]  # a leaf's value sits here too
            self.default_left[t, :n] = np.asarray(tree["default_left"], dtype=bool)
        self.depth = self._max_depth()
        self._rows = np.arange(len(trees))
        self.owner = np.zeros((len(trees), len(boosters)))  # one-hot: which model each tree belongs to
        self.owner[self._rows, owner] = 1.0

    def _max_depth(self) -> int:
        depth = np.zeros(self.feature.shape, dtype=np.int64)
        for t in range(self.feature.shape[0]):  # children have larger ids than their parents
            for node in np.flatnonzero(~self.is_leaf[t]):
                depth[t, self.left[t, node]] = depth[t, self.right[t, node]] = depth[t, node] + 1
        return int(depth.max())

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n_rows, n_models) predictions, as each booster's ``inplace_predict`` would give."""
        X = np.asarray(X, dtype=np.float32)
        node = np.zeros((len(X), len(self._rows)), dtype=np.int64)
        rows = np.arange(len(X))[:, None]
        for _ in range(self.depth):
            value = X[rows, self.feature[self._rows, node]]
            go_left = np.where(np.isnan(value), self.default_left[self._rows, node],
                               value < self.threshold[self._rows, node])
            child = np.where(go_left, self.left[self._rows, node], self.right[self._rows, node])
            node = np.where(self.is_leaf[self._rows, node], node, child)
        margin = self.threshold[self._rows, node].astype(np.float64) @ self.owner + self.base_margin
        return np.where(self.logistic, 1.0 / (1.0 + np.exp(-margin)), margin)
