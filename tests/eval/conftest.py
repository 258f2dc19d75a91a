"""Small synthetic RoutingDatasets with known structure for the evaluation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets.schema import RoutingDataset

MODELS = ["tiny", "small", "mid", "large"]
PRICE = np.array([0.001, 0.003, 0.01, 0.03])


def synthetic(n: int = 240, seed: int = 0, models: list[str] | None = None) -> RoutingDataset:
    """Prompts of two tasks: 'code' favours the large model, 'chat' is solved by small ones."""
    rng = np.random.default_rng(seed)
    task = np.where(np.arange(n) % 2 == 0, "code", "chat")
    skill = np.where(task[:, None] == "code", [0.1, 0.3, 0.6, 0.9], [0.7, 0.9, 0.8, 0.75])
    quality = (rng.random((n, 4)) < skill).astype(float)
    cost = PRICE * rng.uniform(0.5, 1.5, (n, 4))
    texts = [f"{t} question {i}: {'def function loop' if t == 'code' else 'hello how are you'} {i * 7}"
             for i, t in enumerate(task)]
    ds = RoutingDataset("synthetic", pd.DataFrame({"text": texts, "task": task}), list(MODELS), quality, cost)
    return ds.select_models(models) if models else ds


@pytest.fixture
def four_models() -> RoutingDataset:
    return synthetic()


@pytest.fixture
def two_models() -> RoutingDataset:
    ds = synthetic(models=["small", "large"])
    ds.name = "synthetic-2"
    return ds


@pytest.fixture
def result_keys() -> set[str]:
    """The keys of one evaluate() result (DESIGN.md section 8 names)."""
    return {"router", "params", "dataset", "source", "seed", "embedder", "split", "models", "single_models",
            "best_single", "oracle", "dataset_oracle", "random", "cost_range", "zero_router_hull",
            "zero_router_aiq", "knob", "points", "two_model", "strong", "weak", "apgr", "cpt_50", "cpt_80",
            "pgr_curve", "hull", "quality_at_max", "cost_at_max", "aiq", "gap_closed",
            "cost_saving_at_best_single", "quality_at_budget", "cost_metrics_skipped", "cost_estimated"}
