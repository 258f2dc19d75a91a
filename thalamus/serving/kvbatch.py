"""The state of a running batch between decoding steps, and the KV-cache surgery that continuous batching needs.

A batch is its rows (requests), one shared ``DynamicCache``, the attention mask over the cached columns,
each row's next position id and the token each row feeds at the next step. Invariant at rest: the cache
holds ``mask.shape[1]`` columns. Rows are left-padded: a row's padding columns are 0 in the mask, so they
take no attention weight whatever the cache holds there, and positions come from ``next_pos``, never from
the column index. That makes three operations safe for greedy equality with a request run alone:

- ``merge``: a newly prefilled batch joins a running one; the shorter of the two is left-padded (zeros in
  the cache, 0 in the mask) to the longer's width, then rows are stacked.
- ``select``: finished rows leave (their cache rows are dropped).
- ``trim``: leading columns that no remaining row attends to are cut, so a long-finished request's
  prompt does not keep widening every later step.

Only plain ``DynamicLayer`` caches can be padded this way (a sliding-window layer keeps a running count of
tokens shared by all rows); :func:`joinable` says whether a model's cache qualifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import torch

R = TypeVar("R")  # the engine's per-row generation state


def joinable(cache: Any) -> bool:
    """True when every layer of ``cache`` is a plain DynamicLayer (rows can be padded and stacked)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


@dataclass
class Batch(Generic[R]):
    rows: list[R]
    cache: Any
    mask: torch.Tensor  # (rows, columns): 1 where a cached column is a real token of that row
    next_pos: torch.Tensor  # (rows, 1): position id of each row's next token
    tokens: list[int]  # the token each row feeds at the next step (sampled, not yet in the cache)

    def select(self, keep: list[int]) -> None:
        """Keep only the rows at indices ``keep`` (in that order), then cut columns nobody attends to."""
        import torch

        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.tokens = [self.tokens[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep)
        with torch.inference_mode():
            self.cache.batch_select_indices(index)
            self.mask, self.next_pos = self.mask[index], self.next_pos[index]
            self.trim()

    def trim(self) -> None:
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = layer.keys[..., start:, :]
                layer.values = layer.values[..., start:, :]

    def merge(self, other: Batch) -> None:
        """Append ``other``'s rows (a freshly prefilled batch) to this one."""
        import torch

        with torch.inference_mode():
            self._stack(other, max(self.mask.shape[1], other.mask.shape[1]))
        self.rows = self.rows + other.rows
        self.tokens = self.tokens + other.tokens

    def _stack(self, other: Batch, width: int) -> None:
        import torch

        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)], dim=0)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)], dim=0)
        self.next_pos = torch.cat([self.next_pos, other.next_pos], dim=0)


def _pad_left(kv: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, heads, columns, dim) -> (batch, heads, width, dim), zeros on the left."""
    import torch

    missing = width - kv.shape[-2]
    if missing == 0:
        return kv
    return torch.cat([kv.new_zeros(*kv.shape[:-2], missing, kv.shape[-1]), kv], dim=-2)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    import torch

    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)
