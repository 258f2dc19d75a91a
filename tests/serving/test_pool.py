"""The model pool under a small memory budget: load on first use, LRU eviction, 503 when a model can't fit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from servehelpers import ask, metric_sum, serve, tiny_config

from thalamus.serving.pool import estimate_bytes


def test_lru_eviction_under_small_budget(tiny_dir: Path, client_for: Callable[[str], OpenAI]) -> None:
    one = estimate_bytes(tiny_dir / "tiny-mixtral", "float32")
    sizes = [estimate_bytes(tiny_dir / f"tiny-{a}", "float32") for a in ("mixtral", "qwen2_moe", "olmoe")]
    budget = max(sizes) * 2 + 1024  # room for two tiny models, never three
    assert sum(sizes) > budget and one > 1_000_000
    with serve(tiny_config(tiny_dir, memory_budget=budget)) as url:
        client = client_for(url)
        loaded = []
        for name in ("tiny-mixtral", "tiny-qwen2_moe", "tiny-mixtral", "tiny-olmoe"):
            client.chat.completions.create(model=name, messages=ask("hi"), max_tokens=2)
            loaded.append(httpx.get(f"{url}/healthz").json()["loaded_models"])
        # mixtral was used after qwen2_moe, so qwen2_moe is the least recently used one when olmoe arrives
        assert loaded == [["tiny-mixtral"], ["tiny-mixtral", "tiny-qwen2_moe"],
                          ["tiny-mixtral", "tiny-qwen2_moe"], ["tiny-mixtral", "tiny-olmoe"]]
        health = httpx.get(f"{url}/healthz").json()
        assert health["used_bytes"] <= budget
        text = httpx.get(f"{url}/metrics").text
        assert metric_sum(text, "thalamus_serving_model_evictions_total", model="tiny-qwen2_moe") == 1
        assert metric_sum(text, "thalamus_serving_model_unload_seconds_count", model="tiny-qwen2_moe") == 1
        assert metric_sum(text, "thalamus_serving_model_switch_seconds_count", model="tiny-olmoe") == 1
        assert metric_sum(text, "thalamus_serving_loaded_models") == 2
        assert metric_sum(text, "thalamus_serving_pool_memory_bytes") == health["used_bytes"]


def test_model_that_cannot_fit_gets_503(tiny_dir: Path, client_for: Callable[[str], OpenAI]) -> None:
    with serve(tiny_config(tiny_dir, memory_budget=100_000)) as url:
        with pytest.raises(openai.InternalServerError) as info:
            client_for(url).chat.completions.create(model="tiny-mixtral", messages=ask("hi"), max_tokens=2)
        assert info.value.status_code == 503
        message = str(info.value)
        assert "tiny-mixtral" in message and "100000" in message and "budget" in message
        assert httpx.get(f"{url}/healthz").json()["loaded_models"] == []


def test_estimate_matches_loaded_size(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "tiny-olmoe")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate_bytes(tiny_dir / "tiny-olmoe", "float32") == size
    assert estimate_bytes(tiny_dir / "tiny-olmoe", "bfloat16") == size // 2
