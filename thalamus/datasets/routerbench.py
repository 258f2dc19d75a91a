"""Loader for routerbench_subset: RouterBench 0-shot rows (ARC-Challenge, MBPP, Winogrande) x 11 models.

Quality is RouterBench's 0/1 correctness; cost is RouterBench's recorded USD cost per call
(observed, ``cost_estimated=False``); the model responses are kept (a replay server serves
them later). ``output_tokens`` is estimated as ceil(response characters / 4).

14 ARC-Challenge ``sample_id``s are split over two rows: one carries only
``gpt-3.5-turbo-1106``'s score (its prompt is the question twice, a list of two strings) and
the other the 10 other models'. They are merged into one row that keeps the text, split, costs
and row index of the 10-model half, and takes each model's quality and response from the half
where that quality was observed: 3,178 rows -> 3,164 (2,217 train / 947 test).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from thalamus.datasets.common import dataset_dir, tokens_from_chars
from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError

FOLDER = "routerbench_subset"
NAME = "routerbench_subset"
FILES = ("arc_challenge", "mbpp", "winograde")
MODELS = (
    "WizardLM/WizardLM-13B-V1.2", "claude-instant-v1", "claude-v1", "claude-v2", "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview", "meta/code-llama-instruct-34b-chat", "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat",
)


def _join_literal(value: str, where: str) -> str:
    """RouterBench stores prompts and responses as Python list literals of strings."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: not a Python list literal ({exc})") from exc
    if isinstance(parsed, str):
        return parsed
    return "\n".join(str(p) for p in parsed)


def _read_split_files(folder: Path) -> pd.DataFrame:
    frames = []
    for stem in FILES:
        for split in ("train", "test"):
            path = folder / f"{stem}_{split}.csv"
            if not path.is_file():
                raise DataError(f"{path}: file not found")
            df = pd.read_csv(path)
            missing = [c for c in ("sample_id", "prompt", "eval_name", *MODELS) if c not in df.columns]
            if missing:
                raise DataError(f"{path}: missing columns {missing}")
            df["split"] = split
            df["_file"] = path.name
            df["_line"] = np.arange(len(df)) + 2
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _merge_halves(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per sample_id; see the module docstring for which half wins each field."""
    raw = raw.copy()
    raw["_observed"] = raw[list(MODELS)].notna().sum(axis=1)
    raw = raw.sort_values(["_observed"], ascending=False, kind="stable")
    merged = raw.groupby("sample_id", sort=False).first()  # first non-null per column
    for model in MODELS:  # a model's response must come from the half that scored it
        scored = raw[raw[model].notna()].drop_duplicates("sample_id").set_index("sample_id")
        merged.loc[scored.index, f"{model}|model_response"] = scored[f"{model}|model_response"]
    head = raw.drop_duplicates("sample_id").set_index("sample_id")
    for col in ("prompt", "split", "Unnamed: 0", *(f"{m}|total_cost" for m in MODELS)):
        merged[col] = head.loc[merged.index, col]
    return merged.reset_index().sort_values(["_file", "_line"], kind="stable").reset_index(drop=True)


def load_routerbench(data_dir: Path) -> RoutingDataset:
    folder = dataset_dir(data_dir, FOLDER)
    df = _merge_halves(_read_split_files(folder))
    texts = [_join_literal(p, f"{folder}/{f}: line {ln}, column 'prompt'")
             for p, f, ln in zip(df["prompt"], df["_file"], df["_line"], strict=True)]
    responses = np.empty((len(df), len(MODELS)), dtype=object)
    for j, model in enumerate(MODELS):
        col = f"{model}|model_response"
        responses[:, j] = [_join_literal(v, f"{folder}/{f}: line {ln}, column {col!r}")
                           for v, f, ln in zip(df[col], df["_file"], df["_line"], strict=True)]
    resp_chars = np.vectorize(len, otypes=[np.float64])(responses)
    prompts = pd.DataFrame({
        "prompt_id": df["sample_id"].astype(str), "text": texts,
        "task": df["eval_name"].astype(str), "split": df["split"],
    })
    return RoutingDataset(
        name=NAME, prompts=prompts, models=list(MODELS),
        quality=df[list(MODELS)].to_numpy(np.float64),
        cost=df[[f"{m}|total_cost" for m in MODELS]].to_numpy(np.float64),
        cost_estimated=False, output_tokens=tokens_from_chars(resp_chars), responses=responses,
    )
