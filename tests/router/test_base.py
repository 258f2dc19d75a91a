"""Router base behaviour shared by every router: fitting on data without costs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from thalamus.datasets.schema import RoutingDataset
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
