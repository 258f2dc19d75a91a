"""Re-training on what the gateway served: base data plus every logged (prompt, model, feedback) triple.

Each answered request with feedback is one observation of (prompt, model that answered, mean of its
feedback scores, its cost). Observations are grouped by prompt (its stored text, else its keyed hash)
and model, so feedback on several models of one prompt is all kept. Under exploration, the serving
policy over-represents the models it prefers; each observation is weighted by its clipped inverse
propensity ``min(1 / p, clip)`` (p = 1 for deterministic rows, so they weigh 1). Routers fit without
sample weights, so a weight becomes repetition: a (prompt, model) cell of weight w appears in
``round(w)`` copies of the prompt row (the other cells of the extra copies are unobserved).

Prompts stored only as embeddings (``ledger.store_embeddings`` without ``store_prompts``) train
embedding routers whose embedder made them; the features are then passed to ``fit`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.ledger.embedding import decode_embedding
from thalamus.router.base import Router


@dataclass
class TrainingSet:
    dataset: RoutingDataset
    features: np.ndarray | None  # None: fit embeds dataset.texts itself
    logged_requests: int
    logged_prompts: int
    base_prompts: int


def observations(rows: pd.DataFrame, clip: float = 10.0, ips: bool = False) -> pd.DataFrame:
    """Answered rows with feedback, keyed by prompt (``key``), with their IPS ``weight``, oldest first."""
    df = rows[(rows["status"] == 200) & rows["chosen_model"].notna()].copy()
    if df.empty:
        raise DataError("no answered ledger rows with feedback to re-train on; POST /v1/feedback first")
    has_text = df["prompt_text"].notna() if "prompt_text" in df else pd.Series(False, index=df.index)
    df["key"] = np.where(has_text, "t:" + df["prompt_text"].fillna(""), "h:" + df["prompt_hash"].fillna(df["id"]))
    p = pd.to_numeric(df["probability"], errors="coerce").fillna(1.0).clip(lower=1e-12)
    df["weight"] = np.minimum(1.0 / p, clip) if ips else 1.0
    df["cost_usd"] = pd.to_numeric(df["cost_usd"], errors="coerce")
    return df.sort_values(["created_at", "id"])


def _ledger_dataset(df: pd.DataFrame) -> tuple[RoutingDataset, list[np.ndarray | None]]:
    cells = df.groupby(["key", "chosen_model"]).agg(score=("score", "mean"), cost=("cost_usd", "mean"),
                                                    weight=("weight", "mean"))
    first = df.drop_duplicates("key").set_index("key")
    models = sorted(df["chosen_model"].unique())
    texts, ids, quality, cost, context = [], [], [], [], []
    for key, group in cells.groupby(level=0, sort=False):
        reps = np.maximum(np.rint(group["weight"].to_numpy()), 1).astype(int)
        head = first.loc[str(key)]
        for k in range(int(reps.max())):
            q, c = np.full(len(models), np.nan), np.full(len(models), np.nan)
            for (_, model), score, spend, r in zip(group.index, group["score"], group["cost"], reps, strict=True):
                if r > k:
                    q[models.index(model)], c[models.index(model)] = score, spend
            texts.append(str(key)[2:] if str(key).startswith("t:") else "")
            ids.append(f"{head['id']}#{k}")
            quality.append(q)
            cost.append(c)
            emb = head.get("embedding")  # the context of a prompt without text
            context.append(decode_embedding(emb) if isinstance(emb, str) and not texts[-1] else None)
    frame = pd.DataFrame({"prompt_id": ids, "text": texts, "task": "", "split": ""})
    data = RoutingDataset("ledger", frame, models, np.array(quality), np.array(cost))
    return data, context


def union(base: RoutingDataset, logged: RoutingDataset) -> RoutingDataset:
    models = list(base.models) + [m for m in logged.models if m not in base.models]

    def widen(d: RoutingDataset, arr: np.ndarray) -> np.ndarray:
        out = np.full((d.n_prompts, len(models)), np.nan)
        out[:, [models.index(m) for m in d.models]] = arr
        return out

    prompts = pd.concat([base.prompts, logged.prompts], ignore_index=True)
    return RoutingDataset(f"{base.name}+ledger", prompts, models,
                          np.vstack([widen(base, base.quality), widen(logged, logged.quality)]),
                          np.vstack([widen(base, base.cost), widen(logged, logged.cost)]), prices=base.prices)


def training_set(rows: pd.DataFrame, router: Router, base: RoutingDataset | None = None, clip: float = 10.0,
                 ips: bool = True) -> TrainingSet:
    """``rows``: Ledger.rows_with_feedback(). ``router`` (unfitted) decides how prompts become features."""
    if rows.empty:
        raise DataError("the ledger has no rows with feedback; POST /v1/feedback first")
    df = observations(rows, clip, ips)
    logged, context = _ledger_dataset(df)
    data = logged if base is None else union(base, logged)
    features = None
    if any(c is not None for c in context):
        padded: list[np.ndarray | None] = [None] * (data.n_prompts - logged.n_prompts)
        features = features_for(router, df, data.texts, padded + context)
    return TrainingSet(data, features, len(df), int(df["key"].nunique()), 0 if base is None else base.n_prompts)


def features_for(router: Router, df: pd.DataFrame, texts: list[str], context: list[np.ndarray | None]
                 ) -> np.ndarray:
    """``router``'s features of prompts: stored embeddings where a prompt has no text (they must be the
    router's embedder's; ``context`` holds them, None where the prompt has text), else embedded."""
    own = router._embedder().id if router.uses_embeddings else None
    stored = set(df.loc[df["embedding"].notna(), "embedder_id"]) if "embedder_id" in df else set()
    if not router.uses_embeddings or stored - {own}:
        raise DataError(f"some logged prompts are stored only as embeddings of {sorted(map(str, stored))}; "
                        f"{type(router).name} with embedder {router.embedder!r} ({own}) cannot use them: "
                        "re-train an embedding router with that embedder, or store prompts")
    todo = [i for i, c in enumerate(context) if c is None]
    embedded = router.features([texts[i] for i in todo]) if todo else np.zeros((0, 0))
    out = list(context)
    for i, v in zip(todo, embedded, strict=True):
        out[i] = np.asarray(v, dtype=np.float64)
    return np.stack([np.asarray(v, dtype=np.float64) for v in out])
