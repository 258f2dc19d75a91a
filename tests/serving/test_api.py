"""JSON and streaming answers from a tiny MoE through the real openai SDK; models, health and metrics."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
from openai import OpenAI
from servehelpers import ask, metric_sum


def test_json_answer_with_usage_and_expert_load(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)
    reply = client.chat.completions.create(model="tiny-mixtral", messages=ask("Hello there"), max_tokens=12,
                                           temperature=0)
    assert reply.model == "tiny-mixtral"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.choices[0].message.content
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 12
    load = (reply.model_extra or {})["thalamus"]["expert_load"]
    counts = np.array(load["layers"])
    assert counts.shape == (2, 4) and load["top_k"] == 2
    # every token fed to the model (prompt + generated, except the last one) picks top_k experts per layer
    assert load["tokens"] == usage.prompt_tokens + usage.completion_tokens - 1
    assert counts.sum() == load["tokens"] * 2 * 2
    assert (counts.sum(axis=1) == load["tokens"] * 2).all()


def test_stream_matches_json_and_ends_with_usage(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)
    kwargs = dict(model="tiny-qwen2_moe", messages=ask("Tell me a story"), max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **kwargs))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # fed token by token
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == [whole.choices[0].finish_reason]
    assert (finals[0].model_extra or {})["thalamus"]["expert_load"] == \
        (whole.model_extra or {})["thalamus"]["expert_load"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_olmoe_expert_counts(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    reply = client_for(tiny_server).chat.completions.create(
        model="tiny-olmoe", messages=ask("Count experts"), max_tokens=5, temperature=0)
    load = (reply.model_extra or {})["thalamus"]["expert_load"]
    assert np.array(load["layers"]).sum() == load["tokens"] * len(load["layers"]) * load["top_k"]


def test_stop_string_cuts_text(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)
    full = client.chat.completions.create(model="tiny-mixtral", messages=ask("abc"), max_tokens=16,
                                          temperature=0).choices[0].message.content or ""
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert len(stop) == 2
    cut = client.chat.completions.create(model="tiny-mixtral", messages=ask("abc"), max_tokens=16,
                                         temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]
    streamed = client.chat.completions.create(model="tiny-mixtral", messages=ask("abc"), max_tokens=16,
                                              temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.index(stop)]


def test_seeded_sampling_is_reproducible(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)
    texts = [client.chat.completions.create(model="tiny-mixtral", messages=ask("Hi"), max_tokens=8,
                                            temperature=1.0, top_p=0.9, seed=seed).choices[0].message.content
             for seed in (7, 7, 8)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_models_health_and_metrics(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)
    names = {m.id for m in client.models.list().data}
    assert names == {"tiny-mixtral", "tiny-qwen2_moe", "tiny-olmoe", "broken"}
    reply = client.chat.completions.create(model="tiny-mixtral", messages=ask("metrics"), max_tokens=4,
                                           temperature=0)
    health = httpx.get(f"{tiny_server}/healthz").json()
    assert health["status"] == "ok" and "tiny-mixtral" in health["loaded_models"]
    text = httpx.get(f"{tiny_server}/metrics").text
    m = "tiny-mixtral"
    requests = metric_sum(text, "thalamus_serving_requests_total", model=m, status="200")
    completion = metric_sum(text, "thalamus_serving_completion_tokens_total", model=m)
    prompt = metric_sum(text, "thalamus_serving_prompt_tokens_total", model=m)
    assert requests >= 1 and completion >= reply.usage.completion_tokens  # type: ignore[union-attr]
    assert metric_sum(text, "thalamus_serving_loaded_models") >= 1
    assert metric_sum(text, "thalamus_serving_model_load_seconds_count", model=m) == 1
    assert metric_sum(text, "thalamus_serving_time_to_first_token_seconds_count", model=m) == requests
    assert metric_sum(text, "thalamus_serving_batch_size_count", model=m) >= 1
    expert = metric_sum(text, "thalamus_serving_expert_tokens_total", model=m)
    assert expert == (prompt + completion - requests) * 2 * 2  # layers x top_k
    layer0 = metric_sum(text, "thalamus_serving_expert_tokens_total", model=m, layer="0")
    assert layer0 == expert / 2
