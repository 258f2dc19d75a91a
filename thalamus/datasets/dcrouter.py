"""Loader for llmrouter_dcrouter: 9 NVIDIA-NIM-hosted LLMs scored on 14 task families (LLMRouter).

``train.json`` / ``test.json`` give the question and each model's score (mostly 0/1; F1 for
NQ/TriviaQA, coverage for CommonGen); ``split`` is the file it came from. The task of a
question is the ``task_name`` of the identical ``query`` in ``default_query_{split}.jsonl``
(then the other split's file). Those files are split on '\\n' only: one TriviaQA query holds a
U+0085 character that str.splitlines would treat as a line break. Six queries appear twice in
the train query file under two task names (mmlu and openbook_qa / arc_challenge); the first
occurrence wins.

Cost is estimated (``cost_estimated=True``): the numeric ``input_price``/``output_price`` of
``default_llm.json`` (USD per 1M tokens; the prose in ``feature`` sometimes disagrees and is
ignored) x ceil(question characters / 4) input tokens and a typical answer of
``OUTPUT_TOKENS`` output tokens (the source has no per-call token counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thalamus.datasets.common import dataset_dir, estimate_tokens, estimated_cost, read_json, read_jsonl
from thalamus.datasets.schema import Price, RoutingDataset
from thalamus.errors import DataError

FOLDER = "llmrouter_dcrouter"
NAME = "llmrouter_dcrouter"
OUTPUT_TOKENS = 200.0


def _prices(path: Path, models: list[str]) -> dict[str, Price]:
    raw = read_json(path)
    prices = {}
    for model in models:
        entry = raw.get(model) if isinstance(raw, dict) else None
        if entry is None:
            raise DataError(f"{path}: no entry for model {model!r}")
        try:
            prices[model] = Price(float(entry["input_price"]), float(entry["output_price"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: model {model!r}: needs numeric input_price/output_price") from exc
    return prices


def _task_indexes(folder: Path, splits: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Per split: query text -> task_name, preferring that split's query file, first occurrence winning."""
    own: dict[str, dict[str, str]] = {}
    for name in splits:  # each query file parsed once
        own[name] = {}
        for row in read_jsonl(folder / f"default_query_{name}.jsonl"):
            own[name].setdefault(str(row.get("query", "")), str(row.get("task_name", "")))
    return {name: {k: v for other in splits if other != name for k, v in own[other].items()} | own[name]
            for name in splits}


def _read_split(folder: Path, split: str) -> list[dict[str, Any]]:
    path = folder / f"{split}.json"
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{question, scores}} objects")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "question" not in row or not isinstance(row.get("scores"), dict):
            raise DataError(f"{path}: item {i}: expected an object with 'question' and 'scores'")
    return rows


def load_dcrouter(data_dir: Path) -> RoutingDataset:
    folder = dataset_dir(data_dir, FOLDER)
    records: list[dict[str, Any]] = []
    tasks_of = _task_indexes(folder, ("train", "test"))
    for split, tasks in tasks_of.items():
        for i, row in enumerate(_read_split(folder, split)):
            question = str(row["question"])
            records.append({"prompt_id": f"{split}.{i}", "text": question, "task": tasks.get(question, ""),
                            "split": split, **{f"q::{m}": s for m, s in row["scores"].items()}})
    df = pd.DataFrame(records)
    models = [c.removeprefix("q::") for c in df.columns if c.startswith("q::")]
    quality = df[[f"q::{m}" for m in models]].to_numpy(np.float64)
    prices = _prices(folder / "default_llm.json", models)
    output_tokens = np.full(quality.shape, OUTPUT_TOKENS)
    cost = estimated_cost(estimate_tokens(df["text"]), output_tokens, models, prices)
    return RoutingDataset(
        name=NAME, prompts=df[["prompt_id", "text", "task", "split"]], models=models, quality=quality,
        cost=cost, cost_estimated=True, output_tokens=output_tokens, prices=prices,
    )
