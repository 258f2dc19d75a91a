"""A small, fixed slice of routerbench_subset shared by the router tests (hashing embeddings)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.router.embedders import get_embedder


@cache
def routerbench_slice(data_dir: Path, every: int = 4) -> tuple[RoutingDataset, np.ndarray]:
    """Every ``every``-th prompt of routerbench_subset and its hashing embeddings."""
    ds = load_dataset("routerbench_subset", data_dir)
    ds = ds.subset(np.arange(0, ds.n_prompts, every), name=f"routerbench_subset[::{every}]")
    return ds, get_embedder("hashing").embed(ds.texts)


def split(ds: RoutingDataset, X: np.ndarray, test_every: int = 3) -> tuple[RoutingDataset, np.ndarray,
                                                                          RoutingDataset, np.ndarray]:
    test = np.arange(ds.n_prompts) % test_every == 0
    return ds.subset(~test), X[~test], ds.subset(test), X[test]


def brier(pred: np.ndarray, truth: np.ndarray) -> float:
    seen = ~np.isnan(truth)
    return float(np.mean((pred[seen] - truth[seen]) ** 2))
