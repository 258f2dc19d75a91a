"""The offline cost/quality curve a router artifact carries (``pareto.json``), for the dashboard.

The dashboard's router panel plots what a router realized in production (mean cost per request, mean
feedback score) against what it reached offline. That offline curve is the knob sweep of
``thalamus.eval.sweep`` (every lambda on the grid, the serving policy's own decisions) on a labelled data
set, reduced to its upper hull: small enough to keep inside the artifact directory. ``train`` writes one
on its training rows (``split: "train"``, in-sample, so optimistic); ``write_curve`` takes any labelled
set, e.g. a held-out one (``split: "test"``). The file changes the artifact's content version, so write it
before the artifact is served.

Format (``format: 1``): ``{"format", "dataset", "split", "n", "models", "points": [{"lambda", "cost",
"quality"}], "frontier": {"cost": [...], "quality": [...]}}``; cost is mean USD per prompt, quality
the data set's mean quality (in [0, 1]).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.eval.metrics import upper_hull
from thalamus.eval.sweep import predict, sweep_lambda
from thalamus.router.base import Features, Router

CURVE_FILE = "pareto.json"
FORMAT = 1


def offline_curve(router: Router, dataset: RoutingDataset, split: str, features: Features | None = None
                  ) -> dict[str, Any]:
    """The fitted router's knob sweep on ``dataset`` and its upper hull (the ``pareto.json`` content)."""
    X = router.features(dataset.texts) if features is None else features
    pred = predict(router, X)
    points = sweep_lambda(pred, dataset.quality, dataset.cost, router.models_)
    hull = upper_hull(np.array([p.point.cost for p in points]), np.array([p.point.quality for p in points]))
    return {"format": FORMAT, "dataset": dataset.name, "split": split, "n": int(dataset.n_prompts),
            "models": list(router.models_), "points": [p.to_dict() for p in points], "frontier": hull.to_dict()}


def write_curve(directory: str | Path, curve: dict[str, Any]) -> Path:
    path = Path(directory) / CURVE_FILE
    path.write_text(json.dumps(curve, indent=1, allow_nan=False))
    return path


def read_curve(directory: str | Path) -> dict[str, Any] | None:
    """The artifact's curve, or None when it has none; DataError names the file when it is damaged."""
    path = Path(directory) / CURVE_FILE
    if not path.is_file():
        return None
    try:
        curve = json.loads(path.read_text())
        frontier = curve["frontier"]
        cost, quality = [float(v) for v in frontier["cost"]], [float(v) for v in frontier["quality"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a router curve file ({exc})") from None
    if curve.get("format") != FORMAT or len(cost) != len(quality) or not all(map(math.isfinite, cost + quality)):
        raise DataError(f"{path}: format {curve.get('format')!r} with {len(cost)} costs and {len(quality)} "
                        f"qualities; expected format {FORMAT}, equal lengths, finite numbers")
    out: dict[str, Any] = curve
    return out
