"""Small torch helpers shared by the trained routers (mf, bert).

Reproducible CPU training needs the same three things in every router: a seeded generator,
a bounded thread count (results of float reductions depend on how work is split across
threads, and the machines are shared), and a loss that ignores unobserved outcomes
(quality NaN). Keeping them here keeps each router module about its model. torch is
imported inside the functions so importing thalamus never loads it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from thalamus.datasets.schema import hash_fraction

if TYPE_CHECKING:
    import torch

DEFAULT_THREADS = 2


@contextlib.contextmanager
def torch_session(seed: int, threads: int | None = None) -> Iterator[torch.Generator]:
    """Seed torch and fix its thread count for a block; restore the thread count after.

    Yields a generator seeded with ``seed`` for shuffling, so batch order does not depend
    on whatever else in the process consumed torch's global random state.
    """
    import torch

    n = threads or int(os.environ.get("THALAMUS_TORCH_THREADS", DEFAULT_THREADS))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, os.cpu_count() or 1)))
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(before)


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the observed cells (target NaN = not observed).

    Soft targets in [0, 1] are allowed, so graded scores and tie votes (0.5) use the same loss.
    """
    import torch

    mask = ~torch.isnan(target)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], target[mask])


def masked_mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of sigmoid(logits) over the observed cells: regression on graded scores."""
    import torch

    mask = ~torch.isnan(target)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return torch.mean((torch.sigmoid(logits[mask]) - target[mask]) ** 2)


def validation_mask(texts: list[str], fraction: float, seed: int) -> np.ndarray:
    """True for the prompts held out for early stopping, chosen by text hash (order-free).

    Returns all False when the split would leave fewer than two prompts on either side.
    """
    if fraction <= 0:
        return np.zeros(len(texts), dtype=bool)
    held = np.array([hash_fraction(t, seed + 7919) < fraction for t in texts], dtype=bool)
    if held.sum() < 2 or (~held).sum() < 2:
        return np.zeros(len(texts), dtype=bool)
    return held


@dataclass
class EarlyStopping:
    """Tracks the best validation loss; ``step`` says whether to stop after this epoch."""

    patience: int
    min_delta: float = 1e-4
    best: float = float("inf")
    best_epoch: int = -1
    best_state: dict[str, Any] | None = None
    history: list[float] = field(default_factory=list)

    def step(self, epoch: int, loss: float, state: dict[str, Any]) -> bool:
        self.history.append(round(float(loss), 6))
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch = float(loss), epoch
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
        return epoch - self.best_epoch >= self.patience


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[np.ndarray]:
    """Index batches over ``n`` rows; shuffled with ``generator`` when one is given."""
    import torch

    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, max(1, batch_size))]
