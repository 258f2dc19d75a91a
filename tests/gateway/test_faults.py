"""The fault suite: every upstream failure the replay server injects, through the real gateway, on both providers.

For each fault the client's answer is checked (status, body, stream events as httpx and the openai SDK read
them) and so is the request's one ledger row, whose status must be what the client saw: a fallback before
the first byte is a 200 from the next model, a failure after it ends the stream with an OpenAI error event
and a 502 row. Each fault has its own backend ``f-FAULT`` (the replay's ``strong::FAULT``, no retries),
reached by name, with ``fallback.models: [mid]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gwhelpers import backend, base_config, ledger_rows

from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.faults import HUGE_LINE_BYTES, LEAKED_BEARER, LEAKED_SECRET
from thalamus.gateway.replay.threaded import ThreadedServer

PROVIDERS = ["litellm", "openai-compatible"]
STATUS_FAULTS = ["503", "429", "429s", "429date", "hang", "drop"]
BAD_BODIES = ["badjson", "nan", "list", "nullchoices", "utf8", "usagetype", "errorfirst"]
MID_STREAM = ["errormid", "badchunk", "die", "cut", "stall"]
SHORT = {"hang": 0.3, "stall": 0.3, "slow": 0.25}  # per-fault timeout: slow outlasts it, hang/stall trip it


class Gateway:
    """A gateway with one backend per fault, and a count of the requests sent to it."""

    def __init__(self, server: ThreadedServer, ledger: Path, provider: str) -> None:
        self.server, self.ledger, self.provider, self.sent = server, ledger, provider, 0

    def post(self, model: str, stream: bool) -> tuple[httpx.Response, str]:
        text = f"fault {model} stream={stream} {uuid.uuid4().hex[:8]}"
        body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
        self.sent += 1
        return httpx.post(self.server.url + "/v1/chat/completions", json=body, timeout=20), text

    def row(self, text: str) -> dict[str, Any]:
        """The one ledger row of the request whose prompt was ``text``."""
        deadline = time.monotonic() + 10
        while True:
            df = ledger_rows(self.ledger, 0)
            hit = df[df["prompt_text"] == text]
            if len(hit) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(hit) == 1, f"{len(hit)} ledger rows for {text!r}"
        row = {k: (None if isinstance(v, float) and v != v else v) for k, v in dict(hit.iloc[0]).items()}
        row["fallback_chain"] = json.loads(row["fallback_chain"] or "[]")
        return row


@pytest.fixture(scope="module", params=PROVIDERS)
def gw(request: pytest.FixtureRequest, replay: ThreadedServer, artifact: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    provider: str = request.param
    ledger = tmp_path_factory.mktemp("faults") / "ledger.sqlite"
    config = base_config(replay.url, artifact, ledger, provider=provider)
    api = replay.url + "/v1"
    faults = [*STATUS_FAULTS, *BAD_BODIES, *MID_STREAM, "secret", "slow", "hugeline", "jsonstream"]
    config["backends"] += [backend(f"f-{f}", f"strong::{f}", api, provider=provider, max_retries=0,
                                   timeout=SHORT.get(f, 2.0)) for f in faults]
    config["backends"].append(backend("f-hugeline-capped", "strong::hugeline", api, provider=provider,
                                      max_retries=0, max_message_bytes=256 * 1024))
    # first byte and idle set apart, so that each one is seen to apply where it should
    config["backends"] += [backend("f-hang-split", "strong::hang", api, provider=provider, max_retries=0, timeout=5,
                                   first_byte_timeout=0.3),
                           backend("f-stall-split", "strong::stall", api, provider=provider, max_retries=0,
                                   timeout=5, idle_timeout=0.3)]
    config["fallback"]["models"] = ["mid"]
    with ThreadedServer(create_app(config_from_dict(config))) as server:
        gateway = Gateway(server, ledger, provider)
        yield gateway
    assert ledger_rows(ledger, gateway.sent).shape[0] == gateway.sent  # one row per request, no more


def events(response: httpx.Response) -> list[Any]:
    """The SSE data payloads of a streamed answer: parsed JSON, or the string "[DONE]"."""
    out: list[Any] = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


def content(response: httpx.Response, stream: bool) -> str:
    if not stream:
        return "".join(c["message"]["content"] or "" for c in response.json()["choices"])
    return "".join(c["delta"].get("content") or "" for e in events(response) if isinstance(e, dict)
                   for c in e.get("choices", []))


def assert_fell_back(gw: Gateway, fault: str, stream: bool) -> dict[str, Any]:
    """The request to ``f-FAULT`` was answered by mid, completely, and logged as mid's 200."""
    r, text = gw.post(f"f-{fault}", stream)
    assert r.status_code == 200, r.text
    assert r.headers["x-thalamus-model"] == "mid"
    assert content(r, stream) == content_of("mid", r, stream)
    if stream:
        chunks = events(r)
        assert chunks[-1] == "[DONE]" and all(c["model"] == "mid" for c in chunks[:-1])
    row = gw.row(text)
    assert (row["status"], row["chosen_model"], row["error_type"]) == (200, "mid", None)
    assert [c["model"] for c in row["fallback_chain"]] == [f"f-{fault}"]
    return row


def content_of(model: str, response: httpx.Response, stream: bool) -> str:
    """The replay's synthetic answer text for that model (checked: it names the model)."""
    text = content(response, stream)
    assert text.startswith("Replay answer ") and text.endswith(f" from {model}."), text
    return text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", STATUS_FAULTS)
def test_failed_calls_fall_back(gw: Gateway, fault: str, stream: bool) -> None:
    row = assert_fell_back(gw, fault, stream)
    status = row["fallback_chain"][0]["status"]
    assert status == {"503": 503, "429": 429, "429s": 429, "429date": 429, "hang": 504}.get(fault, status)
    assert status >= 429


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", BAD_BODIES)
def test_unusable_answers_fall_back(gw: Gateway, fault: str, stream: bool) -> None:
    if gw.provider == "litellm" and stream and fault == "nullchoices":
        # litellm drops a chunk whose choices are null and relays the rest: a complete answer from strong
        r, text = gw.post("f-nullchoices", stream)
        assert r.status_code == 200 and content_of("strong", r, stream) and events(r)[-1] == "[DONE]"
        assert (gw.row(text)["status"], gw.row(text)["chosen_model"]) == (200, "f-nullchoices")
        return
    row = assert_fell_back(gw, fault, stream)
    assert row["fallback_chain"][0]["status"] in (500, 502)


@pytest.mark.parametrize("fault", MID_STREAM)
def test_failures_after_the_first_byte_end_the_stream_with_an_error(gw: Gateway, fault: str) -> None:
    r, text = gw.post(f"f-{fault}", stream=True)
    assert r.status_code == 200 and r.headers["x-thalamus-model"] == f"f-{fault}"
    got = events(r)
    assert "[DONE]" not in got
    *chunks, last = got
    assert chunks and all(c["model"] == f"f-{fault}" and isinstance(c["choices"], list) for c in chunks)
    assert set(last) == {"error"} and last["error"]["type"] == "upstream_error"
    assert f"upstream f-{fault} failed mid-stream" in last["error"]["message"]
    if fault == "errormid":  # its error event quotes a key: redacted on the way through
        assert LEAKED_SECRET not in r.text and "sk-proj-[REDACTED]" in last["error"]["message"]
    row = gw.row(text)
    assert (row["status"], row["chosen_model"]) == (502, f"f-{fault}") and row["error_type"]
    assert row["fallback_chain"] == []  # no attempt failed before the first byte


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_first_byte_timeout_applies_before_the_answer(gw: Gateway, stream: bool) -> None:
    start = time.monotonic()
    row = assert_fell_back(gw, "hang-split", stream)  # idle and timeout are 5 s, first byte 0.3 s
    assert time.monotonic() - start < 3.0
    assert row["fallback_chain"][0]["status"] == 504 and row["fallback_chain"][0]["error"] == "first_byte_timeout"


def test_idle_timeout_applies_between_chunks(gw: Gateway) -> None:
    start = time.monotonic()
    r, text = gw.post("f-stall-split", stream=True)  # first byte and timeout are 5 s, idle 0.3 s
    assert time.monotonic() - start < 3.0
    last = events(r)[-1]
    assert "idle_timeout" in last["error"]["message"]
    row = gw.row(text)
    assert (row["status"], row["error_type"]) == (502, "idle_timeout")


@pytest.mark.parametrize("fault", ["errormid", "die"])
def test_the_openai_sdk_sees_a_mid_stream_failure_as_an_error(gw: Gateway, fault: str) -> None:
    client = openai.OpenAI(base_url=gw.server.url + "/v1", api_key="unused", max_retries=0)
    text = f"sdk {fault} {uuid.uuid4().hex[:8]}"
    gw.sent += 1
    stream = client.chat.completions.create(model=f"f-{fault}", stream=True,
                                            messages=[{"role": "user", "content": text}])
    received = []
    with pytest.raises(openai.APIError, match=f"upstream f-{fault} failed mid-stream"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received and "".join(received).startswith("Replay")
    assert gw.row(text)["status"] == 502


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_secrets_never_reach_the_client(gw: Gateway, stream: bool) -> None:
    r, text = gw.post("f-secret", stream)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "Incorrect API key provided: sk-proj-[REDACTED]" in message and "Bearer [REDACTED]" in message
    assert LEAKED_SECRET not in r.text and LEAKED_BEARER.split()[1][:20] not in r.text
    assert gw.row(text)["status"] == 400


def test_a_stream_longer_than_timeout_is_not_cut(gw: Gateway) -> None:
    start = time.monotonic()
    r, text = gw.post("f-slow", stream=True)  # 0.1 s between chunks, ~0.6 s in all, timeout 0.25 s
    assert time.monotonic() - start > 0.5
    assert r.status_code == 200 and events(r)[-1] == "[DONE]" and content_of("strong", r, True)
    assert (gw.row(text)["status"], gw.row(text)["chosen_model"]) == (200, "f-slow")


def test_huge_sse_lines_are_relayed(gw: Gateway) -> None:
    r, text = gw.post("f-hugeline", stream=True)
    assert r.status_code == 200 and events(r)[-1] == "[DONE]"
    assert "x" * HUGE_LINE_BYTES in content(r, True)
    assert gw.row(text)["status"] == 200


def test_sse_lines_over_max_message_bytes_are_an_upstream_error(gw: Gateway) -> None:
    r, text = gw.post("f-hugeline-capped", stream=True)  # the 600 KiB line is the second chunk
    row = gw.row(text)
    if gw.provider == "litellm":  # litellm reads lines of any length: max_message_bytes is not applied
        assert events(r)[-1] == "[DONE]" and row["status"] == 200
        return
    last = events(r)[-1]
    assert "max_message_bytes" in last["error"]["message"] and row["status"] == 502


def test_a_json_body_answering_a_stream_request(gw: Gateway) -> None:
    """openai-compatible relays the completion as a stream (the answer is there); litellm cannot read
    it (its SSE parser sees no event) and falls back."""
    if gw.provider == "litellm":
        assert_fell_back(gw, "jsonstream", True)
        return
    r, text = gw.post("f-jsonstream", stream=True)
    got = events(r)
    assert r.status_code == 200 and got[-1] == "[DONE]" and content_of("strong", r, True)
    assert got[0]["object"] == "chat.completion.chunk" and got[0]["choices"][0]["finish_reason"] == "stop"
    assert (gw.row(text)["status"], gw.row(text)["chosen_model"]) == (200, "f-jsonstream")
