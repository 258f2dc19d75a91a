"""Users' CSV / JSONL / Parquet files: both layouts round-trip, and every bad input is named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets.schema import RoutingDataset
from thalamus.datasets.user_format import import_file, read_user_file
from thalamus.errors import DataError

WIDE_CSV = """id,prompt,task,split,quality:big,quality:small,cost:big,cost:small,output_tokens:big
p1,What is 2+2?,math,train,1,0,0.01,0.001,12
p2,"A prompt, with a comma
and a second line",writing,test,0.75,0.5,0.02,0.002,30
p3,Name a prime,math,train,true,,0.01,,5
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_wide_csv(tmp_path: Path) -> None:
    ds = read_user_file(write(tmp_path / "mine.csv", WIDE_CSV))
    assert ds.name == "mine" and ds.models == ["big", "small"]
    assert ds.prompts["prompt_id"].tolist() == ["p1", "p2", "p3"]
    assert ds.texts[1] == "A prompt, with a comma\nand a second line"
    np.testing.assert_array_equal(ds.quality, [[1, 0], [0.75, 0.5], [1, np.nan]])
    np.testing.assert_array_equal(ds.cost, [[0.01, 0.001], [0.02, 0.002], [0.01, np.nan]])
    assert ds.output_tokens is not None
    np.testing.assert_array_equal(ds.output_tokens[:, 0], [12, 30, 5])
    assert np.isnan(ds.output_tokens[:, 1]).all()
    assert ds.prompts["split"].tolist() == ["train", "test", "train"]
    assert not ds.cost_estimated


def test_long_jsonl_matches_wide(tmp_path: Path) -> None:
    rows = [
        {"id": "p1", "prompt": "What is 2+2?", "model": "big", "quality": 1, "cost": 0.01, "task": "math"},
        {"id": "p1", "prompt": "What is 2+2?", "model": "small", "quality": 0, "cost": 0.001, "task": "math"},
        {"id": "p2", "prompt": "Say hi", "model": "small", "quality": 0.5, "cost": 0.002, "task": "chat",
         "response": "hi"},
    ]
    ds = read_user_file(jsonl(tmp_path / "long.jsonl", rows), name="L")
    assert ds.name == "L" and ds.models == ["big", "small"]
    assert ds.prompts["prompt_id"].tolist() == ["p1", "p2"]
    np.testing.assert_array_equal(ds.quality, [[1, 0], [np.nan, 0.5]])
    np.testing.assert_array_equal(ds.cost, [[0.01, 0.001], [np.nan, 0.002]])
    assert ds.responses is not None and ds.responses[1, 1] == "hi"
    assert ds.prompts["task"].tolist() == ["math", "chat"]


def test_long_csv_without_ids_groups_by_text(tmp_path: Path) -> None:
    text = "prompt,model,quality,cost\nhello,a,1,0.1\nhello,b,0,0.2\nbye,a,0.5,0.1\n"
    ds = read_user_file(write(tmp_path / "l.csv", text))
    assert ds.texts == ["hello", "bye"] and ds.models == ["a", "b"]
    np.testing.assert_array_equal(ds.quality, [[1, 0], [0.5, np.nan]])


def test_import_round_trip_and_reload_by_path(tmp_path: Path) -> None:
    src = write(tmp_path / "mine.csv", WIDE_CSV)
    out = tmp_path / "out" / "mine.parquet"
    ds = import_file(src, out, name="custom")
    back = RoutingDataset.from_parquet(out)
    assert back.name == "custom" and back.models == ds.models
    np.testing.assert_array_equal(back.quality, ds.quality)
    assert read_user_file(out).texts == ds.texts  # a Thalamus parquet loads as is
    assert not (tmp_path / "out" / "mine.parquet.tmp").exists()


def test_plain_parquet_table_is_read_as_a_user_table(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"prompt": ["a", "b"], "quality:m": [0.2, 1.5]}).to_parquet(path)
    with pytest.raises(DataError) as err:
        read_user_file(path)
    assert str(err.value) == f"{path}: row 2, column 'quality:m': quality 1.5 is outside [0, 1]"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("nonnum.csv", "prompt,quality:m\nok,1\nbad,abc\n", "line 3, column 'quality:m': 'abc' is not a number"),
        ("range.csv", "prompt,quality:m\nok,1.2\n", "line 2, column 'quality:m': quality 1.2 is outside [0, 1]"),
        ("negcost.csv", "prompt,quality:m,cost:m\na,1,0.1\nb,0,-0.5\n",
         "line 3, column 'cost:m': cost -0.5 is negative"),
        ("noprompt.csv", "text,quality:m\na,1\n", "no 'prompt' column"),
        ("dup.csv", "prompt,model,quality\nq,m,1\nr,m,0\nq,m,0\n",
         "line 4, column 'model': duplicate (prompt, model) pair for model 'm'; first seen on line 2"),
        ("multiline.csv", 'prompt,quality:m\n"two\nlines",1\nx,9\n',
         "line 4, column 'quality:m': quality 9.0 is outside [0, 1]"),
        ("split.csv", "prompt,quality:m,split\na,1,training\n",
         "line 2, column 'split': 'training' is not one of train / val / test"),
        ("noquality.csv", "prompt,score\na,1\n", "no quality columns"),
        ("header_only.csv", "prompt,quality:m\n", "no data rows"),
        ("orphan.csv", "prompt,quality:m,cost:x\na,1,0.1\n", "column 'cost:x' has no matching 'quality:x'"),
    ],
)
def test_bad_csv_names_file_row_and_column(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        read_user_file(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_bad_jsonl_rows_are_named_by_line(tmp_path: Path) -> None:
    path = write(tmp_path / "b.jsonl", '{"prompt": "a", "quality:m": 1}\n\n{"prompt": "b", "quality:m": "x"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl: line 3, column 'quality:m': 'x' is not a number"):
        read_user_file(path)
    path = write(tmp_path / "c.jsonl", '{"prompt": "a", "quality:m": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"c\.jsonl: line 2: invalid JSON"):
        read_user_file(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty file"):
        read_user_file(write(tmp_path / "e.csv", ""))
    with pytest.raises(DataError, match="file not found"):
        read_user_file(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        read_user_file(write(tmp_path / "x.xlsx", "a"))


def test_failed_import_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError):
        import_file(write(tmp_path / "bad.csv", "prompt,quality:m\nok,1\nbad,2\n"), out)
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.csv"]
    good = import_file(write(tmp_path / "good.csv", "prompt,quality:m\nok,1\n"), out)
    before = out.read_bytes()
    with pytest.raises(DataError):
        import_file(tmp_path / "bad.csv", out)
    assert out.read_bytes() == before and good.n_prompts == 1  # the old file is untouched
