"""Reference routers: random, best single model, cheapest model, and the per-query oracle.

They follow the same contract as learned routers so the evaluation harness treats every
router alike. The oracle reads the true outcomes of the prompts it was fitted on and
refuses any other prompt: it is an upper bound for evaluation, never a serving router.
"""

from __future__ import annotations

import numpy as np

from thalamus.datasets.schema import RoutingDataset, stable_hash
from thalamus.errors import DataError
from thalamus.router.base import Features, Router, observed_mean


def _row_seed(seed: int, text_hash: str) -> int:
    return (seed * 1_000_003 + int(text_hash[:12], 16)) % 2**32


class RandomRouter(Router):
    """Picks a model uniformly at random per prompt (seeded by the prompt text)."""

    name = "random"
    uses_embeddings = False

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        return None

    def _predict_quality(self, X: Features) -> np.ndarray:
        m = len(self.models_)
        out = np.empty((len(X), m))
        for i, text in enumerate(X):
            rng = np.random.default_rng(_row_seed(self.seed, stable_hash(str(text))))
            out[i] = np.eye(m)[rng.integers(m)]  # one-hot: the random pick wins at any knob
        return out

    def _predict_cost(self, X: Features) -> np.ndarray:
        return np.zeros((len(X), len(self.models_)))


class BestSingleRouter(Router):
    """Always the model with the highest mean quality on the training split (cheaper on ties).

    Predicts every model's training mean quality and cost for every prompt, so under a
    cost-leaning knob it walks down the single models' own frontier.
    """

    name = "best-single"
    uses_embeddings = False

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        self.mean_quality_: np.ndarray = observed_mean(dataset.quality, fill=0.0)

    def _predict_quality(self, X: Features) -> np.ndarray:
        return np.broadcast_to(self.mean_quality_, (len(X), len(self.models_))).copy()


class CheapestRouter(Router):
    """Always the model with the lowest mean cost on the training split."""

    name = "cheapest"
    uses_embeddings = False

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        return None

    def _predict_quality(self, X: Features) -> np.ndarray:
        return np.zeros((len(X), len(self.models_)))  # equal quality: the policy takes the cheapest


class OracleRouter(Router):
    """Per-query oracle: the true best model, cheapest among ties. Evaluation only."""

    name = "oracle"
    uses_embeddings = False

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        self.hashes_: list[str] = [stable_hash(t) for t in dataset.texts]
        self.quality_: np.ndarray = np.nan_to_num(dataset.quality, nan=0.0)
        self.cost_: np.ndarray = np.nan_to_num(dataset.cost, nan=np.inf)

    def _rows(self, X: Features) -> np.ndarray:
        index = {h: i for i, h in enumerate(self.hashes_)}
        rows = []
        for text in X:
            h = stable_hash(str(text))
            if h not in index:
                raise DataError("the oracle router only knows the prompts it was fitted on; "
                                f"unknown prompt {str(text)[:60]!r}")
            rows.append(index[h])
        return np.asarray(rows, dtype=int)

    def _predict(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(X)
        return np.asarray(self.quality_)[rows], np.asarray(self.cost_)[rows]
