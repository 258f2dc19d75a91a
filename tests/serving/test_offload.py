"""Expert offloading on the tiny random MoEs: identical greedy tokens, bounded caches, honest counters."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from thalamus.errors import ConfigError
from thalamus.serving.config import OffloadSpec, ServingConfig
from thalamus.serving.expert_cache import OffloadStats
from thalamus.serving.models import TINY_MOE_ARCHS
from thalamus.serving.offload import STORE_FILE, attach_offload, store_folder
from thalamus.serving.pool import estimate_bytes

LAYERS, EXPERTS, TOP_K, NEW_TOKENS = 2, 4, 2, 16


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices on a shared machine: one torch thread is several times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prompts() -> tuple[Any, Any]:
    """Two prompts of different lengths, left-padded: passes mix rows routed to different experts."""
    import torch

    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 30_000, (2, 24), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, :9], mask[1, :9] = 0, 0
    return ids, mask


def _greedy(model: Any) -> Any:
    import torch

    ids, mask = _prompts()
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                              min_new_tokens=NEW_TOKENS)


def _load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _expert_bytes(folder: Path) -> int:
    """Bytes of one expert, from the config: three (intermediate x hidden) float32 matrices."""
    import json

    config = json.loads((folder / "config.json").read_text())
    inter = config.get("moe_intermediate_size") or config["intermediate_size"]
    return 3 * inter * config["hidden_size"] * 4


@pytest.mark.parametrize("arch", TINY_MOE_ARCHS)
def test_greedy_tokens_identical_for_every_policy_and_budget(arch: str, tiny_dir: Path, tmp_path: Path) -> None:
    import torch

    folder = tiny_dir / f"tiny-{arch}"
    reference = _load(folder)
    want = _greedy(reference)
    full_params = sum(p.numel() * p.element_size() for p in reference.parameters())
    one = _expert_bytes(folder)
    rates: dict[tuple[str, int], float] = {}
    for policy in ("lru", "lfu", "predict"):
        for resident in range(TOP_K, EXPERTS + 1):
            model = copy.deepcopy(reference)
            offload = attach_offload(model, arch, resident, policy, tmp_path / arch)
            got = _greedy(model)
            assert torch.equal(got, want), (policy, resident)
            # the fused tensors are gone: parameters shrink by every expert; the caches hold at most N each
            kept = sum(p.numel() * p.element_size() for p in model.parameters())
            assert kept == full_params - LAYERS * EXPERTS * one
            assert all(len(cache.resident) <= resident for cache in offload.caches)
            assert offload.resident_bytes() == LAYERS * resident * one
            stats = offload.stats
            assert stats.bytes_loaded == (stats.misses + stats.prefetches) * one
            assert stats.misses >= 1 and stats.hits >= 1
            if policy != "predict":
                assert stats.prefetches == stats.prefetch_hits == 0
            if resident == EXPERTS and policy != "predict":
                assert stats.misses <= LAYERS * EXPERTS  # every expert read at most once
            rates[(policy, resident)] = stats.hit_rate()
            offload.close()
    assert rates[("predict", 2)] > rates[("lru", 2)]  # the next layer's router guesses right often
    assert rates[("lru", 2)] < rates[("lru", 3)] < rates[("lru", 4)]


def test_store_written_once_per_checkpoint(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tiny_dir / "tiny-olmoe"
    where = store_folder(tmp_path, "m", folder, "float32")
    assert where == store_folder(tmp_path, "m", folder, "float32")
    assert where != store_folder(tmp_path, "m", folder, "bfloat16")
    attach_offload(_load(folder), "m", 2, "lru", where).close()
    first = (where / STORE_FILE).stat().st_mtime_ns
    attach_offload(_load(folder), "m", 3, "lfu", where).close()
    assert (where / STORE_FILE).stat().st_mtime_ns == first
    assert (where / STORE_FILE).stat().st_size > LAYERS * EXPERTS * _expert_bytes(folder)


def test_offload_on_a_dense_model_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model 'dense': offload is configured but the model has no MoE"):
        attach_offload(_load(tiny_dir / "broken"), "dense", 2, "lru", tmp_path)


def test_estimate_counts_only_resident_experts(tiny_dir: Path) -> None:
    for arch in TINY_MOE_ARCHS:
        folder = tiny_dir / f"tiny-{arch}"
        full, one = estimate_bytes(folder, "float32"), _expert_bytes(folder)
        for resident in range(TOP_K, EXPERTS + 1):
            spec = OffloadSpec(experts_resident=resident, policy="lru")
            assert estimate_bytes(folder, "float32", spec) == full - LAYERS * (EXPERTS - resident) * one
            assert estimate_bytes(folder, "bfloat16", spec) == (full - LAYERS * (EXPERTS - resident) * one) // 2


def _config(tiny_dir: Path, offload: dict[str, Any], model: str = "tiny-mixtral",
            **where: Any) -> ServingConfig:
    spec = {"name": "m1", "path": str(tiny_dir / model), "offload": offload, **where}
    return ServingConfig.from_dict({"models": [spec]})


@pytest.mark.parametrize(("offload", "message"), [
    ({"experts_resident": 1}, "model 'm1': offload.experts_resident=1 must be between the model's top_k (2) "
                              "and num_experts (4)"),
    ({"experts_resident": 5}, "experts_resident=5 must be between"),
    ({"experts_resident": 0}, "greater than or equal to 1"),
    ({"experts_resident": 2, "policy": "fifo"}, "'lru', 'lfu' or 'predict'"),
    ({"experts_resident": 2, "budget": 3}, "models.0.offload.budget"),
])
def test_offload_config_errors_name_the_model(tiny_dir: Path, offload: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(tiny_dir, offload)
    assert message in str(info.value)


def test_offload_config_on_dense_models(tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"model 'm1': offload is set but .* describes no MoE model"):
        _config(tiny_dir, {"experts_resident": 2}, model="broken")
    with pytest.raises(ConfigError, match="model 'm1': offload needs an MoE model folder"):
        ServingConfig.from_dict({"models": [{"name": "m1", "source": "smollm2",
                                             "offload": {"experts_resident": 2}}]})
    spec = _config(tiny_dir, {"experts_resident": 4, "policy": "predict"}, model="tiny-qwen2_moe").models[0]
    assert spec.offload == OffloadSpec(experts_resident=4, policy="predict")


def test_stats_payload_per_token() -> None:
    stats = OffloadStats(hits=3, misses=1, prefetch_hits=2, prefetches=3, bytes_loaded=400)
    assert stats.hit_rate() == pytest.approx(5 / 6)
    assert stats.payload(8) == {"hits": 3, "misses": 1, "prefetch_hits": 2, "prefetches": 3,
                                "bytes_loaded": 400, "bytes_loaded_per_token": 50.0}
    assert stats.add(stats).minus(stats) == stats


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
def test_top3_routing_stays_exact_in_every_experts_implementation(implementation: str, tiny_dir: Path,
                                                                  tmp_path: Path) -> None:
    """With three experts per token the eager loop's sums depend on the experts' order: still identical."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir / "tiny-olmoe")
    config.num_experts_per_tok = 3
    torch.manual_seed(1)
    reference = AutoModelForCausalLM.from_config(config, experts_implementation=implementation).eval()
    assert reference.config._experts_implementation == implementation
    want = _greedy(reference)
    for policy, resident in (("lru", 3), ("predict", 3), ("lfu", 4)):
        model = copy.deepcopy(reference)
        offload = attach_offload(model, "top3", resident, policy, tmp_path / implementation)
        assert torch.equal(_greedy(model), want), (policy, resident)
        assert offload.stats.misses >= 1
        offload.close()
