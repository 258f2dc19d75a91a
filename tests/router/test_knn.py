"""kNN router: exact neighbour arithmetic, NaN masking, HNSW, cost, real-data skill, CV tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rbhelpers import brier, routerbench_slice, split

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError
from thalamus.router.base import Router
from thalamus.router.knn import KNNRouter
from thalamus.training.cv import tune


def tiny() -> tuple[RoutingDataset, np.ndarray]:
    """Four prompts on the unit circle; quality and cost chosen so means are easy by hand."""
    angles = np.deg2rad([0, 10, 90, 180])
    X = np.c_[np.cos(angles), np.sin(angles)].astype(np.float32)
    quality = np.array([[1.0, 0.0], [0.0, np.nan], [1.0, 1.0], [0.0, 1.0]])
    cost = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]])
    ds = RoutingDataset("tiny", pd.DataFrame({"text": ["a", "b", "c", "d"]}), ["m0", "m1"], quality, cost)
    return ds, X


def test_uniform_mean_over_k_neighbours_masks_missing_quality() -> None:
    ds, X = tiny()
    router = KNNRouter(k=2, weighting="uniform", prior=0.0, embedder="hashing").fit(ds, features=X)
    q = router.quality_from_features(np.array([[1.0, 0.05]]))  # nearest: rows 0 and 1
    assert q[0, 0] == pytest.approx(0.5)
    assert q[0, 1] == pytest.approx(0.0)  # row 1's model m1 is NaN: only row 0 counts
    c = router.cost_from_features(np.array([[2.0, 0.1]]))  # scale does not matter (normalised)
    np.testing.assert_allclose(c[0], [2.0, 20.0])


def test_prior_shrinks_toward_the_global_mean() -> None:
    ds, X = tiny()
    router = KNNRouter(k=1, weighting="uniform", prior=1.0, embedder="hashing").fit(ds, features=X)
    q = router.quality_from_features(np.array([[0.0, 1.0]]))  # nearest: row 2 (1, 1)
    global_mean = np.array([0.5, 2 / 3])
    np.testing.assert_allclose(q[0], (np.array([1.0, 1.0]) + global_mean) / 2)


def test_similarity_weighting_favours_the_closer_neighbour() -> None:
    ds, X = tiny()
    router = KNNRouter(k=2, weighting="softmax", temperature=0.001, prior=0.0,
                       embedder="hashing").fit(ds, features=X)
    q = router.quality_from_features(np.array([[np.cos(0.02), np.sin(0.02)]]))  # much closer to row 0
    assert q[0, 0] > 0.9


def test_hnsw_above_threshold_matches_exact_search_and_survives_save(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    ds = RoutingDataset("r", pd.DataFrame({"text": [f"p{i}" for i in range(300)]}), ["a", "b"],
                        (rng.random((300, 2)) < 0.5).astype(float), rng.random((300, 2)))
    exact = KNNRouter(k=10, embedder="hashing").fit(ds, features=X)
    approx = KNNRouter(k=10, hnsw_threshold=100, ef_search=300, embedder="hashing").fit(ds, features=X)
    assert type(approx.index_).__name__ == "IndexHNSWFlat" and type(exact.index_).__name__ == "IndexFlatIP"
    Q = rng.normal(size=(20, 16)).astype(np.float32)
    np.testing.assert_allclose(approx.quality_from_features(Q), exact.quality_from_features(Q), atol=1e-9)
    loaded = Router.load(approx.save(tmp_path / "hnsw"))
    assert (tmp_path / "hnsw" / "index.faiss").exists()
    np.testing.assert_array_equal(loaded.quality_from_features(Q), approx.quality_from_features(Q))


def test_bad_parameters_name_the_parameter() -> None:
    ds, X = tiny()
    with pytest.raises(ConfigError, match="weighting"):
        KNNRouter(weighting="cosine", embedder="hashing").fit(ds, features=X)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be"):
        KNNRouter(k=0, embedder="hashing").fit(ds, features=X)


def test_beats_per_model_means_on_real_data(data_dir: Path) -> None:
    train, Xtr, test, Xte = split(*routerbench_slice(data_dir))
    router = KNNRouter(k=40, embedder="hashing").fit(train, features=Xtr)
    pred = router.quality_from_features(Xte)
    constant = np.broadcast_to(np.nanmean(train.quality, axis=0), pred.shape)
    assert brier(pred, test.quality) < brier(constant, test.quality)
    # neighbour costs track per-prompt cost (MBPP answers are long) better than model means
    cost = router.cost_from_features(Xte)
    err = np.abs(np.log(cost) - np.log(test.cost)).mean()
    err_mean = np.abs(np.log(router.mean_cost_) - np.log(test.cost)).mean()
    assert err < 0.8 * err_mean


def test_cv_tuning_picks_k_from_the_grid(data_dir: Path) -> None:
    ds, X = routerbench_slice(data_dir)
    result = tune("knn", ds, X, {"embedder": "hashing"}, {"k": [1, 40]}, k=3)
    assert [s[0]["k"] for s in result.scores] == [1, 40]
    assert result.best_params["k"] == 40  # one noisy neighbour is worse than forty
    assert 0.5 < result.best_score < 1.0 and "AIQ" in result.objective


def test_refitting_forgets_the_cached_search() -> None:
    ds, X = tiny()
    router = KNNRouter(k=1, weighting="uniform", prior=0.0, embedder="hashing").fit(ds, features=X)
    query = np.array([[1.0, 0.0]])
    assert router.quality_from_features(query)[0].tolist() == [1.0, 0.0]  # row 0
    router.fit(ds.subset([2, 3]), features=X[[2, 3]])
    assert router.quality_from_features(query)[0, 0] == 1.0  # row 2 now: (1, 1)
    assert router.quality_from_features(query)[0, 1] == 1.0
