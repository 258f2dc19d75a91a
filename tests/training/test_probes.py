"""Probe files: a prompts-only file is read once into a probe set; a routing-dataset file is left to the
dataset reader, which reads it once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from thalamus.errors import DataError
from thalamus.training.probes import load_probes


@pytest.fixture
def full_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The probe files pandas read whole (a header or first-record peek is not counted)."""
    reads: list[str] = []
    for name in ("read_csv", "read_json"):
        real = getattr(pd, name)

        def counted(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> pd.DataFrame:
            if kwargs.get("nrows") is None:
                reads.append(str(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(pd, name, counted)
    return reads


def test_a_plain_probe_file_is_read_once(tmp_path: Path, full_reads: list[str]) -> None:
    path = tmp_path / "probes.csv"
    frame = pd.DataFrame({"text": ["what is 2+2?", "capital of France?"], "reference": ["4", "Paris"]})
    frame.to_csv(path, index=False)
    probes = load_probes(str(path))
    assert probes.texts == ["what is 2+2?", "capital of France?"] and probes.references == ["4", "Paris"]
    assert probes.dataset is None and full_reads == [str(path)]


def test_a_routing_dataset_file_is_read_by_the_dataset_reader_only(tmp_path: Path, full_reads: list[str]) -> None:
    for name, write in (("wide.csv", lambda p, rows: pd.DataFrame(rows).to_csv(p, index=False)),
                        ("wide.jsonl", lambda p, rows: p.write_text("\n".join(json.dumps(r) for r in rows)))):
        path = tmp_path / name
        write(path, [{"prompt": "what is 2+2?", "quality:a": 1, "quality:b": 0},
                     {"prompt": "capital of France?", "quality:a": 0, "quality:b": 1}])
        probes = load_probes(str(path))
        assert probes.dataset is not None and probes.dataset.models == ["a", "b"]
        assert probes.texts == ["what is 2+2?", "capital of France?"]
    assert full_reads == []  # the dataset reader parses the file itself; pandas only peeked at the header


def test_probe_file_errors_name_the_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "probes.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": " "}) + "\n")
    with pytest.raises(DataError, match=r"probes.jsonl: row 2: 'text' is empty"):
        load_probes(str(path))
    with pytest.raises(DataError, match=r"missing.csv: probe file not found"):
        load_probes(str(tmp_path / "missing.csv"))
