"""Users' own routing data: CSV / JSONL / Parquet tables in a wide or a long layout.

Wide: one row per prompt.

    prompt            required, the prompt text (non-empty)
    id                optional, unique prompt id (default: a hash of the text)
    task, split       optional; split is one of train / val / test or empty
    quality:<model>   one column per model, a number in [0, 1]; empty / null = not observed
    cost:<model>      optional, USD per call, >= 0; empty = not observed
    output_tokens:<model>, response:<model>   optional
    cost_estimated    optional, true / false (1 / 0; empty = false): this row's costs are estimates

Long: one row per (prompt, model).

    prompt, model, quality      required
    cost, output_tokens, response, id, task, split     optional
    cost_estimated    optional, true / false per row, as in the wide layout

A table with both ``model`` and ``quality`` columns is long; one with ``quality:<model>``
columns is wide. In the long layout a prompt is identified by ``id`` when given, else by its
text; a repeated (prompt, model) pair is an error, and so are different task/split values for
one prompt. Quality may also be written true/false (1/0). Other columns are ignored.

Costs computed from prices and estimated token counts, rather than billed, are flagged: by a true
``cost_estimated`` cell on any row, or for the whole file by ``cost_estimated=True``
(``thalamus data import --cost-estimated``). The dataset's ``cost_estimated`` is then set, and
``thalamus data info`` and ``thalamus eval`` say the costs are estimated.
JSONL holds one JSON object per line with the same keys. A ``.parquet`` file written by
Thalamus (``thalamus data import``) loads as is; any other Parquet file is read as a table.

Every error is a DataError naming the file, the row as a user counts it (``line N`` of a CSV or
JSONL file, header = line 1; ``row N`` of a Parquet table) and the column at fault.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from thalamus.datasets.common import parse_jsonl
from thalamus.datasets.schema import RoutingDataset, stable_hash
from thalamus.errors import DataError

SUFFIXES = (".csv", ".jsonl", ".parquet")
SPLITS = frozenset({"", "train", "val", "test"})
FIELDS = ("quality", "cost", "output_tokens", "response")


@dataclass
class Table:
    """Raw cells (str / number / None) and, per row, where a user finds it ('line 3')."""

    path: Path
    df: pd.DataFrame
    where: list[str]

    def fail(self, row: int, column: str, message: str) -> DataError:
        return DataError(f"{self.path}: {self.where[row]}, column {column!r}: {message}")


# -- reading ---------------------------------------------------------------------------------
def _read_csv(path: Path) -> Table:
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            rows, lines, last = [], [], 0
            for record in reader:
                start, last = last + 1, reader.line_num
                if not record or all(not c.strip() for c in record):
                    continue
                if header is None:
                    header = [c.strip() for c in record]
                    continue
                if len(record) != len(header):
                    raise DataError(f"{path}: line {start}: {len(record)} fields, the header has {len(header)}")
                rows.append(record)
                lines.append(f"line {start}")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: line {last + 1}: malformed CSV ({exc})") from exc
    return Table(path, pd.DataFrame(rows, columns=header or [], dtype=object), lines)


def _read_jsonl(path: Path) -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    parsed = parse_jsonl(path, text)
    return Table(path, pd.DataFrame([row for _, row in parsed], dtype=object),
                 [f"line {lineno}" for lineno, _ in parsed])


def _read_table(path: Path) -> Table:
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    df = pq.read_table(path).to_pandas().astype(object)
    return Table(path, df, [f"row {i}" for i in range(1, len(df) + 1)])


def _is_thalamus_parquet(path: Path) -> bool:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    return b"thalamus" in meta


# -- cell conversion -------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """float, NaN for an empty / null cell, None when the cell is not a number."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return float("nan")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    text = str(value).strip()
    if not text:
        return float("nan")
    if text.lower() in ("true", "false"):
        return 1.0 if text.lower() == "true" else 0.0
    try:
        out = float(text)
    except ValueError:
        return None
    return None if np.isinf(out) else out


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def numbers(table: Table, column: str, field: str) -> np.ndarray:
    """A column as float64, checked: quality in [0, 1], cost and output_tokens >= 0."""
    out = np.empty(len(table.df), dtype=np.float64)
    for i, value in enumerate(table.df[column].tolist()):
        num = _number(value)
        if num is None:
            raise table.fail(i, column, f"{value!r} is not a number")
        if field == "quality" and not 0.0 <= num <= 1.0 and not np.isnan(num):
            raise table.fail(i, column, f"quality {num} is outside [0, 1]")
        if field != "quality" and num < 0:
            raise table.fail(i, column, f"{field} {num} is negative")
        out[i] = num
    return out


def flags(table: Table, column: str) -> bool:
    """Whether any row of a true/false column is true (absent column: False); other values are errors."""
    if column not in table.df.columns:
        return False
    found = False
    for i, value in enumerate(table.df[column].tolist()):
        num = _number(value)
        if num is None or not (np.isnan(num) or num in (0.0, 1.0)):
            raise table.fail(i, column, f"{value!r} is not true / false (or 1 / 0, or empty)")
        found = found or num == 1.0
    return found


def texts(table: Table, column: str) -> list[str]:
    if column not in table.df.columns:
        return [""] * len(table.df)
    return [_text(v) for v in table.df[column].tolist()]


# -- layouts ---------------------------------------------------------------------------------
def _prompt_columns(table: Table) -> pd.DataFrame:
    """prompt_id, text, task, split per row, checked."""
    if "prompt" not in table.df.columns:
        raise DataError(f"{table.path}: no 'prompt' column (columns found: {list(table.df.columns)})")
    prompts = pd.DataFrame({"text": texts(table, "prompt"), "task": texts(table, "task"),
                            "split": [s.strip().lower() for s in texts(table, "split")],
                            "id": [s.strip() for s in texts(table, "id")]})
    for i, (text, split) in enumerate(zip(prompts["text"].tolist(), prompts["split"].tolist(), strict=True)):
        if not text.strip():
            raise table.fail(i, "prompt", "empty prompt")
        if split not in SPLITS:
            raise table.fail(i, "split", f"{split!r} is not one of train / val / test")
    return prompts


def _auto_ids(prompts: pd.DataFrame) -> list[str]:
    ids: list[str] = []
    seen: dict[str, int] = {}
    for given, text in zip(prompts["id"], prompts["text"], strict=True):
        base = given or stable_hash(text)[:16]
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids


def _wide(table: Table, name: str) -> RoutingDataset:
    prompts = _prompt_columns(table)
    dup = prompts["id"].ne("") & prompts["id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise table.fail(i, "id", f"duplicate id {prompts['id'].iloc[i]!r}")
    models = [c.split(":", 1)[1] for c in table.df.columns if c.startswith("quality:")]
    for col in table.df.columns:
        field, _, model = col.partition(":")
        if field in FIELDS and model and model not in models:
            raise DataError(f"{table.path}: column {col!r} has no matching 'quality:{model}' column")
    n, m = len(table.df), len(models)

    def matrix(field: str) -> np.ndarray | None:
        cols = [f"{field}:{mod}" for mod in models]
        if not any(c in table.df.columns for c in cols):
            return None
        return np.column_stack([numbers(table, c, field) if c in table.df.columns else np.full(n, np.nan)
                                for c in cols])

    responses = None
    if any(f"response:{mod}" in table.df.columns for mod in models):
        responses = np.array([texts(table, f"response:{mod}") for mod in models], dtype=object).T
    quality = matrix("quality")
    cost = matrix("cost")
    frame = pd.DataFrame({"prompt_id": _auto_ids(prompts), "text": prompts["text"],
                          "task": prompts["task"], "split": prompts["split"]})
    return RoutingDataset(
        name=name, prompts=frame, models=models,
        quality=quality if quality is not None else np.full((n, m), np.nan),
        cost=cost if cost is not None else np.full((n, m), np.nan),
        output_tokens=matrix("output_tokens"), responses=responses, cost_estimated=flags(table, "cost_estimated"),
    )


def _long_keys(table: Table, prompts: pd.DataFrame, models: list[str]) -> list[str]:
    """Each row's prompt key; raises on a repeated (prompt, model) or conflicting task/split."""
    keys = [i or t for i, t in zip(prompts["id"], prompts["text"], strict=True)]
    first_pair: dict[tuple[str, str], int] = {}
    first_prompt: dict[str, int] = {}
    for i, (key, model) in enumerate(zip(keys, models, strict=True)):
        if not model:
            raise table.fail(i, "model", "empty model name")
        if (key, model) in first_pair:
            raise table.fail(i, "model", f"duplicate (prompt, model) pair for model {model!r}; "
                             f"first seen on {table.where[first_pair[key, model]]}")
        first_pair[key, model] = i
        j = first_prompt.setdefault(key, i)
        for col in ("task", "split", "text"):
            if prompts[col].iloc[i] != prompts[col].iloc[j]:
                shown = "prompt" if col == "text" else col
                raise table.fail(i, shown, f"differs from {table.where[j]} for the same prompt")
    return keys


def _long(table: Table, name: str) -> RoutingDataset:
    prompts = _prompt_columns(table)
    row_models = [m.strip() for m in texts(table, "model")]
    keys = _long_keys(table, prompts, row_models)
    models = list(dict.fromkeys(row_models))
    order = list(dict.fromkeys(keys))
    r = pd.Index(order).get_indexer(pd.Index(keys))
    c = pd.Index(models).get_indexer(pd.Index(row_models))

    def matrix(field: str) -> np.ndarray | None:
        if field not in table.df.columns:
            return None
        out = np.full((len(order), len(models)), np.nan)
        out[r, c] = numbers(table, field, field)
        return out

    responses = None
    if "response" in table.df.columns:
        responses = np.full((len(order), len(models)), "", dtype=object)
        responses[r, c] = texts(table, "response")
    first = prompts.groupby(pd.Series(keys), sort=False).head(1)
    frame = pd.DataFrame({"prompt_id": _auto_ids(first), "text": first["text"].to_numpy(),
                          "task": first["task"].to_numpy(), "split": first["split"].to_numpy()})
    quality = matrix("quality")
    cost = matrix("cost")
    assert quality is not None
    return RoutingDataset(
        name=name, prompts=frame, models=models, quality=quality,
        cost=cost if cost is not None else np.full(quality.shape, np.nan),
        output_tokens=matrix("output_tokens"), responses=responses, cost_estimated=flags(table, "cost_estimated"),
    )


def detect_layout(table: Table) -> str:
    columns = set(table.df.columns)
    if {"model", "quality"} <= columns:
        return "long"
    if any(str(c).startswith("quality:") for c in columns):
        return "wide"
    raise DataError(f"{table.path}: no quality columns: expected 'model' + 'quality' (long layout) or "
                    f"'quality:<model>' columns (wide layout); found {sorted(columns)}")


def read_user_file(path: str | Path, name: str | None = None, cost_estimated: bool = False) -> RoutingDataset:
    """A user's CSV / JSONL / Parquet file as a RoutingDataset (see the module docstring).

    ``cost_estimated=True`` flags the file's costs as estimated, whatever its rows say.
    """
    ds = _read_user_file(Path(path), name)
    ds.cost_estimated = ds.cost_estimated or cost_estimated
    return ds


def _read_user_file(path: Path, name: str | None) -> RoutingDataset:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    if path.suffix == ".parquet" and _is_thalamus_parquet(path):
        ds = RoutingDataset.from_parquet(path)
        if name:
            ds.name = name
        return ds
    table = _read_table(path)
    if table.df.empty:
        raise DataError(f"{path}: no data rows")
    build = _long if detect_layout(table) == "long" else _wide
    return build(table, name or path.stem)


def import_file(src: str | Path, out: str | Path, name: str | None = None,
                cost_estimated: bool = False) -> RoutingDataset:
    """Validate ``src`` fully, then write it to ``out`` atomically; on failure ``out`` is untouched."""
    ds = read_user_file(src, name, cost_estimated)
    out = Path(out)
    try:
        ds.to_parquet(out)
    except (OSError, ValueError) as exc:
        out.with_name(out.name + ".tmp").unlink(missing_ok=True)
        raise DataError(f"{out}: could not write ({exc})") from exc
    return ds
