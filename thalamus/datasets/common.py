"""Small helpers every public-data loader shares: locating files, JSONL, token estimates, costs.

Token counts are estimated as ceil(characters / 4), the usual rule of thumb for English text
with BPE tokenizers; it is cheap, deterministic and within ~20 % of tiktoken on these datasets'
prompts, which is close enough for ranking models by cost. Loaders that use it set
``cost_estimated=True`` on the dataset they return.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thalamus.datasets.schema import Price
from thalamus.errors import DataError

CHARS_PER_TOKEN = 4.0


def dataset_dir(data_dir: Path, folder: str) -> Path:
    """The folder of one public dataset, or a DataError saying where it was looked for."""
    path = Path(data_dir) / folder
    if not path.is_dir():
        raise DataError(
            f"{path}: dataset folder not found; set THALAMUS_DATA_DIR to the folder that holds '{folder}'"
        )
    return path


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(require_file(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON Lines split on '\\n' only: str.splitlines would also cut at U+2028 / U+0085 inside values."""
    return [row for _, row in parse_jsonl(path, require_file(path).read_text(encoding="utf-8"))]


def parse_jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line; errors name the file and line."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def estimate_tokens(texts: Iterable[str]) -> np.ndarray:
    """ceil(len(text) / 4) per text, as float64 (see the module docstring)."""
    chars = np.fromiter((len(t) for t in texts), dtype=np.float64)
    return np.ceil(chars / CHARS_PER_TOKEN)


def tokens_from_chars(chars: np.ndarray) -> np.ndarray:
    return np.ceil(np.asarray(chars, dtype=np.float64) / CHARS_PER_TOKEN)


def estimated_cost(
    prompt_tokens: np.ndarray, output_tokens: np.ndarray, models: Sequence[str], prices: dict[str, Price]
) -> np.ndarray:
    """(n, m) USD: each model's price applied to the prompt's tokens and that model's output tokens."""
    out = np.empty(output_tokens.shape, dtype=np.float64)
    for j, model in enumerate(models):
        out[:, j] = prices[model].cost(prompt_tokens, output_tokens[:, j])
    return out
