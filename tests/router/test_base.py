"""Router base behaviour shared by every router: fitting on data without costs, the prediction hooks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets.schema import RoutingDataset
from thalamus.router.base import Features, Router
from thalamus.router.registry import make_router


def test_dataset_without_costs_routes_on_quality() -> None:
    texts = ["add two numbers", "sum these values", "write a poem", "compose a sonnet"]
    ds = RoutingDataset("nocost", pd.DataFrame({"text": texts}), ["math", "poet"],
                        np.array([[1, 0], [1, 0], [0, 1], [0, 1.0]]), np.full((4, 2), np.nan))
    router = make_router("knn", embedder="hashing", k=1).fit(ds)
    np.testing.assert_array_equal(router.mean_cost_, [0.0, 0.0])
    assert router.cost_scale_ == 1.0
    assert router.route("write a poem").model == "poet"
    assert router.route("add two numbers").model == "math"


def test_unpriced_model_gets_the_mean_of_the_others() -> None:
    cost = np.array([[1.0, np.nan], [3.0, np.nan]])
    ds = RoutingDataset("half", pd.DataFrame({"text": ["a", "b"]}), ["m1", "m2"], np.ones((2, 2)), cost)
    router = make_router("best-single").fit(ds)
    np.testing.assert_array_equal(router.mean_cost_, [2.0, 2.0])


class Joint(Router):
    """Implements only ``_predict``: quality and cost from one pass, counted."""

    calls = 0

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        pass

    def _predict(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        Joint.calls += 1
        return np.full((len(X), 2), 0.25), np.full((len(X), 2), 7.0)


class Neither(Router):
    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        pass


def test_a_router_with_only_a_joint_prediction_answers_each_half_from_it() -> None:
    ds = RoutingDataset("two", pd.DataFrame({"text": ["a", "b"]}), ["m1", "m2"], np.ones((2, 2)), np.ones((2, 2)))
    router = Joint(embedder="hashing").fit(ds)
    X = router.features(["x", "y", "z"])
    np.testing.assert_array_equal(router.quality_from_features(X), np.full((3, 2), 0.25))
    np.testing.assert_array_equal(router.cost_from_features(X), np.full((3, 2), 7.0))  # not the mean cost 1.0
    Joint.calls = 0
    router.predict_from_features(X)
    assert Joint.calls == 1
    with pytest.raises(NotImplementedError, match="Neither implements neither _predict nor _predict_quality"):
        Neither(embedder="hashing").fit(ds).quality_from_features(X)
