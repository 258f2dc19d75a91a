"""Ledger rows with feedback as a RoutingDataset, for re-training a router on what was served.

One prompt per distinct prompt text; each model's column holds the mean feedback score of that
prompt's requests the model answered (each request counts once, with the mean of its own feedback)
and their mean cost, so feedback on a second model for the same prompt is kept. Models that never
answered the prompt are unobserved (NaN). The ledger does not know a prompt's task, so ``task`` is
empty (the router that served it is not a task).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError


def export_dataset(df: pd.DataFrame, where: str, name: str = "ledger") -> RoutingDataset:
    """``df``: request rows joined with their mean feedback ``score`` (Ledger.rows_with_feedback)."""
    if df.empty:
        raise DataError(f"{where}: no ledger rows have feedback yet; POST /v1/feedback first")
    df = df[df["prompt_text"].notna() & df["chosen_model"].notna()]
    if df.empty:
        raise DataError(f"{where}: rows with feedback have no stored prompt text; set "
                        "ledger.store_prompts: true in the gateway config to export training data")
    df = df.sort_values(["created_at", "id"])
    # the first request of each prompt names it; prompts keep the order they were first seen in
    prompts = df.drop_duplicates("prompt_text")[["id", "prompt_text"]].reset_index(drop=True)
    models = sorted(df["chosen_model"].unique())
    cells = (df.assign(cost_usd=pd.to_numeric(df["cost_usd"], errors="coerce"),
                       score=pd.to_numeric(df["score"], errors="coerce"))
             .groupby(["prompt_text", "chosen_model"])[["score", "cost_usd"]].mean())
    row_of = {text: i for i, text in enumerate(prompts["prompt_text"])}
    col_of = {m: j for j, m in enumerate(models)}
    quality = np.full((len(prompts), len(models)), np.nan)
    cost = np.full((len(prompts), len(models)), np.nan)
    for (text, model), score, spend in zip(cells.index, cells["score"], cells["cost_usd"], strict=True):
        quality[row_of[text], col_of[model]] = score
        cost[row_of[text], col_of[model]] = spend
    frame = pd.DataFrame({"prompt_id": prompts["id"].to_numpy(), "text": prompts["prompt_text"].to_numpy(),
                          "task": "", "split": ""})
    return RoutingDataset(name=name, prompts=frame, models=models, quality=quality, cost=cost,
                          cost_estimated=bool(df["cost_estimated"].fillna(False).astype(bool).any()))
