"""Continuous batching: staggered streams join the running batch and answer exactly as requests run alone.

Each stream starts when the one before it streams its first token, through the real HTTP API (openai
SDK), so later requests join a batch that is already decoding (``batch_joins_total`` proves they did)
and rows leave at different steps.
Greedy tokens, finish reasons, token counts and, for the MoE model, per-request expert load must equal
those of the same requests sent one at a time. A request arriving mid-generation gets its first token
while the long one still runs (continuous), not after it ends (window).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from servehelpers import ask, metric_sum, serve, tiny_config

PROMPTS = ["Hi", "What is the capital of France?", "Tell me a story", "2+2=", "Hello there", "ok"]
BUDGETS = [40, 12, 28, 20, 8, 32]  # rows leave the batch at different steps


@pytest.fixture(scope="module")
def servers(tiny_dir: Path, partial_dir: tuple[Path, str]) -> Iterator[dict[str, str]]:
    """One server per batch mode, each serving a dense tiny model ("partial") and the tiny MoE ones."""
    extra = [{"name": "dense", "path": str(partial_dir[0])}]
    with serve(_config(tiny_dir, extra, "continuous")) as cont, serve(_config(tiny_dir, extra, "window")) as win:
        yield {"continuous": cont, "window": win}


def _config(tiny_dir: Path, extra: list[dict[str, str]], mode: str) -> Any:
    base = tiny_config(tiny_dir)
    models = [m.model_dump(mode="json", exclude_none=True) for m in base.models] + extra
    return tiny_config(tiny_dir, batch_mode=mode, batch_window_ms=5, models=models)


def _stream(client: OpenAI, model: str, prompt: str, budget: int,
            first: threading.Event | None = None) -> dict[str, Any]:
    """One greedy stream; ``first`` is set when its first token arrives."""
    chunks = client.chat.completions.create(model=model, messages=ask(prompt), max_tokens=budget, temperature=0,
                                            extra_body={"ignore_eos": True}, stream=True,
                                            stream_options={"include_usage": True})
    text, out = [], {}
    for chunk in chunks:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            if first is not None and chunk.choices[0].delta.content:
                first.set()
            if chunk.choices[0].finish_reason:
                out["finish"] = chunk.choices[0].finish_reason
                out["load"] = ((chunk.model_extra or {}).get("thalamus") or {}).get("expert_load")
        if chunk.usage:
            out["tokens"] = chunk.usage.completion_tokens
    return {**out, "text": "".join(text)}


def _joins(url: str, model: str) -> float:
    return metric_sum(httpx.get(f"{url}/metrics").text, "thalamus_serving_batch_joins_total", model=model)


@pytest.mark.parametrize("model", ["dense", "tiny-qwen2_moe"])
def test_staggered_streams_equal_sequential(servers: dict[str, str], client_for: Callable[[str], OpenAI],
                                            model: str) -> None:
    url = servers["continuous"]
    client = client_for(url)
    sequential = [_stream(client, model, p, n) for p, n in zip(PROMPTS, BUDGETS, strict=True)]
    joins_before = _joins(url, model)

    # each request starts once the one before it streams its first token, so it arrives while that one
    # decodes, however fast or loaded the machine is (a fixed delay let a fast tiny model finish first)
    firsts = [threading.Event() for _ in PROMPTS]

    def staggered(i: int) -> dict[str, Any]:
        if i:
            assert firsts[i - 1].wait(60), f"request {i - 1} streamed no token in 60 s"
        return _stream(client, model, PROMPTS[i], BUDGETS[i], firsts[i])

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(staggered, range(len(PROMPTS))))
    assert together == sequential
    assert [r["tokens"] for r in together] == BUDGETS and all(r["text"] for r in together)
    if model != "dense":
        assert all(r["load"]["tokens"] > 0 for r in together)
    assert _joins(url, model) - joins_before >= 2  # requests really joined a batch that was decoding


LONG_TOKENS = 300


def _first_token_at(client: OpenAI, model: str, started: threading.Event, seen: list[int]) -> tuple[float, float]:
    """Stream a long answer; set ``started`` at its first token and count its chunks in ``seen[0]``; return
    (first token, end) times."""
    chunks = client.chat.completions.create(model=model, messages=ask("Tell me a long story"),
                                            max_tokens=LONG_TOKENS, temperature=0,
                                            extra_body={"ignore_eos": True}, stream=True)
    first = 0.0
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            seen[0] += 1
            if not first:
                first = time.perf_counter()
                started.set()
    return first, time.perf_counter()


def _late_request(client: OpenAI, model: str) -> tuple[float, float, bool]:
    """Send a short request while a long one decodes: (its time to first token, the time the long one still
    ran after it was sent, whether it ended first)."""
    client.chat.completions.create(model=model, messages=ask("warm"), max_tokens=1)
    started, seen = threading.Event(), [0]
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(_first_token_at, client, model, started, seen)
        assert started.wait(60)
        time.sleep(0.05)  # into the long generation
        sent, late_first, left = time.perf_counter(), 0.0, LONG_TOKENS - seen[0]
        # premise, in tokens rather than seconds (a quiet machine decodes the tiny model fast): the long
        # request still had most of its answer to generate when the late one was sent
        assert left > LONG_TOKENS * 0.6, left
        for chunk in client.chat.completions.create(model=model, messages=ask("Hi"), max_tokens=4,
                                                    temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content and not late_first:
                late_first = time.perf_counter()
        late_end = time.perf_counter()
        _, long_end = long.result()
    return late_first - sent, long_end - sent, late_end < long_end


def test_request_arriving_mid_generation_gets_first_token_before_the_running_one_finishes(
        servers: dict[str, str], client_for: Callable[[str], OpenAI]) -> None:
    model = "tiny-mixtral"
    url = servers["continuous"]
    joins_before = _joins(url, model)
    ttft, remaining, ended_first = _late_request(client_for(url), model)
    assert ttft < remaining / 2 and ended_first, (ttft, remaining)
    assert _joins(url, model) - joins_before == 1

    # the same under window batching: the late request waits for the running batch to end
    win = servers["window"]
    ttft, remaining, ended_first = _late_request(client_for(win), model)
    assert ttft > 0.8 * remaining and not ended_first, (ttft, remaining)
    assert _joins(win, model) == 0
