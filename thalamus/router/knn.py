"""k-nearest-neighbour router: a prompt is routed like the training prompts it resembles.

Embeddings are L2-normalised and searched by inner product (cosine similarity) in a faiss
index: exact (``IndexFlatIP``) below ``hnsw_threshold`` training prompts, HNSW above it.
A model's predicted quality on a prompt is the weighted mean of its observed quality on
the ``k`` neighbours (NaN = not observed is masked out), shrunk toward the model's global
mean by ``prior`` pseudo-neighbours so that few or dissimilar neighbours do not give
overconfident 0/1 estimates. Cost is predicted the same way from the neighbours' costs.
The index is saved with ``faiss.write_index``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError
from thalamus.router.base import Features, Router, observed_mean
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER

Weighting = Literal["uniform", "similarity", "softmax"]
INDEX_FILE = "index.faiss"


def normalise(X: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, float32 and C-contiguous as faiss wants."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.maximum(norms, 1e-12))


def neighbour_weights(sims: np.ndarray, weighting: str, temperature: float) -> np.ndarray:
    """Non-negative weights (n, k) from cosine similarities (n, k)."""
    if weighting == "uniform":
        return np.ones_like(sims, dtype=np.float64)
    if weighting == "similarity":
        return np.maximum(sims.astype(np.float64), 0.0) + 1e-6
    if weighting == "softmax":
        z = (sims.astype(np.float64) - sims.max(axis=1, keepdims=True)) / temperature
        return np.exp(z)
    raise ConfigError(f"knn weighting must be 'uniform', 'similarity' or 'softmax', got {weighting!r}")


def masked_weighted_mean(values: np.ndarray, weights: np.ndarray, prior_mean: np.ndarray,
                         prior: float) -> np.ndarray:
    """Weighted mean over axis 1 of (n, k, m) values, NaN masked, shrunk to prior_mean (m,).

    With weights normalised to sum to k per row, ``prior`` acts as that many pseudo-neighbours
    carrying the global mean; rows with no observed neighbour get the global mean.
    """
    observed = ~np.isnan(values)
    w = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12) * weights.shape[1]
    w3 = w[:, :, None] * observed
    num = np.einsum("nkm,nkm->nm", w3, np.nan_to_num(values)) + prior * prior_mean
    den = w3.sum(axis=1) + prior
    safe = np.where(den > 0, den, 1.0)
    return np.asarray(np.where(den > 0, num / safe, prior_mean), dtype=np.float64)


class KNNRouter(Router):
    """Quality and cost of each model = (weighted) mean over the k most similar training prompts."""

    name = "knn"

    def __init__(self, k: int = 100, weighting: Weighting = "similarity", temperature: float = 0.05,
                 prior: float = 1.0, hnsw_threshold: int = 50_000, hnsw_m: int = 32, ef_search: int = 128,
                 embedder: str = DEFAULT_EMBEDDER, seed: int = 0) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.k = k
        self.weighting = weighting
        self.temperature = temperature
        self.prior = prior
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search

    def _check_params(self) -> None:
        if self.k < 1:
            raise ConfigError(f"knn: k must be >= 1, got {self.k}")
        if self.prior < 0:
            raise ConfigError(f"knn: prior must be >= 0, got {self.prior}")
        if self.temperature <= 0:
            raise ConfigError(f"knn: temperature must be > 0, got {self.temperature}")
        neighbour_weights(np.zeros((1, 1)), self.weighting, self.temperature)

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        self._check_params()
        emb = normalise(np.asarray(X))
        self.index_: Any = self._build_index(emb)
        self.train_quality_: np.ndarray = np.asarray(dataset.quality, dtype=np.float64)
        self.train_cost_: np.ndarray = np.asarray(dataset.cost, dtype=np.float64)
        self.quality_mean_: np.ndarray = observed_mean(dataset.quality)

    def _build_index(self, emb: np.ndarray) -> Any:
        import faiss

        d = emb.shape[1]
        index: Any
        if len(emb) >= self.hnsw_threshold:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
        else:
            index = faiss.IndexFlatIP(d)
        index.add(emb)
        return index

    # -- neighbours ----------------------------------------------------------------------
    def neighbours(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, row indices) of the k nearest training prompts, each (n, k)."""
        self.check_fitted()
        k = min(self.k, int(self.index_.ntotal))
        sims, idx = self.index_.search(normalise(np.asarray(X)), k)
        return sims, idx

    def _weights(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour weights (zero where HNSW returned fewer than k hits) and safe row indices."""
        sims, idx = self.neighbours(X)
        valid = idx >= 0
        return neighbour_weights(sims, self.weighting, self.temperature) * valid, np.where(valid, idx, 0)

    def _predict(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        w, rows = self._weights(X)  # one search for both
        return (masked_weighted_mean(self.train_quality_[rows], w, self.quality_mean_, self.prior),
                masked_weighted_mean(self.train_cost_[rows], w, self.mean_cost_, 0.0))

    # -- persistence ---------------------------------------------------------------------
    def _extra_attributes(self) -> tuple[str, ...]:
        return ("index_",)

    def _save_extra(self, directory: Path) -> None:
        import faiss

        faiss.write_index(self.index_, str(directory / INDEX_FILE))

    def _load_extra(self, directory: Path) -> None:
        import faiss

        self.index_ = faiss.read_index(str(directory / INDEX_FILE))
        if hasattr(self.index_, "hnsw"):
            self.index_.hnsw.efSearch = self.ef_search
