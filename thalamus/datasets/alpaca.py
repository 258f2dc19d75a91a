"""Loader for alpaca_eval: AlpacaEval 2.0 judge preferences of 58 models vs GPT-4-Turbo, 805 prompts.

quality = ``preference - 1`` = the GPT-4-Turbo judge's probability that the model's answer beats
the reference answer of ``gpt4_1106_preview``. Dropped (SOURCE.md): ``NullModel`` (generator
``example``, an adversarial cheating entry), ``gpt4_gamed``, every ``*_concise`` / ``*_verbose``
prompt-manipulated variant, and ``gpt4_1106_preview`` itself (the baseline judged against
itself, always 0.5). 48 models remain; a few (model, instruction) pairs are absent in the
source and stay NaN in quality, cost and output tokens. task = the ``dataset`` column.

Cost is estimated (``cost_estimated=True``): output tokens = ceil(``output_2_chars`` / 4),
input tokens = ceil(instruction characters / 4), priced per model by ``model_price`` below.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from thalamus.datasets.common import (
    dataset_dir,
    estimate_tokens,
    estimated_cost,
    require_file,
    tokens_from_chars,
)
from thalamus.datasets.pricing import load_price_table, price_of
from thalamus.datasets.schema import Price, RoutingDataset
from thalamus.errors import DataError

FOLDER = "alpaca_eval"
NAME = "alpaca_eval"
BASELINE = "gpt4_1106_preview"
DROPPED_DIRS = frozenset({"NullModel", "gpt4_gamed", BASELINE})
ANNOTATIONS = "weighted_alpaca_eval_gpt4_turbo_annotations.parquet"

# AlpacaEval names -> RouterArena price names: the same model, or the closest successor the
# table has for retired API models (Claude 1/2 -> Claude 3.7 Sonnet, Claude Instant -> Claude 3
# Haiku, davinci / gpt-3.5-instruct -> gpt-3.5-turbo).
PRICE_ALIASES = {
    "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-0301": "gpt-3.5-turbo",
    "gpt35_turbo_instruct": "gpt-3.5-turbo",
    "text_davinci_001": "gpt-3.5-turbo",
    "text_davinci_003": "gpt-3.5-turbo",
    "claude": "claude-3-7-sonnet-20250219",
    "claude-2": "claude-3-7-sonnet-20250219",
    "claude-2.1": "claude-3-7-sonnet-20250219",
    "claude-instant-1.2": "claude-3-haiku-20240307",
}
# Open models are priced by parameter count (parsed from the name, e.g. "13b") as the
# RouterArena open model of the nearest size: <= 4B, <= 10B, <= 40B, larger; names without
# a size (jina-chat) get the <= 10B tier.
SIZE_TIERS = ((4.0, "llama-3-2-3b-instruct"), (10.0, "llama-3-1-8b-instruct"),
              (40.0, "mistralai/mixtral-8x7b-instruct"), (float("inf"), "llama-3-3-70b-instruct"))
_SIZE = re.compile(r"(\d+(?:\.\d+)?)b(?![a-z])", re.I)


def is_dropped(results_dir: str) -> bool:
    return (results_dir in DROPPED_DIRS or results_dir.endswith("_concise")
            or results_dir.endswith("_verbose"))


def model_price(model: str, table: dict[str, Price]) -> Price:
    """The price used for an AlpacaEval model (see PRICE_ALIASES and SIZE_TIERS)."""
    if model in PRICE_ALIASES:
        return price_of(table, PRICE_ALIASES[model])
    sizes = [float(s) for s in _SIZE.findall(model)]
    size = max(sizes) if sizes else 7.0
    return price_of(table, next(name for limit, name in SIZE_TIERS if size <= limit))


def _responses(raw: np.ndarray) -> np.ndarray:
    """Answer texts with None (not NaN) where a model has no answer, so Parquet stores nulls."""
    out = raw.astype(object)
    out[pd.isna(out)] = None
    return out


def load_alpaca_eval(data_dir: Path) -> RoutingDataset:
    folder = dataset_dir(data_dir, FOLDER)
    path = require_file(folder / ANNOTATIONS)
    ann = pd.read_parquet(path, columns=["instruction_id", "dataset", "generator_2", "preference",
                                         "results_dir", "output_2", "output_2_chars"])
    ann = ann[~ann["results_dir"].map(is_dropped)]
    instr = pd.read_json(require_file(folder / "instructions.jsonl"), lines=True, dtype={"instruction": str})
    instr = instr.sort_values("instruction_id").reset_index(drop=True)
    dup = ann.duplicated(["instruction_id", "generator_2"])
    if dup.any():
        row = ann[dup].iloc[0]
        raise DataError(f"{path}: two rows for instruction {row.instruction_id}, model {row.generator_2!r}")
    models = sorted(ann["generator_2"].unique())

    def matrix(col: str) -> np.ndarray:
        wide = ann.pivot(index="instruction_id", columns="generator_2", values=col)
        return wide.reindex(index=instr["instruction_id"], columns=models).to_numpy()

    quality = matrix("preference").astype(np.float64) - 1.0
    output_tokens = tokens_from_chars(matrix("output_2_chars").astype(np.float64))
    table = load_price_table(data_dir)
    prices = {m: model_price(m, table) for m in models}
    prompt_tokens = estimate_tokens(instr["instruction"])
    cost = estimated_cost(prompt_tokens, output_tokens, models, prices)
    prompts = pd.DataFrame({"prompt_id": instr["instruction_id"].astype(str), "text": instr["instruction"],
                            "task": instr["dataset"].astype(str), "split": ""})
    return RoutingDataset(
        name=NAME, prompts=prompts, models=models, quality=quality, cost=cost, cost_estimated=True,
        output_tokens=output_tokens, responses=_responses(matrix("output_2")), prices=prices,
    )
