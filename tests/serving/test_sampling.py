"""Sampling parameters: what torch cannot compute is a 400 naming the field, never a 500 at generation time.

The bounds are torch's own: a temperature under float32's smallest normal number underflows in the
float32 logits math (1e-45 made every request of its batch fail), ``torch.Generator.manual_seed`` takes
-2**63 .. 2**64-1 (2**64 raised), NaN and infinities are no numbers to sample with, and a lone surrogate
makes the Rust tokenizer raise. The property test throws arbitrary values at every sampling field, each
request next to a well-formed companion that must keep its exact greedy answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servehelpers import ask, post_raw, serve, tiny_config

from thalamus.serving.protocol import FLOAT32_TINY, MAX_STOP_CHARS, SEED_MAX, SEED_MIN

MODEL = "tiny-mixtral"


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[str]:
    with serve(tiny_config(tiny_dir, default_max_tokens=3, batch_window_ms=20)) as url:
        yield url


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": ask("hi"), "max_tokens": 3, **fields}).encode()


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", 1e-45), ("temperature", FLOAT32_TINY / 2), ("temperature", float("nan")),
    ("temperature", float("inf")), ("top_p", float("nan")), ("seed", SEED_MAX + 1), ("seed", SEED_MIN - 1),
    ("seed", 2**100), ("stop", "x" * (MAX_STOP_CHARS + 1)), ("stop", ["ok", "a\ud800"]),
])
def test_uncomputable_value_is_400_naming_field(server: str, field: str, value: object) -> None:
    response = post_raw(server, _body(**{field: value}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"] and error["type"] == "invalid_request_error"


def test_lone_surrogate_in_content_is_400(server: str) -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "a\ud800b"}]}).encode()
    response = post_raw(server, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages.0.content"


@pytest.mark.parametrize("fields", [{"temperature": FLOAT32_TINY}, {"temperature": 1e-30, "top_p": 5e-324},
                                    {"seed": SEED_MAX}, {"seed": SEED_MIN}, {"seed": 0, "temperature": 2}])
def test_values_at_the_bounds_generate(server: str, fields: dict[str, Any]) -> None:
    response = post_raw(server, _body(**fields))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_tiny_temperature_samples_the_argmax(server: str) -> None:
    """At the smallest accepted temperature sampling is (numerically) greedy, whatever the seed."""
    answers = {post_raw(server, _body(temperature=t, seed=s, max_tokens=6)).json()["choices"][0]["message"]
               ["content"] for t, s in ((0, None), (FLOAT32_TINY, 1), (FLOAT32_TINY, 2), (1e-20, 3))}
    assert len(answers) == 1


ANY = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                st.floats(), st.integers(min_value=-(2**70), max_value=2**70))
TEXT = st.text(st.characters(codec=None), max_size=8) | st.just("a\ud800")  # codec=None admits surrogates
FIELDS = {  # each field: mostly values a client would send, then edges, then anything (ANY)
    "temperature": st.floats(0, 2) | st.floats(0, 1e-30) | st.sampled_from([0, 1e-45, FLOAT32_TINY, 2.5]) | ANY,
    "top_p": st.floats(0, 1) | st.sampled_from([5e-324, 1e-45, 1.0]) | ANY,
    "seed": st.integers(0, 99) | st.integers(SEED_MIN - 2, SEED_MAX + 2)
    | st.sampled_from([SEED_MAX, SEED_MAX + 1, SEED_MIN, SEED_MIN - 1]) | ANY,
    "max_tokens": st.integers(1, 4) | st.sampled_from([0, 10**30, 600]) | ANY,
    "max_completion_tokens": st.none() | st.integers(-1, 4),
    "n": st.just(1) | st.integers(-1, 2) | ANY,
    "stop": st.none() | TEXT | st.lists(TEXT, max_size=5) | st.just("x" * (MAX_STOP_CHARS + 1)),
    "stream": st.booleans(),
    "ignore_eos": st.booleans() | ANY,
}
BODIES = st.fixed_dictionaries({"model": st.just(MODEL), "messages": st.just(ask("hi"))},
                               optional=FIELDS)  # type: ignore[arg-type]
COMPANION = {"model": MODEL, "messages": ask("The companion"), "max_tokens": 3, "temperature": 0}


def _check(response: httpx.Response, stream: bool) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    elif stream:
        assert response.text.endswith("data: [DONE]\n\n") and "server_error" not in response.text
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES)
def test_no_5xx_for_any_sampling_parameters(server: str, body: dict[str, Any]) -> None:
    expected = _companion(server)
    with ThreadPoolExecutor(2) as pool:  # sent together, so the two often share a batch
        probe = pool.submit(post_raw, server, json.dumps(body).encode())
        companion = pool.submit(post_raw, server, json.dumps(COMPANION).encode())
        _check(probe.result(), body.get("stream") is True)
        assert companion.result().status_code == 200
        assert companion.result().json()["choices"][0]["message"]["content"] == expected


_COMPANION_ANSWER: dict[str, str] = {}


def _companion(server: str) -> str:
    if server not in _COMPANION_ANSWER:
        reply = post_raw(server, json.dumps(COMPANION).encode())
        _COMPANION_ANSWER[server] = reply.json()["choices"][0]["message"]["content"]
    return _COMPANION_ANSWER[server]
