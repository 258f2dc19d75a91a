"""A dataset without any cost (allowed by the user formats) is evaluated on quality alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.gateway.gwhelpers import synthetic_dataset
from thalamus.errors import DataError
from thalamus.eval.harness import evaluate


def test_quality_only_dataset_is_scored_on_quality_metrics() -> None:
    base = synthetic_dataset(120)
    ds = dataclasses.replace(base, cost=np.full_like(base.cost, np.nan))
    res = evaluate("knn", ds, params={"k": 10}, folds=3, embedder="hashing")
    assert res["cost_metrics_skipped"] is True
    assert res["aiq"] is None and res["cost_saving_at_best_single"] is None and res["cost_at_max"] is None
    assert res["split"]["n_test"] == 120 and res["split"]["n_test_incomplete_dropped"] == 0
    assert res["best_single"]["model"] == "strong"  # highest mean quality
    assert 0.0 <= res["quality_at_max"] <= res["oracle"]["quality"]
    assert res["gap_closed"] is not None


def test_rows_without_quality_are_dropped_and_counted() -> None:
    base = synthetic_dataset(90)
    quality = base.quality.copy()
    quality[:10, 1] = np.nan
    ds = dataclasses.replace(base, quality=quality, cost=np.full_like(base.cost, np.nan))
    res = evaluate("knn", ds, params={"k": 10}, folds=3, embedder="hashing")
    assert res["split"]["n_test_incomplete_dropped"] == 10 and res["split"]["n_test"] == 80
    empty = dataclasses.replace(ds, quality=np.full_like(quality, np.nan))
    with pytest.raises(DataError, match="every model's quality observed"):
        evaluate("knn", empty, params={"k": 10}, folds=3, embedder="hashing")
