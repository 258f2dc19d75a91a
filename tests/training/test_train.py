"""train() and `thalamus train`: artifacts that load, CV tuning, parameter typing, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets.registry import load_dataset
from thalamus.router.base import Router
from thalamus.training.train import coerce_params, train


def test_train_writes_a_loadable_artifact_with_its_provenance(data_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset("routerbench_subset", data_dir)
    ds = ds.subset(np.arange(0, ds.n_prompts, 8))
    result = train("knn", {"k": "15", "weighting": "uniform"}, ds, tmp_path / "knn",
                   embedder="hashing", seed=3)
    assert result.params["k"] == 15 and result.params["seed"] == 3 and len(result.version) == 12
    info = json.loads((tmp_path / "knn" / "training.json").read_text())
    assert info["rows"] == ds.n_prompts and info["params"]["weighting"] == "uniform"
    curve = json.loads((tmp_path / "knn" / "pareto.json").read_text())  # the dashboard's offline curve
    assert curve["split"] == "train" and curve["n"] == ds.n_prompts and curve["models"] == ds.models
    frontier = curve["frontier"]
    assert 1 <= len(frontier["cost"]) == len(frontier["quality"]) <= len(curve["points"])
    assert frontier["cost"] == sorted(frontier["cost"]) and frontier["quality"] == sorted(frontier["quality"])
    loaded = Router.load(tmp_path / "knn")
    np.testing.assert_array_equal(loaded.predict_quality(ds.texts[:5]), result.router.predict_quality(ds.texts[:5]))


def test_coerce_params_types_cli_strings_like_the_defaults() -> None:
    assert coerce_params("knn", {"k": "7", "prior": "0.5", "weighting": "softmax"}) == {
        "k": 7, "prior": 0.5, "weighting": "softmax"}
    assert coerce_params("linucb", {"n_components": "none", "wtp": "0.01"}) == {"n_components": None,
                                                                                 "wtp": 0.01}


def test_cli_train_with_grid_tunes_and_prints_a_summary(data_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "art"
    result = runner.invoke(build_app(), ["train", "knn", "--data", "routerbench_subset", "--out", str(out),
                                         "--embedder", "hashing", "--grid", "k=3,30", "--folds", "3"])
    assert result.exit_code == 0, result.output
    assert "cv {'k': 30" in result.output and "artifact" in result.output
    info = json.loads((out / "training.json").read_text())
    assert info["tuning"]["best_params"]["k"] in (3, 30) and len(info["tuning"]["scores"]) == 2
    assert (out / "index.faiss").exists()


def test_cli_rejects_unknown_parameters_by_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["train", "knn", "--data", "routerbench_subset", "--out",
                                              str(tmp_path / "x"), "--embedder", "hashing", "--param", "kk=3"])
    assert result.exit_code != 0
    assert "kk" in str(result.exception) or "kk" in result.output
