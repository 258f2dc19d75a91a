"""Loaders for RouteLLM's evaluation data: GPT-4-1106-preview vs Mixtral-8x7B-Instruct.

Three datasets, each with RouteLLM's contamination filter applied the way RouteLLM's
``evals/benchmarks.py`` does: a prompt is dropped when it equals an ``eval_prompt`` of the
benchmark's ``contaminated_prompts.jsonl`` exactly (MT-Bench: when either turn does).

- ``routellm_mmlu``: 57 subject CSVs, task = subject, 0/1 correctness; 14,042 -> 14,037 rows.
- ``routellm_gsm8k``: 0/1 correctness and the response texts; 1,319 -> 1,307 rows.
- ``routellm_mtbench``: GPT-4 judge scores (1-10) of both turns; quality = (mean of the two
  turns' scores - 1) / 9, so [1, 10] maps onto [0, 1] and the ordering of RouteLLM's metric
  (mean score over both turns) is kept. The text is the first turn, the one RouteLLM routes on;
  the response is the first-turn answer, parsed from the judge prompt. task = category; 80 -> 72.

Costs are estimated (``cost_estimated=True``) from ``pricing_routerarena`` prices
(gpt-4-1106-preview; open-mixtral-8x7b for Mixtral) x ceil(characters / 4) tokens:

- MMLU: prompt tokens of the question as stored (RouteLLM's 5-shot prefix is not in the file
  and not counted); 1 output token, since RouteLLM generated with ``max_new_tokens=1``.
- GSM8K: prompt tokens of the question; output tokens of each model's recorded response.
- MT-Bench: the cost of the two-call conversation: input = turn 1, then turn 1 + answer 1 +
  turn 2; output = answer 1 + answer 2, with both answers parsed from the judge prompts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thalamus.datasets.common import (
    dataset_dir,
    estimate_tokens,
    estimated_cost,
    read_jsonl,
    require_file,
)
from thalamus.datasets.pricing import load_price_table, price_of
from thalamus.datasets.schema import Price, RoutingDataset
from thalamus.errors import DataError

FOLDER = "routellm"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
MODELS = [STRONG, WEAK]
PRICE_NAMES = {STRONG: "gpt-4-1106-preview", WEAK: "open-mixtral-8x7b"}
MMLU_OUTPUT_TOKENS = 1.0


def contaminated_prompts(path: Path) -> set[str]:
    """The ``eval_prompt`` values of a RouteLLM ``contaminated_prompts.jsonl``."""
    rows = read_jsonl(path)
    missing = [i for i, r in enumerate(rows, start=1) if "eval_prompt" not in r]
    if missing:
        raise DataError(f"{path}: line {missing[0]}: no 'eval_prompt' field")
    return {str(r["eval_prompt"]) for r in rows}


def _prices(data_dir: Path) -> dict[str, Price]:
    table = load_price_table(data_dir)
    return {m: price_of(table, PRICE_NAMES[m]) for m in MODELS}


def _correctness(df: pd.DataFrame, path: Path) -> np.ndarray:
    missing = [c for c in ("prompt", *MODELS) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    return df[MODELS].astype(float).to_numpy()


def load_routellm_mmlu(data_dir: Path) -> RoutingDataset:
    folder = dataset_dir(data_dir, FOLDER) / "mmlu"
    files = sorted((folder / "responses").glob("mmlu_*.csv"))
    if not files:
        raise DataError(f"{folder / 'responses'}: no mmlu_*.csv files")
    frames = []
    for path in files:
        df = pd.read_csv(path, keep_default_na=False)
        _correctness(df, path)
        subject = path.stem.removeprefix("mmlu_")
        df["task"] = subject
        df["prompt_id"] = [f"{subject}.{i}" for i in range(len(df))]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df = df[~df["prompt"].isin(contaminated_prompts(folder / "contaminated_prompts.jsonl"))]
    prompt_tokens = estimate_tokens(df["prompt"])
    output_tokens = np.full((len(df), 2), MMLU_OUTPUT_TOKENS)
    return _build("routellm_mmlu", df, _correctness(df, folder), prompt_tokens, output_tokens, data_dir)


def load_routellm_gsm8k(data_dir: Path) -> RoutingDataset:
    folder = dataset_dir(data_dir, FOLDER) / "gsm8k"
    path = require_file(folder / "gsm8k_responses.csv")
    df = pd.read_csv(path, keep_default_na=False)
    _correctness(df, path)
    df["prompt_id"] = [f"gsm8k.{i}" for i in range(len(df))]
    df["task"] = "gsm8k"
    df = df[~df["prompt"].isin(contaminated_prompts(folder / "contaminated_prompts.jsonl"))]
    responses = df[[f"{m}_response" for m in MODELS]].astype(str).to_numpy(dtype=object)
    output_tokens = np.column_stack([estimate_tokens(responses[:, j]) for j in range(2)])
    ds = _build("routellm_gsm8k", df, _correctness(df, path), estimate_tokens(df["prompt"]),
                output_tokens, data_dir)
    ds.responses = responses
    return ds


def _build(name: str, df: pd.DataFrame, quality: np.ndarray, prompt_tokens: np.ndarray,
           output_tokens: np.ndarray, data_dir: Path) -> RoutingDataset:
    prices = _prices(data_dir)
    prompts = pd.DataFrame({"prompt_id": df["prompt_id"].to_numpy(), "text": df["prompt"].to_numpy(),
                            "task": df["task"].to_numpy(), "split": ""})
    return RoutingDataset(
        name=name, prompts=prompts, models=list(MODELS), quality=quality,
        cost=estimated_cost(prompt_tokens, output_tokens, MODELS, prices), cost_estimated=True,
        output_tokens=output_tokens, prices=prices,
    )


# -- MT-Bench ------------------------------------------------------------------------------
_SINGLE = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
_CONVO = re.compile(
    r"<\|The Start of Assistant A's Conversation with User\|>(.*?)<\|The End of Assistant A's Conversation",
    re.S,
)
_TURN_ANSWER = re.compile(r"### Assistant A:\n(.*?)(?=\n\n### User:|\Z)", re.S)


def _answers(judge_prompt: str, turn: int) -> list[str]:
    """The assistant's answer(s) quoted in a judge prompt: [answer 1] or [answer 1, answer 2]."""
    if turn == 1:
        found = _SINGLE.search(judge_prompt)
        return [found.group(1).strip()] if found else []
    convo = _CONVO.search(judge_prompt)
    return [a.strip() for a in _TURN_ANSWER.findall(convo.group(1))] if convo else []


def _mtbench_judgements(folder: Path) -> dict[tuple[int, str, int], dict[str, Any]]:
    """(question_id, model, turn) -> judgement row, with the score checked to be in [1, 10]."""
    path = folder / "judgements.jsonl"
    out: dict[tuple[int, str, int], dict[str, Any]] = {}
    for line, row in enumerate(read_jsonl(path), start=1):
        missing = [f for f in ("question_id", "model", "score", "turn", "user_prompt") if f not in row]
        if missing:
            raise DataError(f"{path}: line {line}: missing fields {missing}")
        if not 1 <= float(row["score"]) <= 10:
            raise DataError(f"{path}: line {line}, field 'score': {row['score']!r} not in [1, 10]")
        out[int(row["question_id"]), str(row["model"]), int(row["turn"])] = row
    return out


def _mtbench_outcomes(
    judgements: dict[tuple[int, str, int], dict[str, Any]], qids: list[int], path: Path
) -> tuple[np.ndarray, ...]:
    """Quality, output tokens, answer-1 tokens and answer-1 text per (question, model)."""
    n = len(qids)
    quality, out_tokens, ans1_tokens = np.full((n, 2), np.nan), np.zeros((n, 2)), np.zeros((n, 2))
    responses = np.full((n, 2), "", dtype=object)
    for i, qid in enumerate(qids):
        for j, model in enumerate(MODELS):
            try:
                turns = [judgements[qid, model, t] for t in (1, 2)]
            except KeyError as exc:
                raise DataError(f"{path}: no judgement for question {qid}, model {model!r}") from exc
            quality[i, j] = (np.mean([float(t["score"]) for t in turns]) - 1.0) / 9.0
            answers = _answers(str(turns[1]["user_prompt"]), 2) or _answers(str(turns[0]["user_prompt"]), 1)
            responses[i, j] = answers[0] if answers else ""
            ans1_tokens[i, j] = estimate_tokens(answers[:1])[0] if answers else 0.0
            out_tokens[i, j] = float(estimate_tokens(answers).sum())
    return quality, out_tokens, ans1_tokens, responses


def load_routellm_mtbench(data_dir: Path) -> RoutingDataset:
    folder = dataset_dir(data_dir, FOLDER) / "mt_bench"
    questions = pd.DataFrame(read_jsonl(folder / "question.jsonl"))
    bad = contaminated_prompts(folder / "contaminated_prompts.jsonl")
    turn1 = questions["turns"].map(lambda t: str(t[0]))
    turn2 = questions["turns"].map(lambda t: str(t[1]))
    keep = ~(turn1.isin(bad) | turn2.isin(bad))
    questions, turn1, turn2 = questions[keep], turn1[keep], turn2[keep]
    qids = [int(q) for q in questions["question_id"]]
    quality, out_tokens, ans1_tokens, responses = _mtbench_outcomes(
        _mtbench_judgements(folder), qids, folder / "judgements.jsonl")
    t1, t2 = estimate_tokens(turn1), estimate_tokens(turn2)
    prices = _prices(data_dir)
    cost = np.column_stack([
        prices[m].cost(2 * t1 + t2 + ans1_tokens[:, j], out_tokens[:, j]) for j, m in enumerate(MODELS)
    ])
    prompts = pd.DataFrame({"prompt_id": [str(q) for q in qids], "text": turn1.to_numpy(),
                            "task": questions["category"].astype(str).to_numpy(), "split": ""})
    return RoutingDataset(
        name="routellm_mtbench", prompts=prompts, models=list(MODELS), quality=quality, cost=cost,
        cost_estimated=True, output_tokens=out_tokens, responses=responses, prices=prices,
    )
