"""The dataset registry (names, paths, cache) and `thalamus data` end to end in a temp dir."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets import registry
from thalamus.datasets.registry import dataset_names, load_dataset
from thalamus.errors import DataError, UnknownNameError


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("THALAMUS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


def test_names() -> None:
    assert dataset_names() == ["routerbench_subset", "routellm_mmlu", "routellm_gsm8k", "routellm_mtbench",
                               "llmrouter_dcrouter", "routerdc_7model", "alpaca_eval"]


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        load_dataset("routerbench")
    assert "unknown dataset 'routerbench'" in str(err.value)
    assert all(name in str(err.value) for name in dataset_names())


def test_missing_data_dir_says_where_it_looked(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(DataError, match="THALAMUS_DATA_DIR"):
        load_dataset("routellm_gsm8k", data_dir=tmp_path / "nowhere")


def test_data_dir_defaults_to_the_environment(
    data_dir: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THALAMUS_DATA_DIR", str(data_dir))
    assert load_dataset("routellm_mtbench").n_prompts == 72
    monkeypatch.setenv("THALAMUS_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="elsewhere"):
        load_dataset("routellm_mtbench", cache=False)


def test_cache_round_trip_and_invalidation(data_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    fresh = load_dataset("routerbench_subset", data_dir, cache=False)
    first = load_dataset("routerbench_subset", data_dir)
    cached = load_dataset("routerbench_subset", data_dir)
    assert len(list(cache_dir.glob("routerbench_subset-*.parquet"))) == 1
    for ds in (first, cached):
        assert ds.models == fresh.models and ds.cost_estimated == fresh.cost_estimated
        np.testing.assert_array_equal(ds.quality, fresh.quality)
        np.testing.assert_array_equal(ds.cost, fresh.cost)
        assert ds.responses is not None and (ds.responses == fresh.responses).all()
        assert ds.prompts.equals(fresh.prompts)
    # a changed source file gives a new key (a private copy of the small MT-Bench folders)
    root = tmp_path / "data"
    for folder in ("routellm/mt_bench", "pricing_routerarena"):
        shutil.copytree(data_dir / folder, root / folder)
    spec = registry.SPECS["routellm_mtbench"]
    key = registry.source_key(spec, root)
    load_dataset("routellm_mtbench", root)
    with (root / "routellm/mt_bench/question.jsonl").open("a") as fh:
        fh.write("\n")
    assert registry.source_key(spec, root) != key
    assert load_dataset("routellm_mtbench", root).n_prompts == 72
    assert len(list(cache_dir.glob("routellm_mtbench-*.parquet"))) == 1  # the stale entry is gone


def test_path_loads_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text("prompt,quality:a,quality:b\nx,1,0\n")
    ds = load_dataset(str(path))
    assert ds.models == ["a", "b"] and ds.n_prompts == 1


# -- CLI -------------------------------------------------------------------------------------
runner = CliRunner(env={"COLUMNS": "250"})  # rich wraps at the terminal width


def test_cli_list(data_dir: Path) -> None:
    result = runner.invoke(build_app(), ["data", "list", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in result.output.splitlines()
             if line.startswith("│")]
    present = {row[0]: row[2] for row in cells if row[0]}  # wrapped description lines have no name
    assert present == {name: "yes" for name in dataset_names()}  # every folder is present


def test_cli_info_named(data_dir: Path, cache_dir: Path) -> None:
    result = runner.invoke(build_app(), ["data", "info", "routellm_mtbench", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "72 prompts x 2 models" in result.output
    assert "0.9124" in result.output and "0.8090" in result.output  # mean quality per model
    assert "humanities" in result.output and "(none)" in result.output  # task and split counts


def test_cli_import_then_info(tmp_path: Path) -> None:
    src = tmp_path / "mine.csv"
    src.write_text("prompt,split,quality:a,quality:b,cost:a,cost:b\nx,train,1,0,0.5,0.1\ny,test,0,,0.5,0.1\n")
    out = tmp_path / "mine.parquet"
    result = runner.invoke(build_app(), ["data", "import", str(src), "--out", str(out), "--name", "mine"])
    assert result.exit_code == 0, result.output
    assert "2 prompts x 2 models" in result.output and out.is_file()
    info = runner.invoke(build_app(), ["data", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "mine: 2 prompts x 2 models (cost observed)" in info.output
    assert "50.0%" in info.output  # b's missing share
    assert "train" in info.output and "test" in info.output


def test_cli_bad_import_exits_1_with_the_error_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("prompt,quality:a\nx,1\ny,-1\n")
    out = tmp_path / "bad.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", "from thalamus.cli import main; main()", "data", "import", str(src),
         "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "line 3, column 'quality:a': quality -1.0 is outside [0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_cache_key_is_the_same_in_every_process(data_dir: Path) -> None:
    code = ("from pathlib import Path; from thalamus.datasets import registry; "
            f"print(registry.source_key(registry.SPECS['routellm_mtbench'], Path({str(data_dir)!r})))")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout for seed in ("1", "2")}
    assert len(keys) == 1 and len(keys.pop().strip()) == 16
