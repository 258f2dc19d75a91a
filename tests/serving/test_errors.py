"""Bad input gets OpenAI-shaped errors naming what is wrong, and the server keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import openai
import pytest
from openai import OpenAI
from servehelpers import ask

CHAT = "/v1/chat/completions"


def _error(response: httpx.Response, status: int) -> dict[str, str | None]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_unknown_model_is_404(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client_for(tiny_server).chat.completions.create(model="gpt-17", messages=ask("hi"))
    assert "gpt-17" in str(info.value) and "tiny-mixtral" in str(info.value)


def test_prompt_longer_than_context_names_both_lengths(tiny_server: str) -> None:
    body = {"model": "tiny-mixtral", "messages": ask("word " * 700)}
    error = _error(httpx.post(f"{tiny_server}{CHAT}", json=body, timeout=60), 400)
    message = str(error["message"])
    assert "512" in message and error["code"] == "context_length_exceeded"
    prompt_len = int(message.split("The prompt is ")[1].split(" ")[0])
    assert prompt_len > 700


def test_max_tokens_past_context_names_field(tiny_server: str) -> None:
    body = {"model": "tiny-mixtral", "messages": ask("hi"), "max_tokens": 600}
    error = _error(httpx.post(f"{tiny_server}{CHAT}", json=body, timeout=60), 400)
    assert error["param"] == "max_tokens" and "600" in str(error["message"]) and "512" in str(error["message"])


@pytest.mark.parametrize(("field", "value"), [("temperature", 2.5), ("temperature", -1), ("top_p", 0),
                                              ("top_p", 1.5), ("max_tokens", 0), ("n", 2),
                                              ("stop", ["a", "b", "c", "d", "e"]), ("seed", "x")])
def test_invalid_sampling_parameter_names_field(tiny_server: str, field: str, value: object) -> None:
    body = {"model": "tiny-mixtral", "messages": ask("hi"), field: value}
    error = _error(httpx.post(f"{tiny_server}{CHAT}", json=body, timeout=60), 400)
    assert error["param"] == field and field in str(error["message"])


def test_sdk_raises_bad_request(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    with pytest.raises(openai.BadRequestError):
        client_for(tiny_server).chat.completions.create(model="tiny-mixtral", messages=ask("hi"),
                                                        temperature=9)


def test_missing_messages_is_400(tiny_server: str) -> None:
    error = _error(httpx.post(f"{tiny_server}{CHAT}", json={"model": "tiny-mixtral"}, timeout=60), 400)
    assert error["param"] == "messages"


def test_generation_error_is_500_and_server_keeps_serving(tiny_server: str,
                                                          client_for: Callable[[str], OpenAI]) -> None:
    body = {"model": "broken", "messages": ask("hi"), "max_tokens": 4}
    error = _error(httpx.post(f"{tiny_server}{CHAT}", json=body, timeout=60), 500)
    assert "broken" in str(error["message"]) and "index" in str(error["message"]).lower()
    streamed = httpx.post(f"{tiny_server}{CHAT}", json={**body, "stream": True}, timeout=60)
    assert streamed.status_code == 500 and "generation failed" in streamed.json()["error"]["message"]
    reply = client_for(tiny_server).chat.completions.create(model="tiny-mixtral", messages=ask("still there?"),
                                                            max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_health_answers_during_long_generation(tiny_server: str, client_for: Callable[[str], OpenAI]) -> None:
    client = client_for(tiny_server)
    client.chat.completions.create(model="tiny-olmoe", messages=ask("warm"), max_tokens=1)
    done = threading.Event()

    def long_request() -> None:
        client.chat.completions.create(model="tiny-olmoe", messages=ask("go on"), max_tokens=200,
                                       temperature=0.8, seed=1)
        done.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.3)
    latencies: list[float] = []
    while not done.is_set() and len(latencies) < 10:
        started = time.perf_counter()
        assert httpx.get(f"{tiny_server}/healthz", timeout=10).json()["status"] == "ok"
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
    worker.join(timeout=120)
    assert done.is_set()
    assert len(latencies) >= 3, "generation ended before the health checks could overlap it"
    assert max(latencies) < 1.0, latencies
