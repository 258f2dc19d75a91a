"""Evaluate one router on one dataset: split, fit, predict once, sweep, score.

``evaluate`` returns one JSON-able dict whose keys are the metric names of DESIGN.md
section 8. The split is the dataset's own train/test split when it has one, otherwise a
split by stable prompt hash (or k folds, pooling every prompt's out-of-fold prediction),
so the same seed gives the same numbers. Routers train on every training prompt; scoring
uses complete test rows only (see ``thalamus.eval.metrics``). The per-query oracle router
is fitted on the test prompts: it is an upper bound, not a learned router.

Every prompt is embedded once, up front, as one job (one progress bar, written to the cache as it
goes), before any fold is fitted. A quality-only dataset (no cost observed at all, which the user
formats allow) is scored on quality alone: rows count as complete when every model's quality is
known, and the cost metrics are reported as None with ``cost_metrics_skipped`` set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.eval import metrics as M
from thalamus.eval.sweep import Predictions, predict, sweep_lambda, sweep_two_model
from thalamus.router.base import Router
from thalamus.router.baselines import OracleRouter
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.registry import make_router

MAX_CURVE_POINTS = 201  # two-model curves are thinned to this many points in the JSON


@dataclass(frozen=True)
class EvalSet:
    """The observed outcomes of the scored prompts (complete rows), in prompt order."""

    models: list[str]
    quality: np.ndarray
    cost: np.ndarray
    tasks: np.ndarray

    @classmethod
    def of(cls, parts: Sequence[RoutingDataset]) -> EvalSet:
        return cls(list(parts[0].models), np.concatenate([p.quality for p in parts]),
                   np.concatenate([p.cost for p in parts]), np.concatenate([p.tasks for p in parts]))


def load(dataset: str | Path | RoutingDataset) -> RoutingDataset:
    """A RoutingDataset as given, or by name or file path through the dataset registry."""
    if isinstance(dataset, RoutingDataset):
        return dataset
    from thalamus.datasets.registry import load_dataset

    return load_dataset(dataset)


def build_router(name: str, params: Mapping[str, Any] | None, seed: int, embedder: str) -> Router:
    """``make_router`` with the run's seed and embedder filled in where the router takes them."""
    from thalamus.router.registry import get_router_class

    given = dict(params or {})
    takes = get_router_class(name).param_names()
    for key, value in (("seed", seed), ("embedder", embedder)):
        if key in takes:
            given.setdefault(key, value)
    return make_router(name, **given)


def splits(ds: RoutingDataset, seed: int, test_size: float, folds: int | None
           ) -> Iterator[tuple[RoutingDataset, RoutingDataset]]:
    if folds:
        yield from ds.kfold(folds, seed=seed)
    else:
        yield ds.train_test(test_size=test_size, seed=seed)


def fit_predict(router_name: str, params: Mapping[str, Any] | None, train: RoutingDataset,
                test: RoutingDataset, seed: int, embedder: str) -> Predictions:
    """Fit a fresh router on ``train`` (the oracle on ``test``) and predict ``test``."""
    router = build_router(router_name, params, seed, embedder)
    X_test = router.features(test.texts)
    if isinstance(router, OracleRouter):
        router.fit(test, features=X_test)
    else:
        if train.n_prompts == 0:
            raise DataError(f"{train.name}: the training split is empty; lower test_size or use folds")
        router.fit(train)
    return predict(router, X_test)


def evaluate(router_name: str, dataset: str | Path | RoutingDataset, params: Mapping[str, Any] | None = None,
             seed: int = 0, test_size: float = 0.3, folds: int | None = None, embedder: str = DEFAULT_EMBEDDER,
             budgets: Sequence[float] = ()) -> dict[str, Any]:
    """Evaluate ``router_name`` on ``dataset``; one JSON-able dict of metrics (see ``score``)."""
    ds = load(dataset)
    quality_only = bool(ds.n_prompts) and bool(np.isnan(ds.cost).all())
    if quality_only:  # cost 0 everywhere: the sweep then ranks on quality, and cost metrics are dropped
        ds = dataclasses.replace(ds, cost=np.zeros_like(ds.cost))
    probe = build_router(router_name, params, seed, embedder)
    if probe.uses_embeddings:
        probe.features(ds.texts)  # the whole embedding job at once; the folds then read the cache
    tests: list[RoutingDataset] = []
    preds: list[Predictions] = []
    n_train = n_dropped = 0
    for train, test in splits(ds, seed, test_size, folds):
        complete = test.complete_rows()
        n_dropped += test.n_prompts - complete.n_prompts
        if complete.n_prompts:
            preds.append(fit_predict(router_name, params, train, complete, seed, embedder))
            tests.append(complete)
        n_train += train.n_prompts
    if not tests:
        raise DataError(f"{ds.name}: no test prompt has every model's quality "
                        f"{'' if quality_only else 'and cost '}observed")
    result: dict[str, Any] = {
        "router": router_name, "params": dict(params or {}), "dataset": ds.name,
        "source": ds.name if isinstance(dataset, RoutingDataset) else str(dataset), "seed": seed,
        "embedder": embedder, "cost_estimated": ds.cost_estimated,
        "split": {"folds": folds, "test_size": None if folds else test_size, "n_train": n_train,
                  "n_test": sum(t.n_prompts for t in tests), "n_test_incomplete_dropped": n_dropped},
    }
    result.update(score(EvalSet.of(tests), Predictions.concat(preds), budgets))
    result["cost_metrics_skipped"] = quality_only
    if quality_only:
        result.update({k: None for k in COST_METRICS})
    return clean(result)


# what a dataset without any cost cannot tell
COST_METRICS = ("aiq", "zero_router_aiq", "cost_at_max", "cost_saving_at_best_single", "quality_at_budget",
                "cost_range")


def score(ev: EvalSet, pred: Predictions, budgets: Sequence[float] = ()) -> dict[str, Any]:
    """Every metric of ../shared/DESIGN.md section 8 for one router's predictions on ``ev``.

    ``gap_closed`` uses the hull's best quality (``quality_at_max``). With two models every
    curve ends at the strong model, so there quality_at_max >= Q_strong and AIQ / gap closed
    reward how early the router gets there; APGR and CPT are the metrics to compare.
    """
    out = references(ev)
    if len(ev.models) == 2:
        hull_points, part = _two_model_part(ev, pred)
    else:
        hull_points, part = _many_model_part(ev, pred)
    out.update(part)
    hull = M.upper_hull(*hull_points)
    best = out["best_single"]
    out.update({
        "hull": hull.to_dict(),
        "quality_at_max": hull.max_quality,
        "cost_at_max": hull.cost_at_max,
        "aiq": M.aiq(hull, tuple(out["cost_range"])),
        "gap_closed": M.gap_closed(hull.max_quality, best["quality"], out["oracle"]["quality"]),
        "cost_saving_at_best_single": M.cost_saving(hull, best["quality"], best["cost"]),
        "quality_at_budget": _budgets(hull, ev, budgets),
    })
    return out


def references(ev: EvalSet) -> dict[str, Any]:
    """The reference points every table and plot shows, computed on the scored prompts."""
    q, c = ev.quality, ev.cost
    singles = M.single_model_points(q, c)
    b = M.best_single(q, c)
    d_choice, per_task = M.dataset_oracle(q, c, ev.tasks)
    zero = M.zero_router(q, c)
    cost_range = M.cost_range_of(np.array([p.cost for p in singles]))
    return {
        "models": ev.models,
        "single_models": {m: p.to_dict() for m, p in zip(ev.models, singles, strict=True)},
        "best_single": {"model": ev.models[b], **singles[b].to_dict()},
        "oracle": M.operating_point(q, c, M.per_query_oracle(q, c)).to_dict(),
        "dataset_oracle": {**M.operating_point(q, c, d_choice).to_dict(),
                           "per_task": {t: ev.models[i] for t, i in per_task.items()}},
        "random": M.random_point(q, c).to_dict(),
        "cost_range": list(cost_range),
        "zero_router_hull": zero.to_dict(),
        "zero_router_aiq": M.aiq(zero, cost_range),
    }


def _many_model_part(ev: EvalSet, pred: Predictions) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    points = sweep_lambda(pred, ev.quality, ev.cost, ev.models)
    costs = np.array([p.point.cost for p in points])
    quals = np.array([p.point.quality for p in points])
    part: dict[str, Any] = {"knob": "lambda", "points": [p.to_dict() for p in points], "two_model": False,
                            "strong": None, "weak": None, "apgr": None, "cpt_50": None, "cpt_80": None,
                            "pgr_curve": None}
    return (costs, quals), part


def _two_model_part(ev: EvalSet, pred: Predictions) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    strong, weak = M.strong_weak(ev.quality, ev.cost)
    curve = sweep_two_model(pred, ev.quality, ev.cost, strong)
    pgr = curve.pgr
    keep = np.unique(np.linspace(0, len(pgr) - 1, min(len(pgr), MAX_CURVE_POINTS)).round().astype(int))
    part: dict[str, Any] = {
        "knob": "call_share",
        "points": [{"call_share": float(curve.call_share[k]), "quality": float(curve.quality[k]),
                    "cost": float(curve.cost[k])} for k in keep],
        "two_model": True, "strong": ev.models[strong], "weak": ev.models[weak],
        "apgr": M.apgr(curve.call_share, pgr),
        "cpt_50": M.cpt(curve.call_share, pgr, 0.5),
        "cpt_80": M.cpt(curve.call_share, pgr, 0.8),
        "pgr_curve": {"call_share": curve.call_share[keep].tolist(), "pgr": pgr[keep].tolist()},
    }
    return (curve.cost, curve.quality), part


def _budgets(hull: M.Hull, ev: EvalSet, budgets: Sequence[float]) -> list[dict[str, Any]]:
    """Hull value at each single model's mean cost, then at the budgets asked for."""
    singles = M.single_model_points(ev.quality, ev.cost)
    rows = [{"label": f"cost of {m}", "budget": p.cost, "quality": M.quality_at_budget(hull, p.cost)}
            for m, p in zip(ev.models, singles, strict=True)]
    rows += [{"label": f"${b:g}", "budget": float(b), "quality": M.quality_at_budget(hull, float(b))}
             for b in budgets]
    return rows


def clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
