"""Operating-point sweeps with real baseline routers on a small synthetic dataset."""

from __future__ import annotations

import numpy as np
import pytest

from thalamus.datasets.schema import RoutingDataset
from thalamus.eval import metrics as M
from thalamus.eval.sweep import lambda_grid, predict, sweep_lambda, sweep_two_model
from thalamus.router.baselines import BestSingleRouter, CheapestRouter, OracleRouter


def test_lambda_grid_is_increasing_inside_the_unit_interval_and_dense_at_both_ends() -> None:
    grid = lambda_grid()
    assert np.all(np.diff(grid) > 0)
    assert 0 < grid[0] < 1e-5 and 1 - 1e-5 < grid[-1] < 1
    assert (grid < 0.01).sum() >= 30 and (grid > 0.99).sum() >= 30


def test_best_single_router_walks_the_single_models(four_models: RoutingDataset) -> None:
    train, test = four_models.train_test(seed=0)
    router = BestSingleRouter().fit(train)
    points = sweep_lambda(predict(router, test.texts), test.quality, test.cost, test.models)
    singles = {(p.quality, p.cost) for p in M.single_model_points(test.quality, test.cost)}
    assert {(p.point.quality, p.point.cost) for p in points} <= singles
    assert len(points) >= 2
    # quality first: the training split's best model; cost first: the cheapest model
    train_best = int(np.argmax(np.nanmean(train.quality, axis=0)))
    assert points[0].point.quality == pytest.approx(test.quality[:, train_best].mean())
    assert points[-1].point.cost == pytest.approx(test.cost[:, int(np.argmin(train.cost.mean(0)))].mean())
    assert [p.knob for p in points] == sorted(p.knob for p in points)


def test_cheapest_router_has_one_point(four_models: RoutingDataset) -> None:
    train, test = four_models.train_test(seed=0)
    router = CheapestRouter().fit(train)
    points = sweep_lambda(predict(router, test.texts), test.quality, test.cost, test.models)
    assert len(points) == 1
    assert points[0].point.cost == pytest.approx(test.cost[:, 0].mean())


def test_oracle_router_reaches_the_per_query_oracle(four_models: RoutingDataset) -> None:
    _, test = four_models.train_test(seed=0)
    router = OracleRouter().fit(test)
    points = sweep_lambda(predict(router, test.texts), test.quality, test.cost, test.models)
    oracle = M.operating_point(test.quality, test.cost, M.per_query_oracle(test.quality, test.cost))
    assert points[0].point.quality == pytest.approx(oracle.quality)
    assert points[0].point.cost == pytest.approx(oracle.cost)
    hull = M.upper_hull(np.array([p.point.cost for p in points]), np.array([p.point.quality for p in points]))
    zero = M.zero_router(test.quality, test.cost)
    span = M.cost_range_of(test.cost.mean(axis=0))
    assert M.aiq(hull, span) > M.aiq(zero, span) + 0.05


def test_two_model_sweep(two_models: RoutingDataset) -> None:
    train, test = two_models.train_test(seed=0)
    strong, weak = M.strong_weak(test.quality, test.cost)
    assert test.models[strong] == "large"
    oracle = sweep_two_model(predict(OracleRouter().fit(test), test.texts), test.quality, test.cost, strong)
    flat = sweep_two_model(predict(BestSingleRouter().fit(train), test.texts), test.quality, test.cost, strong)
    assert oracle.quality[0] == pytest.approx(test.quality[:, weak].mean())
    assert oracle.quality[-1] == pytest.approx(test.quality[:, strong].mean())
    assert M.apgr(flat.call_share, flat.pgr) == pytest.approx(0.5, abs=1e-12)  # constant margin
    assert M.apgr(oracle.call_share, oracle.pgr) > 0.9
    cpt50 = M.cpt(oracle.call_share, oracle.pgr, 0.5)
    assert cpt50 is not None and cpt50 < 0.5
