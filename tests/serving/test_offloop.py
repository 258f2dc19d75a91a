"""A huge prompt never stalls the server: it is tokenized off the event loop, and size limits answer 413.

Before, a 2 MB prompt was tokenized on the event loop and /healthz waited 6.7 s behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servehelpers import ask, serve, tiny_config

CHAT = "/v1/chat/completions"
MODEL = "tiny-mixtral"
WORDS = ("alpha", "river", "quantum", "seven", "lattice", "Paris", "#", "42", "naïve", "über", "mountain")


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[str]:
    with serve(tiny_config(tiny_dir, max_prompt_chars=3_000_000, max_request_bytes="4MiB")) as url:
        yield url


def _big_prompt(chars: int) -> str:
    words: list[str] = []
    total = 0
    i = 0
    while total < chars:
        word = f"{WORDS[i % len(WORDS)]}{i % 977}"  # varied words: slow to tokenize, like real text
        words.append(word)
        total += len(word) + 1
        i += 1
    return " ".join(words)[:chars]


def test_health_answers_while_a_2mb_prompt_is_tokenized(server: str) -> None:
    httpx.post(f"{server}{CHAT}", json={"model": MODEL, "messages": ask("warm"), "max_tokens": 1}, timeout=60)
    prompt = _big_prompt(2_000_000)
    outcome: dict[str, float | int] = {}

    def big_request() -> None:
        outcome["started"] = time.perf_counter()
        response = httpx.post(f"{server}{CHAT}", json={"model": MODEL, "messages": ask(prompt)}, timeout=120)
        outcome["ended"], outcome["status"] = time.perf_counter(), response.status_code

    worker = threading.Thread(target=big_request)
    worker.start()
    answered: list[tuple[float, float]] = []  # (when it answered, how long it took)
    while worker.is_alive() and len(answered) < 200:
        started = time.perf_counter()
        assert httpx.get(f"{server}/healthz", timeout=30).json()["status"] == "ok"
        answered.append((time.perf_counter(), time.perf_counter() - started))
        time.sleep(0.05)
    worker.join(timeout=120)
    assert outcome["status"] == 400  # tokenized, then refused: far longer than the tiny model's context
    during = [took for at, took in answered if outcome["started"] + 0.3 < at < outcome["ended"]]
    assert len(during) >= 3, f"the prompt was handled in {outcome['ended'] - outcome['started']:.2f} s"
    assert max(during) < 1.0, during


def test_prompt_over_the_limit_is_413_naming_it(server: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 2_000_000},
                                         {"role": "user", "content": "y" * 1_000_000}]}
    response = httpx.post(f"{server}{CHAT}", json=body, timeout=60)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "prompt_too_large" and error["param"] == "messages"
    assert "3000000" in error["message"] and "max_prompt_chars" in error["message"]
    assert "3000008" in error["message"]  # the characters counted: text plus roles


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413_naming_it(server: str, chunked: bool) -> None:
    payload = b'{"model": "tiny-mixtral", "messages": [{"role": "user", "content": "' + b"z" * 5 * 2**20 + b'"}]}'
    content = iter([payload[i:i + 65536] for i in range(0, len(payload), 65536)]) if chunked else payload
    response = httpx.post(f"{server}{CHAT}", content=content, timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "max_request_bytes" in error["message"]
    assert str(4 * 2**20) in error["message"]
    ok = httpx.post(f"{server}{CHAT}", json={"model": MODEL, "messages": ask("hi"), "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200
