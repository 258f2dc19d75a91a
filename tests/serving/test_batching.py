"""Concurrent greedy requests are generated together and answer exactly as sequential requests do."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from openai import OpenAI
from servehelpers import ask, metric_sum

PROMPTS = ["Hi", "What is the capital of France?", "Write a long poem about the sea and the sky, please.",
           "2+2=", "Tell me about MoE models", "ok"]


def _answer(client: OpenAI, prompt: str, max_tokens: int) -> tuple[str, str | None]:
    reply = client.chat.completions.create(model="tiny-qwen2_moe", messages=ask(prompt), max_tokens=max_tokens,
                                           temperature=0)
    return reply.choices[0].message.content or "", reply.choices[0].finish_reason


def test_concurrent_equals_sequential(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)
    budgets = [4, 12, 8, 12, 6, 10]  # rows leave the batch at different steps
    sequential = [_answer(client, p, n) for p, n in zip(PROMPTS, budgets, strict=True)]
    before = metric_sum(httpx.get(f"{tiny_server}/metrics").text, "thalamus_serving_batch_size_sum",
                        model="tiny-qwen2_moe")
    batches_before = metric_sum(httpx.get(f"{tiny_server}/metrics").text, "thalamus_serving_batch_size_count",
                                model="tiny-qwen2_moe")
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(lambda pn: _answer(client, *pn), zip(PROMPTS, budgets, strict=True)))
    assert concurrent == sequential
    assert all(text for text, _ in sequential)
    text = httpx.get(f"{tiny_server}/metrics").text
    rows = metric_sum(text, "thalamus_serving_batch_size_sum", model="tiny-qwen2_moe") - before
    batches = metric_sum(text, "thalamus_serving_batch_size_count", model="tiny-qwen2_moe") - batches_before
    assert rows == len(PROMPTS)
    assert batches < len(PROMPTS)  # at least two requests shared a batch


def test_concurrent_streams_each_get_their_own_text(tiny_server: str,
                                                    client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)

    def stream(prompt: str) -> str:
        chunks = client.chat.completions.create(model="tiny-mixtral", messages=ask(prompt), max_tokens=8,
                                                temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    expected = [_json(client, p) for p in PROMPTS[:4]]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(stream, PROMPTS[:4])) == expected


def _json(client: OpenAI, prompt: str) -> str:
    return client.chat.completions.create(model="tiny-mixtral", messages=ask(prompt), max_tokens=8,
                                          temperature=0).choices[0].message.content or ""
