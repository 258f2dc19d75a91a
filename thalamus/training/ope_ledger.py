"""Ledger rows -> the bandit log that ``ope`` estimates on, and a candidate router -> its policy on it.

A row is usable when it was routed (router, candidates, probability), answered 200 by the model the
policy chose (a fallback to another model is not the logged action: such rows are left out and
counted), and has feedback (the mean of its scores is the reward). Each row's logged distribution is
the candidates' ``p`` (recorded since the learning loop); older rows without it are taken as
deterministic when their probability is 1 and as unknown otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from thalamus.errors import DataError
from thalamus.ledger.embedding import decode_embedding
from thalamus.router.base import Router
from thalamus.router.policy import Knob, choose
from thalamus.training.ope import LoggedBandit


@dataclass
class LedgerLog:
    """The bandit log plus what a candidate router needs to decide on the same rows."""

    log: LoggedBandit
    ids: list[str]
    texts: list[str | None]
    embeddings: list[str | None]
    embedder_ids: list[str | None]
    knob: Knob
    skipped: dict[str, int] = field(default_factory=dict)


def _usable(df: pd.DataFrame, router: str | None) -> tuple[pd.DataFrame, dict[str, int]]:
    skipped: dict[str, int] = {}

    def keep(mask: pd.Series, reason: str) -> pd.DataFrame:
        skipped[reason] = int((~mask).sum())
        return df[mask]

    df = keep(df["router"].notna() & df["candidates"].notna() & df["probability"].notna(), "not routed")
    if router is not None:
        df = keep(df["router"] == router, f"served by another router than {router}")
    df = keep(df["status"] == 200, "not answered 200")
    first = df["fallback_chain"].map(lambda s: (json.loads(s) or [{}])[0].get("model") if s else None)
    df = keep(first.isna() | (first == df["chosen_model"]), "answered by a fallback model")
    return df.sort_values(["created_at", "id"]), {k: v for k, v in skipped.items() if v}


def _knob(raw: Any) -> Knob:
    d = json.loads(raw) if isinstance(raw, str) else {}
    value = d.get("value")
    return Knob(d.get("kind", "lambda"), float(value) if value is not None else float("inf"), d.get("strong"),
                d.get("max_cost"), tuple(d["allowed"]) if d.get("allowed") is not None else None,
                tuple(d.get("excluded") or ()))


def load_log(rows: pd.DataFrame, where: str, router: str | None = None) -> LedgerLog:
    """``rows``: Ledger.rows_with_feedback(). Raises DataError naming the ledger when nothing is usable."""
    if rows.empty:
        raise DataError(f"{where}: no ledger rows have feedback; POST /v1/feedback first")
    df, skipped = _usable(rows, router)
    if df.empty:
        raise DataError(f"{where}: no routed, answered rows with feedback to evaluate on (left out: {skipped})")
    cands = [json.loads(c) for c in df["candidates"]]
    models = sorted({m for c in cands for m in c})
    col = {m: j for j, m in enumerate(models)}
    n, m = len(df), len(models)
    pq, pc, lp = np.full((n, m), np.nan), np.full((n, m), np.nan), np.zeros((n, m))
    action = np.array([col[a] for a in df["chosen_model"]])
    prob = df["probability"].to_numpy(dtype=np.float64)
    for i, c in enumerate(cands):
        has_p = all("p" in v for v in c.values())
        for name, v in c.items():
            j = col[name]
            pq[i, j], pc[i, j] = v.get("quality", np.nan), v.get("cost", np.nan)
            lp[i, j] = v["p"] if has_p else (0.0 if prob[i] >= 1 else np.nan)
        lp[i, action[i]] = prob[i]
    log = LoggedBandit(models, action, prob, df["score"].to_numpy(dtype=np.float64),
                       pd.to_numeric(df["cost_usd"], errors="coerce").fillna(0.0).to_numpy(dtype=np.float64),
                       pq, pc, lp)
    return LedgerLog(log, df["id"].tolist(), _strings(df, "prompt_text"), _strings(df, "embedding"),
                     _strings(df, "embedder_id"), _knob(df["knob"].iloc[0]), skipped)


def _strings(df: pd.DataFrame, column: str) -> list[str | None]:
    values = df[column].tolist() if column in df.columns else [None] * len(df)
    return [v if isinstance(v, str) else None for v in values]


def with_models(log: LoggedBandit, models: list[str]) -> LoggedBandit:
    """The log widened to also name ``models`` (never logged: probability 0, no prediction)."""
    extra = [m for m in models if m not in log.models]
    if not extra:
        return log
    pad = np.full((log.n, len(extra)), np.nan)
    return LoggedBandit(log.models + extra, log.action, log.propensity, log.reward, log.cost,
                        np.hstack([log.pred_quality, pad]), np.hstack([log.pred_cost, pad]),
                        np.hstack([log.logging_p, np.zeros_like(pad)]))


def candidate_features(router: Router, ll: LedgerLog) -> Any:
    """The candidate's features for every row: stored embeddings of its own embedder, else embedded text."""
    if not router.uses_embeddings:
        missing = [i for i, t in zip(ll.ids, ll.texts, strict=True) if t is None]
        if missing:
            raise DataError(f"request {missing[0]}: {type(router).name} reads prompt text and the row has "
                            "none (ledger.store_prompts was off)")
        return list(ll.texts)
    own = getattr(router, "embedder_id_", None)
    out: list[np.ndarray | None] = [decode_embedding(e) if e and eid == own else None
                                    for e, eid in zip(ll.embeddings, ll.embedder_ids, strict=True)]
    todo = [i for i, v in enumerate(out) if v is None]
    for i in todo:
        if ll.texts[i] is None:
            raise DataError(f"request {ll.ids[i]}: no prompt text and no embedding of {own!r} stored; "
                            "this candidate cannot be evaluated on it")
    if todo:
        for i, v in zip(todo, router.features([ll.texts[i] or "" for i in todo]), strict=True):
            out[i] = np.asarray(v, dtype=np.float64)
    return np.stack([np.asarray(v) for v in out])


def candidate_policy(router: Router, knob: Knob, ll: LedgerLog) -> tuple[LoggedBandit, np.ndarray]:
    """The log widened to the candidate's models and the candidate's (deterministic) choice on every row."""
    X = candidate_features(router, ll)
    knob = _restrict(knob, router.models_)
    if type(router).route_features is Router.route_features:
        q, c = router.predict_from_features(X)
        picks = [router.models_[j] for j in choose(q, c, knob, router.models_, router.cost_scale_)]
    else:  # routers that decide differently from their predictions (bandits) decide row by row
        picks = [router.route_features(X[i:i + 1], knob).model for i in range(len(ll.ids))]
    log = with_models(ll.log, router.models_)
    col = {name: j for j, name in enumerate(log.models)}
    pi = np.zeros((log.n, len(log.models)))
    pi[np.arange(log.n), [col[p] for p in picks]] = 1.0
    return log, pi


def _restrict(knob: Knob, models: list[str]) -> Knob:
    """The logged knob's allowed set, cut to the models this candidate knows."""
    if knob.allowed is None:
        return knob
    allowed = tuple(m for m in knob.allowed if m in models) or None
    return Knob(knob.kind, knob.value, knob.strong, knob.max_cost, allowed, knob.excluded)


def knob_utility(knob: Knob, cost_scale: float) -> Any:
    """The knob's per-request utility of (quality, cost): what 'utility under its knob' means."""
    if knob.kind == "lambda":
        return lambda q, c: (1 - knob.value) * q - knob.value * c / cost_scale
    if knob.kind == "wtp":
        return (lambda q, c: -c) if knob.value == 0 else (lambda q, c: q - c / knob.value)
    return lambda q, c: q  # a threshold knob trades no cost: its utility is quality
