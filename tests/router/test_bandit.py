"""Contextual bandits: exact online updates, exploration, probabilities, learning from feedback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.router.bandit import LinUCBRouter, ThompsonRouter
from thalamus.router.policy import Knob


def two_clusters(n: int = 40, seed: int = 0) -> tuple[RoutingDataset, np.ndarray]:
    """Cluster A: only model 'big' is right; cluster B: both are right ('small' is cheaper)."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal([3, 0, 0], 0.3, (n, 3)), rng.normal([0, 3, 0], 0.3, (n, 3))]).astype(np.float32)
    quality = np.vstack([np.tile([0.0, 1.0], (n, 1)), np.ones((n, 2))])
    cost = np.tile([0.001, 0.01], (2 * n, 1))
    texts = [f"prompt {i}" for i in range(2 * n)]
    return RoutingDataset("clusters", pd.DataFrame({"text": texts}), ["small", "big"], quality, cost), X


def test_partial_fit_matches_the_batch_posterior_and_touches_only_the_chosen_arm() -> None:
    ds, X = two_clusters()
    router = LinUCBRouter(n_components=None, ridge=2.0, embedder="hashing").fit(ds.subset(range(10)),
                                                                                features=X[:10])
    before = router.A_inv_.copy()
    router.partial_fit([(X[50], "big", 1.0, 0.01), (X[60], 1, 0.0, 0.02)])
    np.testing.assert_array_equal(router.A_inv_[0], before[0])  # 'small' got no feedback
    Z = router.context(np.vstack([X[:10], X[[50, 60]]]))
    expected = np.linalg.inv(2.0 * np.eye(Z.shape[1]) + Z.T @ Z)
    np.testing.assert_allclose(router.A_inv_[1], expected, rtol=1e-8, atol=1e-10)
    assert router.counts_.tolist() == [10, 12] and router.n_updates_ == 2


def test_partial_fit_rejects_unknown_models_and_missing_outcomes() -> None:
    ds, X = two_clusters()
    router = LinUCBRouter(embedder="hashing").fit(ds, features=X)
    with pytest.raises(DataError, match="unknown model 'huge'"):
        router.partial_fit([(X[0], "huge", 1.0, 0.0)])
    with pytest.raises(DataError, match="NaN"):
        router.partial_fit([(X[0], "big", float("nan"), 0.0)])


def test_linucb_explores_an_arm_it_knows_nothing_about() -> None:
    ds, X = two_clusters()
    warm = ds.subset(range(40, 80))  # cluster B only, where 'small' is as good and cheaper
    greedy = LinUCBRouter(alpha=0.0, n_components=None, embedder="hashing").fit(warm, features=X[40:])
    curious = LinUCBRouter(alpha=5.0, n_components=None, embedder="hashing").fit(warm, features=X[40:])
    far = np.array([[0.0, 0.0, 6.0]], dtype=np.float32)
    knob = Knob("wtp", 1.0)
    assert greedy.route_features(X[40:41], knob).model == "small"
    d = curious.route_features(far, knob)
    assert d.probability == 1.0 and d.extra["explored_quality"] > d.quality


def test_thompson_probability_is_estimated_and_reproducible() -> None:
    ds, X = two_clusters()
    router = ThompsonRouter(v=2.0, n_components=None, embedder="hashing").fit(ds.subset(range(0, 80, 8)),
                                                                              features=X[::8])
    a = router.route_features(X[5:6], Knob("wtp", 0.05))
    b = router.route_features(X[5:6], Knob("wtp", 0.05))
    assert a.to_dict() == b.to_dict() and 0 < a.probability < 1
    router.partial_fit([(X[5], a.model, 1.0, 0.01)])  # a new state draws anew, deterministically
    assert router.n_updates_ == 1


def test_bandit_feedback_teaches_it_which_model_to_use() -> None:
    ds, X = two_clusters(n=60)
    rng = np.random.default_rng(1)
    router = LinUCBRouter(alpha=0.3, n_components=None, embedder="hashing").fit(ds.subset([0, 60]),
                                                                                features=X[[0, 60]])
    knob = Knob("wtp", 0.05)  # 0.009 extra cost is worth it only when 'big' adds quality
    picks = []
    for row in rng.permutation(120).tolist() * 2:
        d = router.route_features(X[row : row + 1], knob)
        router.partial_fit([(X[row], d.index, ds.quality[row, d.index], ds.cost[row, d.index])])
        picks.append((row < 60, d.model))
    late = picks[-120:]
    assert np.mean([m == "big" for a, m in late if a]) > 0.9
    assert np.mean([m == "small" for a, m in late if not a]) > 0.9
    q = router.quality_from_features(X[[0, 70]])
    assert q[0, 1] > 0.8 and q[0, 0] < 0.3 and q[1, 0] > 0.7
