"""Cluster-profile router: a prompt is routed by the group of training prompts it belongs to.

Training prompts are grouped by the dataset's ``task`` labels (``groups="task"``) or by
k-means on their embeddings (``groups="kmeans"``); ``auto`` uses the tasks when the dataset
names at least two, k-means otherwise. Each group gets a per-model profile: its mean quality
and mean cost, shrunk toward the model's overall mean by ``prior`` pseudo-prompts (NaN = not
observed is masked out). A multinomial logistic regression on the embedding gives
P(group | prompt), and the predicted quality and cost are the P-weighted profiles, so a prompt
between two groups gets a blend rather than a hard assignment.

This is cluster-based routing in the style of UniRoute (Jitkrittum et al. 2025), with
supervised groups where the data names them: on datasets made of many benchmarks, which
benchmark a prompt comes from tells more about which model wins than its nearest neighbours
do, because neighbours in embedding space cross task boundaries. Only the classifier's weights
and the profiles are stored; prediction is one matrix product and a softmax.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import softmax

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.router.base import Features, Router, observed_mean
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.knn import normalise

Grouping = Literal["auto", "task", "kmeans"]
GROUPINGS = ("auto", "task", "kmeans")


def shrunk_means(values: np.ndarray, groups: np.ndarray, n_groups: int, overall: np.ndarray,
                 prior: float) -> np.ndarray:
    """(n_groups, m) NaN-masked mean of ``values`` (n, m) per group, shrunk toward ``overall`` (m,)."""
    seen = np.isfinite(values)
    one_hot = np.zeros((len(values), n_groups))
    one_hot[np.arange(len(values)), groups] = 1.0
    total = one_hot.T @ np.where(seen, values, 0.0)
    count = one_hot.T @ seen.astype(np.float64)
    den = count + prior
    return np.where(den > 0, (total + prior * overall) / np.where(den > 0, den, 1.0), overall)


class ClusterRouter(Router):
    """Quality and cost of each model = its profile on the prompt's (soft-assigned) group."""

    name = "cluster"

    def __init__(self, groups: Grouping = "auto", n_clusters: int = 20, C: float = 10.0, prior: float = 5.0,
                 max_iter: int = 2000, embedder: str = DEFAULT_EMBEDDER, seed: int = 0) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.groups = groups
        self.n_clusters = n_clusters
        self.C = C
        self.prior = prior
        self.max_iter = max_iter

    def _check_params(self) -> None:
        if self.groups not in GROUPINGS:
            raise ConfigError(f"cluster: groups must be one of {', '.join(GROUPINGS)}, got {self.groups!r}")
        if self.n_clusters < 1:
            raise ConfigError(f"cluster: n_clusters must be >= 1, got {self.n_clusters}")
        if self.C <= 0:
            raise ConfigError(f"cluster: C must be > 0, got {self.C}")
        if self.prior < 0:
            raise ConfigError(f"cluster: prior must be >= 0, got {self.prior}")

    def _labels(self, emb: np.ndarray, dataset: RoutingDataset) -> tuple[list[str], np.ndarray]:
        """Group names and each training prompt's group index."""
        tasks = dataset.tasks.astype(str)
        named = np.unique(tasks[tasks != ""])
        use_tasks = self.groups == "task" or (self.groups == "auto" and len(named) >= 2)
        if use_tasks:
            if len(named) < 2:
                raise DataError(f"{dataset.name}: cluster groups='task' needs at least two task labels, "
                                f"found {len(named)}; use groups='kmeans'")
            names, index = np.unique(tasks, return_inverse=True)  # an unlabelled prompt forms group ''
            return [str(n) for n in names], index
        from sklearn.cluster import KMeans

        k = min(self.n_clusters, len(emb))
        index = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit_predict(emb)
        return [f"cluster-{i}" for i in range(k)], index

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        self._check_params()
        emb = normalise(np.asarray(X))
        names, index = self._labels(emb, dataset)
        present, index = np.unique(index, return_inverse=True)  # k-means may leave a cluster empty
        names = [names[i] for i in present]
        g = len(names)
        weights, bias = np.zeros((g, emb.shape[1])), np.zeros(g)
        if g >= 2:
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(emb, index)
            weights, bias = np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
            if g == 2:  # sklearn keeps one row for two classes: the logit of the second
                weights, bias = np.vstack([np.zeros_like(weights), weights]), np.r_[0.0, bias]
        self.group_names_: list[str] = names
        self.weights_: np.ndarray = weights
        self.bias_: np.ndarray = bias
        overall = observed_mean(dataset.quality)
        self.group_quality_: np.ndarray = shrunk_means(dataset.quality, index, g, overall, self.prior)
        self.group_cost_: np.ndarray = shrunk_means(dataset.cost, index, g, self.mean_cost_, self.prior)

    def group_probabilities(self, X: Features) -> np.ndarray:
        """(n, n_groups) P(group | prompt)."""
        self.check_fitted()
        return np.asarray(softmax(normalise(np.asarray(X)).astype(np.float64) @ self.weights_.T + self.bias_, axis=1))

    def _predict(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        p = self.group_probabilities(X)
        return p @ self.group_quality_, p @ self.group_cost_
