"""The fixed-size expert cache of one MoE layer, its eviction policies and its hit/miss counters.

An offloaded MoE model keeps at most ``capacity`` experts of each layer in memory; the rest are read from
the on-disk expert store when a token is routed to them. This module holds what is independent of torch
modules: which experts are resident, which one leaves when another must come in (LRU: the one used least
recently; LFU: the one used least often since the model loaded, ties to the least recent), and the
counters the server reports. Loads run through a ``loader`` callable so the cache never sees files.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any

POLICIES = ("lru", "lfu", "predict")
PRECISION_DECAY = 0.9  # weight of the past in a layer's running share of prefetches that get used

Tensors = dict[str, Any]  # parameter name -> that expert's tensor


@dataclass
class OffloadStats:
    """Counts of expert lookups: resident (hit), brought in by a prefetch (prefetch hit), read on demand."""

    hits: int = 0
    misses: int = 0
    prefetch_hits: int = 0
    prefetches: int = 0  # experts read ahead of need, used or not
    bytes_loaded: int = 0  # on-demand and prefetch reads together

    def add(self, other: OffloadStats) -> OffloadStats:
        return OffloadStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def minus(self, other: OffloadStats) -> OffloadStats:
        return OffloadStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    @property
    def lookups(self) -> int:
        return self.hits + self.misses + self.prefetch_hits

    def hit_rate(self) -> float:
        """Share of lookups that found the expert in memory (resident or prefetched)."""
        return (self.hits + self.prefetch_hits) / self.lookups if self.lookups else 0.0

    def payload(self, tokens: int) -> dict[str, Any]:
        """The ``offload`` part of a response's ``expert_load``; ``tokens`` fed through the model."""
        return {"hits": self.hits, "misses": self.misses, "prefetch_hits": self.prefetch_hits,
                "prefetches": self.prefetches, "bytes_loaded": self.bytes_loaded,
                "bytes_loaded_per_token": self.bytes_loaded / tokens if tokens else 0.0}


class LayerCache:
    """At most ``capacity`` experts of one layer, in fixed ``[capacity, ...]`` slot tensors.

    ``loader(expert) -> (tensors, bytes)`` reads one expert; a read is copied into a slot, so the memory
    held stays at ``capacity`` experts however many are read. The slot tensors are handed to the experts
    module as they are (no copy per forward pass).
    """

    def __init__(self, capacity: int, policy: str, loader: Callable[[int], tuple[Tensors, int]],
                 stats: OffloadStats) -> None:
        self.capacity = capacity
        self.policy = policy
        self.loader = loader
        self.stats = stats  # shared by every layer of the model
        self.slots: Tensors = {}  # parameter name -> [capacity, ...], allocated at the first read
        self.resident: OrderedDict[int, int] = OrderedDict()  # expert -> slot, least recently used first
        self.uses: dict[int, int] = {}
        self.pending: dict[int, Future[tuple[Tensors, int]]] = {}  # prefetches in flight
        self.precision = 1.0  # running share of this layer's prefetches that were used (optimistic start)

    def fetch_slots(self, experts: list[int]) -> list[int]:
        """The slots holding ``experts`` (at most ``capacity``: all stay resident through the pass)."""
        assert len(experts) <= self.capacity
        keep = set(experts)
        out = [self._one(e, keep) for e in experts]
        self._drop_unused_prefetches()
        return out

    def fetch_copies(self, experts: list[int]) -> list[Tensors]:
        """Copies of more experts than fit (a long prefill): each may leave once it has been copied."""
        remaining = set(experts)
        out = []
        for expert in experts:
            remaining.discard(expert)
            slot = self._one(expert, remaining)
            out.append({p: t[slot].clone() for p, t in self.slots.items()})
        self._drop_unused_prefetches()
        return out

    def _one(self, expert: int, keep: set[int]) -> int:
        self.uses[expert] = self.uses.get(expert, 0) + 1
        if expert in self.resident:
            self.stats.hits += 1
            self.resident.move_to_end(expert)
            return self.resident[expert]
        future = self.pending.pop(expert, None)
        if future is not None:
            tensors, size = future.result()
            self.stats.prefetch_hits += 1
            self._scored(1.0)
        else:
            tensors, size = self.loader(expert)
            self.stats.misses += 1
        self.stats.bytes_loaded += size
        return self._place(expert, tensors, keep)

    def _place(self, expert: int, tensors: Tensors, keep: set[int]) -> int:
        if not self.slots:
            import torch

            self.slots = {p: torch.empty((self.capacity, *t.shape), dtype=t.dtype) for p, t in tensors.items()}
        if len(self.resident) < self.capacity:
            slot = min(set(range(self.capacity)) - set(self.resident.values()))
        else:
            slot = self.resident.pop(self._victim(keep))
        for p, t in tensors.items():
            self.slots[p][slot].copy_(t)
        self.resident[expert] = slot
        return slot

    def _victim(self, keep: set[int]) -> int:
        candidates = [e for e in self.resident if e not in keep] or list(self.resident)
        if self.policy == "lfu":  # ties go to the least recently used: ``resident`` is in LRU order
            return min(candidates, key=lambda e: self.uses.get(e, 0))
        return candidates[0]

    def prefetch(self, experts: Iterable[int], submit: Callable[[int], Future[tuple[Tensors, int]]]) -> None:
        """Start reading ``experts`` that are neither resident nor already on their way."""
        for expert in experts:
            if expert not in self.resident and expert not in self.pending:
                self.pending[expert] = submit(expert)
                self.stats.prefetches += 1

    def _drop_unused_prefetches(self) -> None:
        """A wrong guess: its read is counted if it happened, and it never displaces a resident expert."""
        for expert, future in list(self.pending.items()):
            del self.pending[expert]
            self._scored(0.0)
            if future.cancel():
                self.stats.prefetches -= 1
                continue
            tensors, size = future.result()
            self.stats.bytes_loaded += size
            if len(self.resident) < self.capacity:
                self._place(expert, tensors, set())
                self.resident.move_to_end(expert, last=False)  # unused so far: first to leave

    def _scored(self, used: float) -> None:
        self.precision = PRECISION_DECAY * self.precision + (1 - PRECISION_DECAY) * used

    def clear(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        self.resident.clear()
        self.slots = {}
