"""``evaluate``: split, fit, sweep and score one router on one dataset, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.eval.harness import evaluate
from thalamus.eval.plots import plot_all, plot_dataset


def test_result_keys_and_references(four_models: RoutingDataset, result_keys: set[str]) -> None:
    res = evaluate("best-single", four_models, embedder="hashing")
    assert set(res) == result_keys
    json.dumps(res, allow_nan=False)
    _, test = four_models.train_test(seed=0)
    assert res["split"]["n_test"] == test.n_prompts
    assert res["split"]["n_train"] == four_models.n_prompts - test.n_prompts
    assert res["best_single"]["model"] == "large"
    assert res["best_single"]["quality"] == pytest.approx(test.quality[:, 3].mean())
    assert res["dataset_oracle"]["per_task"] == {"chat": "small", "code": "large"}
    assert res["oracle"]["quality"] >= res["dataset_oracle"]["quality"] >= res["best_single"]["quality"]
    assert res["random"]["quality"] == pytest.approx(test.quality.mean())
    assert res["cost_range"] == pytest.approx([test.cost[:, 0].mean(), test.cost[:, 3].mean()])
    # the best-single router only mixes whole models: never above the zero router
    assert res["aiq"] <= res["zero_router_aiq"] + 1e-12
    assert res["gap_closed"] == pytest.approx(0.0)
    assert res["cost_saving_at_best_single"] == pytest.approx(0.0)
    assert [b["label"] for b in res["quality_at_budget"]][-1] == "cost of large"
    assert res["apgr"] is None and res["two_model"] is False


def test_oracle_closes_the_gap(four_models: RoutingDataset) -> None:
    res = evaluate("oracle", four_models, embedder="hashing", budgets=[0.005])
    assert res["gap_closed"] == pytest.approx(1.0)
    assert res["quality_at_max"] == pytest.approx(res["oracle"]["quality"])
    assert res["aiq"] > res["zero_router_aiq"]
    assert res["cost_saving_at_best_single"] > 0.5
    assert res["quality_at_budget"][-1]["label"] == "$0.005"
    hull = res["hull"]
    assert np.all(np.diff(hull["cost"]) > 0) and np.all(np.diff(hull["quality"]) > 0)


def test_same_seed_same_numbers_other_seed_other_split(four_models: RoutingDataset) -> None:
    a = evaluate("random", four_models, embedder="hashing", seed=1)
    b = evaluate("random", four_models, embedder="hashing", seed=1)
    c = evaluate("random", four_models, embedder="hashing", seed=2)
    assert a == b
    assert a["oracle"] != c["oracle"]


def test_two_model_metrics(two_models: RoutingDataset) -> None:
    flat = evaluate("best-single", two_models, embedder="hashing")
    best = evaluate("oracle", two_models, embedder="hashing")
    assert flat["two_model"] and flat["strong"] == "large" and flat["weak"] == "small"
    assert flat["apgr"] == pytest.approx(0.5, abs=1e-12)
    assert flat["cpt_50"] == pytest.approx(0.5, abs=1 / flat["split"]["n_test"])
    assert best["apgr"] > 0.9 and best["cpt_80"] < flat["cpt_80"]
    assert best["pgr_curve"]["call_share"][0] == 0 and best["pgr_curve"]["call_share"][-1] == 1
    assert best["points"][0]["quality"] == pytest.approx(best["single_models"]["small"]["quality"])


def test_folds_pool_every_prompt_once(four_models: RoutingDataset) -> None:
    res = evaluate("best-single", four_models, embedder="hashing", folds=3)
    assert res["split"]["n_test"] == four_models.n_prompts
    assert res["split"]["n_train"] == 2 * four_models.n_prompts
    assert res["split"]["test_size"] is None and res["split"]["folds"] == 3


def test_incomplete_test_rows_are_dropped_and_own_split_is_used(four_models: RoutingDataset) -> None:
    ds = four_models
    ds.prompts["split"] = np.where(np.arange(ds.n_prompts) < 200, "train", "test")
    ds.quality[[201, 202, 5], 1] = np.nan
    res = evaluate("best-single", ds, embedder="hashing")
    assert res["split"]["n_test"] == 38 and res["split"]["n_test_incomplete_dropped"] == 2
    assert res["split"]["n_train"] == 200


def test_no_complete_test_row_is_an_error(four_models: RoutingDataset) -> None:
    four_models.quality[:, 0] = np.nan
    with pytest.raises(DataError, match="no test prompt"):
        evaluate("random", four_models, embedder="hashing")


def test_plots_are_written(tmp_path: Path, four_models: RoutingDataset, two_models: RoutingDataset) -> None:
    import matplotlib.image

    many = [evaluate(r, four_models, embedder="hashing") for r in ("random", "best-single", "oracle")]
    two = [evaluate(r, two_models, embedder="hashing") for r in ("best-single", "oracle")]
    paths = plot_all(many + two, tmp_path / "all.png")
    assert [p.name for p in paths] == ["all-synthetic.png", "all-synthetic-2.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    width = [matplotlib.image.imread(p).shape[1] for p in paths]
    assert width[1] > width[0]  # the two-model figure has a PGR panel beside the Pareto plot
    assert plot_dataset(two[:1], tmp_path / "one" / "two.png").is_file()
