"""The per-layer expert cache by hand: which expert leaves under LRU and LFU, prefetch accounting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from thalamus.serving.expert_cache import LayerCache, OffloadStats


def _reader(log: list[int]) -> Any:
    import torch

    def read(expert: int) -> tuple[dict[str, Any], int]:
        log.append(expert)
        return {"w": torch.full((3,), float(expert))}, 12

    return read


def test_lru_keeps_the_recently_used() -> None:
    reads: list[int] = []
    cache = LayerCache(2, "lru", _reader(reads), OffloadStats())
    for experts in ([0, 1], [0], [2], [1]):
        cache.fetch_slots(experts)
    # [2] evicts 1 (0 was used more recently); [1] then evicts 0
    assert reads == [0, 1, 2, 1]
    assert sorted(cache.resident) == [1, 2]
    assert cache.stats == OffloadStats(hits=1, misses=4, bytes_loaded=48)
    slot = cache.resident[2]
    assert cache.slots["w"][slot].tolist() == [2.0, 2.0, 2.0]


def test_lfu_keeps_the_frequently_used() -> None:
    reads: list[int] = []
    cache = LayerCache(2, "lfu", _reader(reads), OffloadStats())
    for experts in ([0, 1], [0], [0], [1], [2], [3]):
        cache.fetch_slots(experts)
    # 0 was used 3 times: [2] evicts 1 (2 uses), [3] evicts 2 (1 use); LRU would have evicted 0
    assert reads == [0, 1, 2, 3]
    assert sorted(cache.resident) == [0, 3]


def test_a_pass_needing_more_experts_than_fit() -> None:
    reads: list[int] = []
    cache = LayerCache(2, "lru", _reader(reads), OffloadStats())
    copies = cache.fetch_copies([0, 1, 2, 3])
    assert [c["w"][0].item() for c in copies] == [0.0, 1.0, 2.0, 3.0]  # copies survive later evictions
    assert len(cache.resident) == 2 and cache.stats.misses == 4


def test_prefetch_hit_and_wasted_prefetch() -> None:
    reads: list[int] = []
    cache = LayerCache(2, "predict", _reader(reads), OffloadStats())
    with ThreadPoolExecutor(1) as pool:
        cache.prefetch([1, 3], lambda e: pool.submit(cache.loader, e))
        for future in cache.pending.values():
            future.result()
        cache.fetch_slots([0, 1])
    stats = cache.stats
    assert (stats.misses, stats.prefetch_hits, stats.prefetches) == (1, 1, 2)
    assert stats.bytes_loaded == 3 * 12  # the unused read of 3 counts
    assert sorted(cache.resident) == [0, 1]  # and 3 displaced nothing
    assert cache.pending == {}
    assert abs(cache.precision - 0.9) < 1e-12  # 1.0 after the used one, 0.9 * 1.0 after the wasted one
