"""``train(router_name, params, dataset)``: embed once, optionally tune by CV, fit, save an artifact.

The artifact directory holds the router's own files (router.json, arrays.npz, library
files) plus ``training.json``: dataset, rows, parameters, tuning scores and fit time, and
``pareto.json``: the knob sweep on the training rows (``training.pareto``, for the dashboard). The
artifact's content version (a hash over every file, ``training.json`` included) is returned in
``TrainResult``, so a served router can be traced back to its training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thalamus.datasets.schema import RoutingDataset
from thalamus.router.base import Router, artifact_version
from thalamus.router.registry import get_router_class, make_router
from thalamus.training.cv import TuneResult, tune
from thalamus.training.pareto import offline_curve, write_curve

TRAINING_FILE = "training.json"


@dataclass
class TrainResult:
    router: Router
    directory: Path
    params: dict[str, Any]
    fit_seconds: float
    version: str
    tuning: TuneResult | None = None
    info: dict[str, Any] = field(default_factory=dict)


def coerce_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Turn CLI strings into the types of the router's __init__ defaults (int, float, bool, None)."""
    defaults = get_router_class(name).param_defaults()
    return {k: _coerce(v, defaults.get(k)) for k, v in params.items()}


def _coerce(value: Any, default: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    for kind in (int, float):
        if isinstance(default, kind) or default is None:
            try:
                return kind(value)
            except ValueError:
                continue
    return value


def train(router_name: str, params: Mapping[str, Any], dataset: RoutingDataset, out: str | Path, *,
          embedder: str | None = None, seed: int = 0, tune_grid: Mapping[str, Sequence[Any]] | None = None,
          do_tune: bool = False, folds: int = 5) -> TrainResult:
    """Fit ``router_name`` on ``dataset`` (tuning first when asked) and save it to ``out``."""
    params = coerce_params(router_name, params)
    if embedder is not None:
        params["embedder"] = embedder
    params["seed"] = seed
    probe = make_router(router_name, **params)
    X = probe.features(dataset.texts)  # embedded once (and cached on disk) for tuning and fitting
    tuning = None
    if do_tune or tune_grid:
        tuning = tune(router_name, dataset, X, params, tune_grid, k=folds, seed=seed)
        params = tuning.best_params
    router = make_router(router_name, **params)
    start = time.perf_counter()
    router.fit(dataset, features=X)
    fit_seconds = time.perf_counter() - start
    directory = router.save(out)
    info = {"router": router_name, "dataset": dataset.name, "rows": dataset.n_prompts,
            "models": dataset.models, "params": router.get_params(), "fit_seconds": fit_seconds,
            "tuning": tuning.to_dict() if tuning else None}
    (directory / TRAINING_FILE).write_text(json.dumps(info, indent=1, default=str))
    write_curve(directory, offline_curve(router, dataset, "train", X))
    return TrainResult(router, directory, router.get_params(), fit_seconds, artifact_version(directory),
                       tuning, info)
