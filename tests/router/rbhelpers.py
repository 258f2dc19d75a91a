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


FILLER = ("please", "tell", "me", "about", "the", "history", "of", "a", "small", "town", "river",
          "bridge", "winter", "garden", "quickly", "explain", "why", "how", "someone", "would")


def word_dataset(n: int = 240, seed: int = 0, filler: int = 6, tagged: bool = True,
                 unobserved_every: int = 0) -> RoutingDataset:
    """Model 'alpha' answers prompts that mention 'giraffe'; 'beta' those that mention 'volcano'.

    ``filler`` random words around the key word; ``tagged`` appends ``#i`` so texts are unique
    (untagged texts can repeat and get ids ``p{i}``); every ``unobserved_every``-th row has
    beta's outcome unobserved (NaN).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    texts, quality = [], []
    for i in range(n):
        key = "giraffe" if i % 2 == 0 else "volcano"
        words = list(rng.choice(FILLER, size=filler))
        words.insert(int(rng.integers(0, filler + 1)), key)
        texts.append(" ".join(words) + (f" #{i}" if tagged else ""))
        quality.append([1.0, 0.0] if key == "giraffe" else [0.0, 1.0])
    q = np.array(quality)
    if unobserved_every:
        q[::unobserved_every, 1] = np.nan
    prompts = pd.DataFrame({"text": texts})
    if not tagged:
        prompts.insert(0, "prompt_id", [f"p{i}" for i in range(n)])
    return RoutingDataset("words", prompts, ["alpha", "beta"], q, np.tile([0.002, 0.001], (n, 1)))
