"""CARROT: price x token cost model, observed-cost regression, estimator choice, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets.schema import Price, RoutingDataset
from thalamus.errors import ConfigError
from thalamus.router.base import Router
from thalamus.router.carrot import CarrotRouter


def priced(n: int = 200, seed: int = 0) -> tuple[RoutingDataset, np.ndarray]:
    """Output length is driven by feature 0; input length by feature 1; costs follow the prices."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    out_tokens = np.exp(5 + 0.8 * X[:, :1]) * np.array([1.0, 2.0])
    in_tokens = np.exp(4 + 0.5 * X[:, 1])
    prices = {"a": Price(1.0, 2.0), "b": Price(10.0, 30.0)}
    p_in, p_out = np.array([1.0, 10.0]), np.array([2.0, 30.0])
    cost = (in_tokens[:, None] * p_in + out_tokens * p_out) / 1e6
    quality = (rng.random((n, 2)) < [0.4, 0.8]).astype(float)
    ds = RoutingDataset("priced", pd.DataFrame({"text": [f"t{i}" for i in range(n)]}), ["a", "b"],
                        quality, cost, output_tokens=out_tokens, prices=prices)
    return ds, X.astype(np.float32)


def test_expected_cost_is_price_times_predicted_tokens(tmp_path: Path) -> None:
    ds, X = priced()
    router = CarrotRouter(estimator="linear", cost_alpha=0.01, embedder="hashing").fit(ds, features=X)
    assert router.uses_prices_
    tokens = router.predicted_output_tokens(X)
    assert np.median(np.abs(np.log(tokens) - np.log(ds.output_tokens))) < 0.05
    cost = router.cost_from_features(X)
    assert np.median(np.abs(cost / ds.cost - 1)) < 0.05
    loaded = Router.load(router.save(tmp_path / "c"))
    np.testing.assert_array_equal(loaded.cost_from_features(X), cost)


def test_without_prices_observed_costs_are_regressed_without_downward_bias() -> None:
    ds, X = priced()
    ds.prices, ds.output_tokens = {}, None
    router = CarrotRouter(estimator="knn", k=10, embedder="hashing").fit(ds, features=X)
    assert not router.uses_prices_
    cost = router.cost_from_features(X)
    np.testing.assert_allclose(cost.mean(axis=0), ds.cost.mean(axis=0), rtol=0.1)


def test_ensemble_averages_its_estimators(tmp_path: Path) -> None:
    ds, X = priced()
    ens = CarrotRouter(estimator="ensemble", k=10, n_estimators=20, embedder="hashing").fit(ds, features=X)
    parts = [CarrotRouter(estimator=e, k=10, n_estimators=20, embedder="hashing").fit(ds, features=X)
             for e in ("knn", "xgb", "linear")]
    expected = np.mean([p.quality_from_features(X) for p in parts], axis=0)
    np.testing.assert_allclose(ens.quality_from_features(X), expected, atol=1e-12)
    loaded = Router.load(ens.save(tmp_path / "e"))
    assert sorted(loaded.sub_routers_) == ["knn", "xgb"]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(loaded.quality_from_features(X), ens.quality_from_features(X))


def test_unknown_estimator_is_named() -> None:
    ds, X = priced()
    with pytest.raises(ConfigError, match="estimator must be one of"):
        CarrotRouter(estimator="forest", embedder="hashing").fit(ds, features=X)  # type: ignore[arg-type]
