"""Loader for routerdc_7model: 7 open 7-8B LLMs scored on 10 benchmarks (RouterDC, 16 files).

task = file stem without its ``_train``/``_test``/``-train``/``-test`` suffix; split = that
suffix. Files without one (``ceval``, ``mbpp``, ``javascript``, ``MATH_prealgebra``) are the
paper's out-of-distribution test sets and get split ``"test"``.

Quality: for the multiple-choice sets (mmlu, cmmlu, ceval, arc_easy, arc_challenge) the
source score is the gold option's normalised probability when lm-eval-harness scored the item
correct, else 0, so quality = 1.0 if score > 0 else 0.0 (correctness). For gsm8k, humaneval,
mbpp and javascript it is the pass rate over 10 samples (kept as is, in [0, 1]); for
MATH_prealgebra it is already 0/1.

Cost: the source has none and all seven are similar 7-8B open models, so every model gets the
same price, RouterArena's ``open-mistral-7b`` ($0.15 / $0.15 per 1M tokens; a constant here so
the loader needs no other folder), x ceil(question characters / 4) input tokens and
``OUTPUT_TOKENS`` output tokens (``cost_estimated=True``). Cost therefore never separates the
models: this dataset is about quality routing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from thalamus.datasets.common import dataset_dir, estimate_tokens, estimated_cost, read_json
from thalamus.datasets.schema import Price, RoutingDataset
from thalamus.errors import DataError

FOLDER = "routerdc_7model"
NAME = "routerdc_7model"
MULTIPLE_CHOICE = frozenset({"mmlu", "cmmlu", "ceval", "arc_easy", "arc_challenge"})
PRICE = Price(0.15, 0.15)
OUTPUT_TOKENS = 200.0
_SUFFIX = re.compile(r"^(?P<task>.+?)[-_](?P<split>train|test)$")


def task_and_split(stem: str) -> tuple[str, str]:
    """``mmlu_train`` -> (mmlu, train); ``gsm8k-test`` -> (gsm8k, test); ``ceval`` -> (ceval, test)."""
    found = _SUFFIX.match(stem)
    return (found["task"], found["split"]) if found else (stem, "test")


def _read_file(path: Path) -> tuple[pd.DataFrame, list[str]]:
    rows = read_json(path)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of {{question, scores}} objects")
    models = list(rows[0].get("scores", {}))
    for i, row in enumerate(rows, start=1):
        if list(row.get("scores", {})) != models:
            raise DataError(f"{path}: item {i}: models {list(row.get('scores', {}))} differ from {models}")
    task, split = task_and_split(path.stem)
    df = pd.DataFrame({
        "prompt_id": [f"{path.stem}.{i}" for i in range(len(rows))],
        "text": [str(r["question"]) for r in rows], "task": task, "split": split,
    })
    scores = np.array([[float(r["scores"][m]) for m in models] for r in rows])
    if task in MULTIPLE_CHOICE:
        scores = (scores > 0).astype(np.float64)
    for j, m in enumerate(models):
        df[f"q::{m}"] = scores[:, j]
    return df, models


def load_routerdc(data_dir: Path) -> RoutingDataset:
    folder = dataset_dir(data_dir, FOLDER)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no *.json files")
    frames, models = [], None
    for path in files:
        df, file_models = _read_file(path)
        if models is not None and file_models != models:
            raise DataError(f"{path}: models {file_models} differ from {models} in {files[0].name}")
        models = file_models
        frames.append(df)
    assert models is not None
    df = pd.concat(frames, ignore_index=True)
    quality = df[[f"q::{m}" for m in models]].to_numpy(np.float64)
    prices = dict.fromkeys(models, PRICE)
    output_tokens = np.full(quality.shape, OUTPUT_TOKENS)
    return RoutingDataset(
        name=NAME, prompts=df[["prompt_id", "text", "task", "split"]], models=models, quality=quality,
        cost=estimated_cost(estimate_tokens(df["text"]), output_tokens, models, prices),
        cost_estimated=True, output_tokens=output_tokens, prices=prices,
    )
