"""A user's file can flag its costs as estimated, and `data import`, `data info` and `eval` say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets.schema import RoutingDataset
from thalamus.datasets.user_format import read_user_file
from thalamus.errors import DataError

WIDE = """prompt,task,quality:big,quality:small,cost:big,cost:small{extra_header}
What is 2+2?,math,1,0,0.01,0.001{e1}
Name a prime,math,1,1,0.012,0.0011{e2}
Write a haiku,chat,1,0,0.02,0.002{e3}
Say hello,chat,1,1,0.01,0.001{e4}
"""
runner = CliRunner(env={"COLUMNS": "250"})  # rich wraps at the terminal width


def wide(path: Path, flags: list[str] | None) -> Path:
    cells = {f"e{i + 1}": (f",{v}" if flags is not None else "") for i, v in enumerate(flags or [""] * 4)}
    path.write_text(WIDE.format(extra_header=",cost_estimated" if flags is not None else "", **cells))
    return path


@pytest.mark.parametrize(("flags", "expected"), [
    (None, False), (["", "", "", ""], False), (["false", "0", "", "FALSE"], False),
    (["false", "true", "", ""], True), (["1", "1", "1", "1"], True)])
def test_the_cost_estimated_column_flags_the_dataset(tmp_path: Path, flags: list[str] | None,
                                                     expected: bool) -> None:
    ds = read_user_file(wide(tmp_path / "mine.csv", flags))
    assert ds.cost_estimated is expected
    assert read_user_file(tmp_path / "mine.csv", cost_estimated=True).cost_estimated  # the option flags it too


def test_long_layout_rows_flag_it_too(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "model": "a", "quality": 1, "cost": 0.1},
            {"prompt": "p", "model": "b", "quality": 0, "cost": 0.2, "cost_estimated": True}]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_user_file(path).cost_estimated
    rows[1]["cost_estimated"] = False
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not read_user_file(path).cost_estimated


def test_a_bad_flag_names_the_line_and_column(tmp_path: Path) -> None:
    path = wide(tmp_path / "bad.csv", ["true", "maybe", "", ""])
    with pytest.raises(DataError, match=r"bad.csv: line 3, column 'cost_estimated': 'maybe' is not true / false"):
        read_user_file(path)


def test_import_info_and_eval_say_the_costs_are_estimated(tmp_path: Path) -> None:
    src, out = wide(tmp_path / "mine.csv", None), tmp_path / "mine.parquet"
    result = runner.invoke(build_app(), ["data", "import", str(src), "--out", str(out), "--cost-estimated"])
    assert result.exit_code == 0, result.output
    assert "4 prompts x 2 models (mine, cost estimated)" in result.output
    assert RoutingDataset.from_parquet(out).cost_estimated  # kept in the imported file
    info = runner.invoke(build_app(), ["data", "info", str(out)])
    assert info.exit_code == 0 and "mine: 4 prompts x 2 models (cost estimated)" in info.output
    metrics = tmp_path / "m.json"
    ev = runner.invoke(build_app(), ["eval", "-r", "best-single", "-d", str(out), "--test-size", "0.5",
                                     "--embedder", "hashing", "--json", str(metrics)])
    assert ev.exit_code == 0, ev.output
    assert "mine: costs are estimated" in ev.output
    assert json.loads(metrics.read_text())[0]["cost_estimated"] is True
    plain = runner.invoke(build_app(), ["data", "import", str(src), "--out", str(tmp_path / "plain.parquet")])
    assert "(mine, cost observed)" in plain.output
    ev = runner.invoke(build_app(), ["eval", "-r", "best-single", "-d", str(tmp_path / "plain.parquet"),
                                     "--test-size", "0.5", "--embedder", "hashing"])
    assert ev.exit_code == 0 and "costs are estimated" not in ev.output
