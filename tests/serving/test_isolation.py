"""One request that fails at generation time fails alone: its batch mates, JSON and streamed, still answer.

The poison is real: a prompt holding a token id past the model's embedding table makes the batched
forward pass raise, which no request validation can foresee. Without isolation every request of that
batch got the 500 (7 of 7).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from servehelpers import PARTIAL_VOCAB, ask, metric_sum, serve

from thalamus.serving.config import ServingConfig
from thalamus.serving.models import smollm2_tokenizer

CHAT = "/v1/chat/completions"
MODEL = "partial"
GOOD = ["Hi", "ok", "Hello there", "Tell me a story", "What is 2+2?", "Say yes"]


@pytest.fixture(scope="module")
def server(partial_dir: tuple[Path, str]) -> Iterator[str]:
    config = ServingConfig.from_dict({"models": [{"name": MODEL, "path": str(partial_dir[0])}],
                                      "batch_window_ms": 300, "max_batch_size": 8})
    with serve(config) as url:
        yield url


def _ids(text: str) -> list[int]:
    encoded = smollm2_tokenizer().apply_chat_template(ask(text), add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)
    return list(encoded["input_ids"])


def _answer(url: str, prompt: str, stream: bool = False) -> tuple[int, str]:
    body = {"model": MODEL, "messages": ask(prompt), "max_tokens": 6, "temperature": 0, "stream": stream}
    response = httpx.post(f"{url}{CHAT}", json=body, timeout=120)
    if response.status_code != 200:
        return response.status_code, response.json()["error"]["code"]
    if not stream:
        return 200, response.json()["choices"][0]["message"]["content"]
    assert response.text.endswith("data: [DONE]\n\n") and '"error"' not in response.text
    return 200, "".join(_deltas(response.text))


def _deltas(sse: str) -> Iterator[str]:
    import json

    for line in sse.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                yield choice["delta"].get("content") or ""


def test_premise_poison_is_past_the_vocabulary(partial_dir: tuple[Path, str]) -> None:
    poison = partial_dir[1]
    assert max(_ids(f"Say {poison}")) >= PARTIAL_VOCAB
    assert all(max(_ids(p)) < PARTIAL_VOCAB for p in GOOD)


def test_poisoned_request_fails_alone(server: str, partial_dir: tuple[Path, str]) -> None:
    alone = {prompt: _answer(server, prompt) for prompt in GOOD}
    assert all(status == 200 and text for status, text in alone.values())
    metrics = httpx.get(f"{server}/metrics").text
    rows_before = metric_sum(metrics, "thalamus_serving_batch_size_sum", model=MODEL)
    batches_before = metric_sum(metrics, "thalamus_serving_batch_size_count", model=MODEL)

    poison = f"Say {partial_dir[1]}"
    jobs = [(p, False) for p in GOOD[:3]] + [(poison, False)] + [(p, i % 2 == 0) for i, p in enumerate(GOOD[3:])]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = dict(zip(jobs, pool.map(lambda job: _answer(server, *job), jobs), strict=True))

    assert answers.pop((poison, False)) == (500, "generation_failed")
    assert answers == {job: alone[job[0]] for job in answers}
    metrics = httpx.get(f"{server}/metrics").text
    assert metric_sum(metrics, "thalamus_serving_batch_size_sum", model=MODEL) - rows_before == len(jobs)
    assert metric_sum(metrics, "thalamus_serving_batch_size_count", model=MODEL) - batches_before < len(jobs)
    assert metric_sum(metrics, "thalamus_serving_batch_retries_total", model=MODEL) >= 1  # it shared a batch
    assert metric_sum(metrics, "thalamus_serving_requests_total", model=MODEL, status="500") == 1


def test_poison_alone_is_500_and_names_the_failure(server: str, partial_dir: tuple[Path, str]) -> None:
    body = {"model": MODEL, "messages": ask(f"Say {partial_dir[1]}"), "max_tokens": 4}
    response = httpx.post(f"{server}{CHAT}", json=body, timeout=120)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "generation_failed" and "IndexError" in error["message"]
    assert _answer(server, "ok") == (200, _answer(server, "ok")[1])
