"""An offloaded MoE through the real local server: it fits a budget the full model does not, answers the
same greedy text as the fully resident model, and reports its expert cache per response and in /metrics."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from servehelpers import ask, metric_sum, serve_app

from thalamus.serving.app import create_app
from thalamus.serving.config import OffloadSpec, ServingConfig
from thalamus.serving.pool import estimate_bytes

PROMPTS = ("Hello there", "Tell me about rivers", "abc def ghi", "What is two plus two?")


def _config(tiny_dir: Path, budget: int, policy: str) -> ServingConfig:
    folder = str(tiny_dir / "tiny-mixtral")
    return ServingConfig.from_dict({
        "memory_budget": budget, "batch_window_ms": 30, "max_batch_size": 8, "default_max_tokens": 12,
        "models": [{"name": "full", "path": folder},
                   {"name": "lean", "path": folder, "offload": {"experts_resident": 2, "policy": policy}}]})


def _answer(client: OpenAI, model: str, prompt: str) -> Any:
    return client.chat.completions.create(model=model, messages=ask(prompt), max_tokens=12, temperature=0)


def _budget(tiny_dir: Path) -> tuple[int, int]:
    folder = tiny_dir / "tiny-mixtral"
    full = estimate_bytes(folder, "float32")
    lean = estimate_bytes(folder, "float32", OffloadSpec(experts_resident=2))
    budget = lean + 64 * 1024  # room for the rotary buffers, never for the other half of the experts
    assert lean < budget < full
    return budget, full


@pytest.mark.parametrize("policy", ["lru", "predict"])
def test_offloaded_model_serves_under_a_budget_the_full_model_exceeds(
        policy: str, tiny_dir: Path, tiny_server: str, tmp_path: Path,
        client_for: Callable[[str], OpenAI]) -> None:
    reference = client_for(tiny_server)
    want = {p: _answer(reference, "tiny-mixtral", p).choices[0].message.content for p in PROMPTS}
    budget, full = _budget(tiny_dir)
    with serve_app(create_app(_config(tiny_dir, budget, policy), cache_dir=tmp_path)) as url:
        client = client_for(url)
        with pytest.raises(openai.InternalServerError) as refused:
            _answer(client, "full", "hi")
        assert refused.value.status_code == 503 and "model_too_large" in str(refused.value)
        payloads = []
        for prompt in PROMPTS:
            reply = _answer(client, "lean", prompt)
            assert reply.choices[0].message.content == want[prompt], prompt
            payloads.append((reply.model_extra or {})["thalamus"]["expert_load"])
        health = httpx.get(f"{url}/healthz").json()
        assert health["loaded_models"] == ["lean"] and health["used_bytes"] <= budget < full
        text = httpx.get(f"{url}/metrics").text
    offload = [p["offload"] for p in payloads]
    for load, cache in zip(payloads, offload, strict=True):
        assert cache["misses"] >= 1 and cache["hits"] + cache["prefetch_hits"] >= 1
        assert cache["bytes_loaded_per_token"] == pytest.approx(cache["bytes_loaded"] / load["tokens"])
        # one lookup per distinct expert per layer per pass: never more than the tokens' choices
        assert cache["hits"] + cache["misses"] + cache["prefetch_hits"] <= load["tokens"] * 2 * 2
    # requests ran one at a time, so the server's counters are the sum of the per-response ones
    for key, metric in (("hits", "hits"), ("misses", "misses"), ("prefetch_hits", "prefetch_hits"),
                        ("bytes_loaded", "bytes_loaded"), ("prefetches", "prefetches")):
        total = sum(c[key] for c in offload)
        assert metric_sum(text, f"thalamus_serving_expert_cache_{metric}_total", model="lean") == total, key
    if policy == "predict":
        assert sum(c["prefetch_hits"] for c in offload) >= 1
    else:
        assert sum(c["prefetches"] for c in offload) == 0


def test_offloaded_batch_matches_resident_answers(tiny_dir: Path, tiny_server: str, tmp_path: Path,
                                                  client_for: Callable[[str], OpenAI]) -> None:
    """Concurrent requests share forward passes (rows routed to different experts) and stay exact."""
    reference = client_for(tiny_server)
    want = [_answer(reference, "tiny-mixtral", p).choices[0].message.content for p in PROMPTS]
    budget, _ = _budget(tiny_dir)
    with serve_app(create_app(_config(tiny_dir, budget, "lfu"), cache_dir=tmp_path)) as url:
        client = client_for(url)
        _answer(client, "lean", "warm up")  # the load happens before the batch, so the requests coincide
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            replies = list(pool.map(lambda p: _answer(client, "lean", p), PROMPTS))
        text = httpx.get(f"{url}/metrics").text
    assert [r.choices[0].message.content for r in replies] == want
    assert metric_sum(text, "thalamus_serving_batch_size_sum", model="lean") >= len(PROMPTS) + 1
    assert metric_sum(text, "thalamus_serving_expert_cache_misses_total", model="lean") >= 1
