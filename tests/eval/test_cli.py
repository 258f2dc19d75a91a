"""``thalamus eval`` end to end in a temp dir, and its --param parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.cli.evaluate import parse_params
from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError


def test_eval_command_writes_json_table_and_one_plot_per_dataset(
        tmp_path: Path, four_models: RoutingDataset, two_models: RoutingDataset, result_keys: set[str]) -> None:
    many = four_models.to_parquet(tmp_path / "many.parquet")
    two = two_models.to_parquet(tmp_path / "two.parquet")
    out, plot = tmp_path / "out" / "metrics.json", tmp_path / "out" / "pareto.png"
    args = ["eval", "--router", "best-single", "--router", "oracle", "-r", "random", "--data", str(many),
            "--data", str(two), "--embedder", "hashing", "--seed", "3", "--param", "random:seed=5",
            "--budget", "0.004", "--json", str(out), "--plot", str(plot)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert [(r["router"], r["dataset"]) for r in results] == [
        (r, d) for d in ("synthetic", "synthetic-2") for r in ("best-single", "oracle", "random")]
    assert all(set(r) == result_keys for r in results)
    assert results[2]["params"] == {"seed": 5} and results[0]["params"] == {}
    assert all(r["seed"] == 3 and r["quality_at_budget"][-1]["budget"] == 0.004 for r in results)
    oracle_two = results[4]
    assert oracle_two["apgr"] > 0.9 and oracle_two["gap_closed"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "pareto-synthetic.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "pareto-synthetic-2.png").stat().st_size > 10_000
    for text in ("AIQ", "zero AIQ", "APGR", "CPT50", "best single", "synthetic-2", f"{results[1]['aiq']:.4f}"):
        assert text in result.output


def test_eval_command_reports_unknown_router(tmp_path: Path, four_models: RoutingDataset) -> None:
    path = four_models.to_parquet(tmp_path / "d.parquet")
    result = CliRunner().invoke(build_app(), ["eval", "-r", "no-such-router", "-d", str(path)])
    assert result.exit_code != 0
    assert "no-such-router" in str(result.exception)


def test_parse_params_scopes_and_types() -> None:
    got = parse_params(["seed=4", "random:seed=7", "oracle:embedder=hashing", "best-single:note=a:b"],
                       ["random", "oracle", "best-single"])
    assert got["random"] == {"seed": 7}
    assert got["oracle"] == {"seed": 4, "embedder": "hashing"}
    assert got["best-single"] == {"seed": 4, "note": "a:b"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_params(["seed"], ["random"])
    with pytest.raises(ConfigError, match="not one of"):
        parse_params(["knn:k=3"], ["random"])
    with pytest.raises(ConfigError, match="takes"):
        parse_params(["bogus=1"], ["random"])
