"""Loader for llmfao: pairwise crowd, GPT-4 and GPT-3 votes over 59 LLMs' answers to 19 prompts.

A PreferenceDataset, one row per vote: ``model_a`` is the left model (``model_x``), ``model_b``
the right (``model_y``), winner ``left`` -> ``"a"``, ``right`` -> ``"b"``, ``tie`` -> ``"tie"``;
``source`` is ``crowd`` / ``gpt4`` / ``gpt3``; ``worker`` is the crowd worker id (empty for the
judges). Models are named by their llmfao display name (``left`` / ``right`` columns).
Too few prompts to train a prompt-conditional router alone; useful for Bradley-Terry / Elo
priors and judge-vs-human agreement.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from thalamus.datasets.common import dataset_dir, read_jsonl, require_file
from thalamus.datasets.schema import PreferenceDataset
from thalamus.errors import DataError

FOLDER = "llmfao"
NAME = "llmfao"
SOURCES = ("crowd", "gpt4", "gpt3")
WINNERS = {"left": "a", "right": "b", "tie": "tie"}


def _votes(path: Path, source: str, prompts: dict[int, str]) -> pd.DataFrame:
    df = pd.read_csv(require_file(path), dtype={"worker": str})
    need = ["id", "prompt", "winner", "left", "right"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    winner = df["winner"].map(WINNERS)
    if winner.isna().any():
        i = int(winner.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {i + 2}, column 'winner': {df['winner'].iloc[i]!r} "
                        "is not left/right/tie")
    unknown = ~df["prompt"].isin(list(prompts))
    if unknown.any():
        i = int(unknown.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {i + 2}, column 'prompt': unknown prompt id {df['prompt'].iloc[i]}")
    return pd.DataFrame({
        "prompt_id": df["prompt"].astype(str), "text": df["prompt"].map(prompts),
        "model_a": df["left"].astype(str), "model_b": df["right"].astype(str), "winner": winner,
        "source": source, "pair_id": df["id"].astype(str),
        "worker": df["worker"].fillna("") if "worker" in df.columns else "",
    })


def load_llmfao(data_dir: Path) -> PreferenceDataset:
    folder = dataset_dir(data_dir, FOLDER)
    prompts = {int(r["id"]): str(r["text"]) for r in read_jsonl(folder / "prompts.jsonl")}
    frames = [_votes(folder / f"{s}-comparisons.csv", s, prompts) for s in SOURCES]
    return PreferenceDataset(name=NAME, votes=pd.concat(frames, ignore_index=True))
