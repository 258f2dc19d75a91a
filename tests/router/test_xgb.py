"""XGBoost router: classifier vs regressor per model, NaN rows left out, real-data skill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rbhelpers import brier, routerbench_slice, split

from thalamus.datasets.schema import RoutingDataset
from thalamus.router.base import Router
from thalamus.router.xgb import XGBRouter


def graded(n: int = 120, seed: int = 0) -> tuple[RoutingDataset, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    binary = (X[:, 0] > 0).astype(float)
    score = 1 / (1 + np.exp(-2 * X[:, 1]))  # graded quality in (0, 1)
    quality = np.c_[binary, score, np.full(n, 0.7)]
    quality[:10, 0] = np.nan
    ds = RoutingDataset("g", pd.DataFrame({"text": [f"t{i}" for i in range(n)]}), ["bin", "graded", "flat"],
                        quality, rng.random((n, 3)))
    return ds, X


def test_kinds_follow_the_labels_and_constant_models_need_no_booster(tmp_path: Path) -> None:
    ds, X = graded()
    router = XGBRouter(n_estimators=50, embedder="hashing").fit(ds, features=X)
    assert router.kinds_ == ["classifier", "regressor", "regressor"]
    assert router.boosters_[2] is None
    pred = router.quality_from_features(X)
    assert np.corrcoef(pred[:, 0], X[:, 0] > 0)[0, 1] > 0.9
    assert np.corrcoef(pred[:, 1], ds.quality[:, 1])[0, 1] > 0.9
    np.testing.assert_allclose(pred[:, 2], 0.7)
    loaded = Router.load(router.save(tmp_path / "x"))
    assert sorted(p.name for p in (tmp_path / "x" / "boosters").iterdir()) == ["model_0.ubj", "model_1.ubj"]
    np.testing.assert_array_equal(loaded.quality_from_features(X), pred)


def test_beats_per_model_means_on_real_data(data_dir: Path) -> None:
    train, Xtr, test, Xte = split(*routerbench_slice(data_dir))
    pred = XGBRouter(n_estimators=30, embedder="hashing").fit(train, features=Xtr).quality_from_features(Xte)
    constant = np.broadcast_to(np.nanmean(train.quality, axis=0), pred.shape)
    assert brier(pred, test.quality) < brier(constant, test.quality)


def test_one_prompt_at_a_time_goes_through_the_flat_forest_with_the_same_numbers(tmp_path: Path) -> None:
    ds, X = graded()
    router = XGBRouter(n_estimators=60, max_depth=5, embedder="hashing").fit(ds, features=X)
    batch = router.quality_from_features(X)  # 120 rows > FLAT_MAX_ROWS: xgboost itself
    singles = np.vstack([router.quality_from_features(X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(singles, batch, atol=1e-6)
    loaded = Router.load(router.save(tmp_path / "x"))
    np.testing.assert_allclose(loaded.quality_from_features(X[:5]), batch[:5], atol=1e-6)


def test_flat_forest_matches_xgboost_with_missing_values_and_identity_link() -> None:
    import xgboost as xgb

    from thalamus.router.forest import FlatForest

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take the saved default direction
    y = np.nan_to_num(X[:, 0]) * 2 + rng.normal(size=300)
    boosters = [xgb.train({"objective": obj, "max_depth": 6, "nthread": 1, "seed": 0},
                          xgb.DMatrix(X, label=label), 30)
                for obj, label in (("reg:squarederror", y), ("binary:logistic", (y > 0).astype(float)))]
    expected = np.c_[[b.inplace_predict(X) for b in boosters]].T
    np.testing.assert_allclose(FlatForest(boosters).predict(X), expected, atol=1e-5)
