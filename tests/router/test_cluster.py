"""Cluster-profile router: group profiles by hand, soft assignment, k-means fallback, errors, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rbhelpers import routerbench_slice, split

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.router.base import Router
from thalamus.router.cluster import ClusterRouter, shrunk_means


def blobs(tasks: list[str] | None, n: int = 60, seed: int = 0) -> tuple[RoutingDataset, np.ndarray]:
    """Prompts in len(set(tasks)) well-separated directions; model j is good on group j's prompts."""
    rng = np.random.default_rng(seed)
    names = sorted(set(tasks)) if tasks else ["g0", "g1", "g2"]
    group = np.arange(n) % len(names)
    X = np.eye(8)[group] * 5 + rng.normal(scale=0.3, size=(n, 8))
    quality = (group[:, None] == np.arange(len(names))[None, :]).astype(float)
    cost = np.tile(np.linspace(1.0, 2.0, len(names)), (n, 1)) * (1 + group[:, None])
    prompts = pd.DataFrame({"text": [f"p{i}" for i in range(n)]})
    if tasks:
        prompts["task"] = [names[g] for g in group]
    ds = RoutingDataset("blobs", prompts, [f"m{j}" for j in range(len(names))], quality, cost)
    return ds, X.astype(np.float32)


def test_shrunk_means_mask_missing_values_and_pull_toward_the_overall_mean() -> None:
    values = np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]])
    groups = np.array([0, 0, 1])
    overall = np.array([0.5, 0.5])
    np.testing.assert_allclose(shrunk_means(values, groups, 2, overall, prior=0.0), [[0.5, 1.0], [1.0, 1.0]])
    # group 0, model 0: (1 + 0 + 2 * 0.5) / (2 + 2); model 1 saw one value: (1 + 2 * 0.5) / (1 + 2)
    np.testing.assert_allclose(shrunk_means(values, groups, 2, overall, prior=2.0)[0], [0.5, 2 / 3])


def test_task_groups_give_each_prompt_its_task_profile() -> None:
    ds, X = blobs(["math", "code", "chat"])
    router = ClusterRouter(prior=0.0, embedder="hashing").fit(ds, features=X)
    assert router.group_names_ == ["chat", "code", "math"]
    # profiles are the per-task means: on its own task the matching model always answers well
    np.testing.assert_allclose(router.group_quality_, np.eye(3))
    probs = router.group_probabilities(X)
    assert probs.shape == (60, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    truth = np.asarray([router.group_names_.index(t) for t in ds.tasks])
    assert (probs.argmax(axis=1) == truth).all()
    q, c = router.predict_from_features(X)
    assert (q.argmax(axis=1) == ds.quality.argmax(axis=1)).all()
    np.testing.assert_allclose(c, probs @ router.group_cost_)


def test_two_groups_match_sklearns_probabilities() -> None:
    from sklearn.linear_model import LogisticRegression

    ds, X = blobs(["left", "right"], n=40)
    router = ClusterRouter(C=0.05, embedder="hashing").fit(ds, features=X)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected = LogisticRegression(C=0.05, max_iter=2000).fit(Xn, ds.tasks).predict_proba(Xn)
    np.testing.assert_allclose(router.group_probabilities(X), expected, atol=1e-6)


def test_without_tasks_auto_clusters_with_kmeans_and_task_mode_refuses() -> None:
    ds, X = blobs(None)
    router = ClusterRouter(n_clusters=3, prior=0.0, embedder="hashing").fit(ds, features=X)
    assert router.group_names_ == ["cluster-0", "cluster-1", "cluster-2"]
    # three clean blobs: every cluster is one model's home, so each prompt goes to its model
    assert (router.quality_from_features(X).argmax(axis=1) == ds.quality.argmax(axis=1)).all()
    with pytest.raises(DataError, match="blobs: cluster groups='task' needs at least two task labels"):
        ClusterRouter(groups="task", embedder="hashing").fit(ds, features=X)


def test_more_clusters_than_prompts_and_one_group_are_handled() -> None:
    ds, X = blobs(None, n=6)
    router = ClusterRouter(n_clusters=50, embedder="hashing").fit(ds, features=X)
    assert len(router.group_names_) <= 6
    single = ClusterRouter(n_clusters=1, prior=0.0, embedder="hashing").fit(ds, features=X)
    np.testing.assert_allclose(single.quality_from_features(X[:2]), np.tile(np.nanmean(ds.quality, axis=0), (2, 1)))


@pytest.mark.parametrize(("params", "message"), [
    ({"groups": "topic"}, "groups must be one of auto, task, kmeans"),
    ({"n_clusters": 0}, "n_clusters must be >= 1"),
    ({"C": 0.0}, "C must be > 0"),
    ({"prior": -1.0}, "prior must be >= 0"),
])
def test_bad_parameters_are_named(params: dict[str, object], message: str) -> None:
    ds, X = blobs(["a", "b"])
    with pytest.raises(ConfigError, match=message):
        ClusterRouter(embedder="hashing", **params).fit(ds, features=X)  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path: Path) -> None:
    ds, X = blobs(["a", "b", "c"])
    router = ClusterRouter(embedder="hashing").fit(ds, features=X)
    loaded = Router.load(router.save(tmp_path / "cluster"))
    assert isinstance(loaded, ClusterRouter) and loaded.group_names_ == router.group_names_
    for a, b in zip(router.predict_from_features(X), loaded.predict_from_features(X), strict=True):
        np.testing.assert_array_equal(a, b)


def test_real_data_groups_are_the_benchmarks(data_dir: Path) -> None:
    """routerbench_subset's three benchmarks become the groups, told apart on held-out prompts."""
    ds, X = routerbench_slice(data_dir)
    train, X_train, test, X_test = split(ds, X)
    router = ClusterRouter(embedder="hashing").fit(train, features=X_train)
    assert set(router.group_names_) == set(train.tasks)
    probs = router.group_probabilities(X_test)
    truth = np.asarray([router.group_names_.index(t) for t in test.tasks])
    assert (probs.argmax(axis=1) == truth).mean() > 0.95  # the three benchmarks are easy to tell apart
    # each task's profile equals that task's training means shrunk by 5 pseudo-prompts
    for g, task in enumerate(router.group_names_):
        rows = train.quality[train.tasks == task]
        n = np.isfinite(rows).sum(axis=0)
        overall = np.nanmean(train.quality, axis=0)
        np.testing.assert_allclose(router.group_quality_[g], (np.nansum(rows, axis=0) + 5 * overall) / (n + 5))
