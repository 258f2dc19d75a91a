"""Re-training that keeps what the router knew: logged feedback corrects a prior router's predictions.

Bandit feedback observes one model per request. Fitting a router on those sparse rows (the ``ips``
method of ``thalamus.training.retrain``) lets a model seen once in a prompt's neighbourhood, with one
lucky score, look better than the model the router knew well, and the loop lost reward to it
(benchmarks/results/loop_shift.md). This method fills every cell of every logged prompt instead:

- the prior: a router's predicted quality and cost of each model on the logged prompt (the router
  trained on the base data, or the serving artifact; without one, each model's logged mean);
- the correction: for the ``neighbours`` most similar logged prompts N(x) (cosine on the trained router's
  embedder; prompts that embed alike all count, so ties are never cut arbitrarily), residuals
  ``r = observed mean - prior`` with ``n`` feedback requests each, and

      pooled(x)   = sum_{N(x), all models} n r / (sum n + 1)
      delta_m(x)  = (sum_{N(x)} n_m r_m + strength * pooled(x)) / (sum_{N(x)} n_m + strength)
      quality_m(x) = clip(prior_m(x) + delta_m(x), 0, 1)

  A model observed often near x gets its observed mean; one observed rarely keeps its prior, moved by
  how much better or worse than the prior every observed model did near x (a region that is harder
  than the prior thought is harder for the unobserved models too: correcting only the observed ones
  made the router walk from model to model). Costs are corrected the same way, shrunk toward the prior.

The filled rows (one per distinct logged prompt) and the base data train any router, as ``thalamus
train`` would. No inverse-propensity weights: within a neighbourhood the serving policy picked by the
prompt, so an observed mean estimates that model's mean there; propensities are for ``thalamus ope``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.ledger.embedding import decode_embedding
from thalamus.router.base import Router
from thalamus.router.embedders import get_embedder
from thalamus.training.retrain import TrainingSet, features_for, observations, union


@dataclass
class LoggedCells:
    """Logged observations per distinct prompt: means and request counts per model (NaN / 0 unobserved)."""

    ids: list[str]
    texts: list[str]
    context: list[np.ndarray | None]  # the stored embedding of a prompt kept without text
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray
    count: np.ndarray

    def dataset(self, quality: np.ndarray, cost: np.ndarray) -> RoutingDataset:
        frame = pd.DataFrame({"prompt_id": self.ids, "text": self.texts, "task": "", "split": ""})
        return RoutingDataset("ledger", frame, self.models, quality, cost)


def logged_cells(df: pd.DataFrame, models: list[str]) -> LoggedCells:
    """``df``: ``retrain.observations``; ``models``: the columns (every logged model must be one)."""
    keys = list(dict.fromkeys(df["key"]))
    row, col = {k: i for i, k in enumerate(keys)}, {m: j for j, m in enumerate(models)}
    shape = (len(keys), len(models))
    quality, cost, count = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape)
    cells = df.groupby(["key", "chosen_model"], sort=False).agg(
        score=("score", "mean"), spend=("cost_usd", "mean"), n=("score", "size"))
    for (key, model), score, spend, n in zip(cells.index, cells["score"], cells["spend"], cells["n"], strict=True):
        i, j = row[key], col[model]
        quality[i, j], cost[i, j], count[i, j] = score, spend, n
    first = df.drop_duplicates("key").set_index("key")
    texts = [k[2:] if k.startswith("t:") else "" for k in keys]
    context = [None if t else _stored(first.loc[k].get("embedding")) for k, t in zip(keys, texts, strict=True)]
    return LoggedCells([str(first.loc[k, "id"]) for k in keys], texts, context, models, quality, cost, count)


def _stored(value: object) -> np.ndarray | None:
    return decode_embedding(value) if isinstance(value, str) else None


def prior_predictions(prior: Router | None, df: pd.DataFrame, cells: LoggedCells) -> tuple[np.ndarray, np.ndarray]:
    """(quality, cost) of every model on every logged prompt before feedback; a model the prior does not
    know (or no prior) gets its mean logged quality and cost."""
    quality = np.tile(_column_means(cells.quality, float(np.nanmean(cells.quality))), (len(cells.ids), 1))
    cost = np.tile(_column_means(cells.cost, 0.0), (len(cells.ids), 1))
    if prior is None:
        return quality, cost
    text_only = all(c is None for c in cells.context)
    X = prior.features(cells.texts) if text_only else features_for(prior, df, cells.texts, cells.context)
    q, c = prior.predict_from_features(X)
    for j, model in enumerate(prior.models_):
        if model in cells.models:
            quality[:, cells.models.index(model)] = q[:, j]
            cost[:, cells.models.index(model)] = c[:, j]
    return quality, cost


def _column_means(values: np.ndarray, fill: float) -> np.ndarray:
    seen = np.isfinite(values)
    total = np.where(seen, values, 0.0).sum(axis=0)
    return np.where(seen.any(axis=0), total / np.maximum(seen.sum(axis=0), 1), fill)


def neighbour_features(router: Router, df: pd.DataFrame, cells: LoggedCells) -> np.ndarray:
    """What similarity is measured on: the router's embeddings (its embedder's, for text routers)."""
    if router.uses_embeddings or any(c is not None for c in cells.context):
        return features_for(router, df, cells.texts, cells.context)
    return np.asarray(get_embedder(router.embedder).embed(cells.texts), dtype=np.float64)


@dataclass
class Points:
    """Distinct embeddings of the logged prompts (prompts that embed alike are one point) and, per point,
    its ``neighbours``: the nearest points, in order, until they hold at least k prompts (ties included)."""

    of_prompt: np.ndarray  # (n,) the point of each prompt
    neighbours: list[np.ndarray]


def points(X: np.ndarray, k: int) -> Points:
    """Neighbourhoods by cosine similarity, ties included: a prompt's k nearest would otherwise be an
    arbitrary (insertion-ordered) cut through prompts that embed alike (a shared few-shot prefix longer
    than the embedder reads), and would never include newer feedback."""
    import faiss

    from thalamus.router.knn import normalise

    emb = normalise(X)
    _, first, of_prompt = np.unique(np.round(emb, 5), axis=0, return_index=True, return_inverse=True)
    size = np.bincount(of_prompt.ravel(), minlength=len(first))
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb[first]))
    _, idx = index.search(np.ascontiguousarray(emb[first]), min(k, len(first)))
    held = np.cumsum(size[idx], axis=1)
    neighbours = [row[:int(np.searchsorted(c, min(k, c[-1]))) + 1] for row, c in zip(idx, held, strict=True)]
    return Points(of_prompt.ravel(), neighbours)


def corrected(cells: LoggedCells, prior_q: np.ndarray, prior_c: np.ndarray, pts: Points,
              strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Every cell's corrected (quality, cost): the module docstring's formulas, per point."""
    n_points = len(pts.neighbours)

    def per_point(values: np.ndarray) -> np.ndarray:
        out = np.zeros((n_points, values.shape[1]))
        np.add.at(out, pts.of_prompt, values)
        return out

    count = per_point(cells.count)
    rq = per_point(np.nan_to_num(cells.quality - prior_q) * cells.count)
    rc = per_point(np.nan_to_num(cells.cost - prior_c) * cells.count)
    dq, dc = np.zeros_like(rq), np.zeros_like(rc)
    for p, nb in enumerate(pts.neighbours):
        n, sq, sc = count[nb].sum(axis=0), rq[nb].sum(axis=0), rc[nb].sum(axis=0)
        pooled = sq.sum() / (n.sum() + 1.0)
        dq[p], dc[p] = (sq + strength * pooled) / (n + strength), sc / (n + strength)
    quality = prior_q + dq[pts.of_prompt]
    cost = prior_c + dc[pts.of_prompt]
    return np.clip(quality, 0.0, 1.0), np.maximum(cost, 0.0)


def shrunk_training_set(rows: pd.DataFrame, router: Router, prior: Router | None = None,
                        base: RoutingDataset | None = None, neighbours: int = 50, strength: float = 10.0
                        ) -> TrainingSet:
    """``rows``: Ledger.rows_with_feedback(); ``router`` (unfitted) decides the features; ``prior``: a
    fitted router whose predictions the feedback corrects (None: each model's logged mean)."""
    if rows.empty:
        raise DataError("the ledger has no rows with feedback; POST /v1/feedback first")
    if neighbours < 1 or strength < 0:
        raise DataError(f"retrain: neighbours must be >= 1 and strength >= 0, got {neighbours} and {strength}")
    df = observations(rows)
    known = (list(base.models) if base is not None else []) + (list(prior.models_) if prior is not None else [])
    models = list(dict.fromkeys(known + sorted(df["chosen_model"].unique())))
    cells = logged_cells(df, models)
    prior_q, prior_c = prior_predictions(prior, df, cells)
    X = neighbour_features(router, df, cells)
    quality, cost = corrected(cells, prior_q, prior_c, points(X, neighbours), strength)
    logged = cells.dataset(quality, cost)
    data = logged if base is None else union(base, logged)
    features = None
    if any(c is not None for c in cells.context):
        base_x = router.features(base.texts) if base is not None else np.zeros((0, X.shape[1]))
        features = np.vstack([np.asarray(base_x, dtype=np.float64), X])
    return TrainingSet(data, features, len(df), len(cells.ids), 0 if base is None else base.n_prompts)
