"""The baselines on the real shared datasets: the references order as they must."""

from __future__ import annotations

from pathlib import Path

import pytest

from thalamus.datasets.registry import load_dataset
from thalamus.eval.harness import evaluate


def test_routerbench_subset_baselines(data_dir: Path) -> None:
    ds = load_dataset("routerbench_subset")
    best = evaluate("best-single", ds, embedder="hashing")
    oracle = evaluate("oracle", ds, embedder="hashing")
    cheap = evaluate("cheapest", ds, embedder="hashing")
    assert len(best["models"]) == 11
    assert best["split"]["n_test"] + best["split"]["n_test_incomplete_dropped"] == 947  # RouterBench's split
    # the cost range runs from the cheapest to the dearest model's mean cost per call on the test prompts
    test = ds.train_test()[1].complete_rows()
    mean_cost = dict(zip(test.models, test.cost.mean(axis=0), strict=True))
    assert best["cost_range"] == pytest.approx([8.1084e-05, 5.0030e-03], rel=1e-4)
    assert best["cost_range"] == pytest.approx([mean_cost["mistralai/mistral-7b-chat"],
                                                mean_cost["gpt-4-1106-preview"]], rel=1e-12)
    assert best["best_single"]["model"] == "gpt-4-1106-preview"
    assert oracle["oracle"]["quality"] > best["dataset_oracle"]["quality"] >= best["best_single"]["quality"]
    # a router that mixes whole models never beats the zero router; the oracle beats it by far
    assert best["aiq"] <= best["zero_router_aiq"] + 1e-12 < oracle["aiq"] - 0.1
    assert oracle["gap_closed"] == pytest.approx(1.0)
    assert oracle["cost_saving_at_best_single"] > 0.9
    assert cheap["aiq"] == pytest.approx(cheap["quality_at_max"])  # one point, held across the range
    assert cheap["cost_saving_at_best_single"] is None


def test_routellm_gsm8k_two_model_baselines(data_dir: Path) -> None:
    ds = load_dataset("routellm_gsm8k")
    flat = evaluate("best-single", ds, embedder="hashing")
    oracle = evaluate("oracle", ds, embedder="hashing")
    assert flat["two_model"] and flat["strong"] == "gpt-4-1106-preview"
    assert flat["apgr"] == pytest.approx(0.5, abs=1e-12)
    assert oracle["apgr"] > 1.0  # the oracle sends only the prompts where the strong model helps
    assert oracle["cpt_80"] < 0.3
