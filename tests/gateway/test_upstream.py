"""The pieces under the fault suite: Retry-After reaches UpstreamError from both backends, timeouts resolve
from the config, the answer checks and the redaction rules."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from typing import Any

import pytest

from thalamus.gateway.config import BackendConfig
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.gateway.upstream.backends import make_backend
from thalamus.gateway.upstream.checks import UpstreamError, check_chunk, check_completion, loads, parse_retry_after
from thalamus.gateway.upstream.redact import redact

PROVIDERS = ["litellm", "openai-compatible"]
BODY = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}


def upstream_error(config: BackendConfig, stream: bool) -> UpstreamError:
    async def call() -> Any:
        backend = make_backend(config)
        try:
            if stream:
                return [c async for c in backend.stream({**BODY, "stream": True})]
            return await backend.complete(BODY)
        finally:
            await backend.aclose()

    with pytest.raises(UpstreamError) as info:
        asyncio.run(call())
    return info.value


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_is_read_from_both_backends(replay: ThreadedServer, provider: str, stream: bool) -> None:
    def config(fault: str) -> BackendConfig:
        return BackendConfig(name="b", provider=provider, model=f"openai/strong::{fault}",
                             api_base=replay.url + "/v1", timeout=2)

    seconds = upstream_error(config("429s"), stream)
    assert (seconds.status, seconds.kind, seconds.retry_after) == (429, "retry", 1.0)
    date = upstream_error(config("429date"), stream)
    assert date.retry_after is not None and 0.0 < date.retry_after <= 2.0  # a date 2 s ahead, to the second
    assert upstream_error(config("429"), stream).retry_after is None


def embeddings_error(config: BackendConfig) -> UpstreamError:
    async def call() -> Any:
        backend = make_backend(config)
        try:
            return await backend.post_json("/embeddings", {"model": "b", "input": ["ping"]})
        finally:
            await backend.aclose()

    with pytest.raises(UpstreamError) as info:
        asyncio.run(call())
    return info.value


@pytest.mark.parametrize("path", ["/chat/completions", "/embeddings"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_connect_timeout_is_its_own(provider: str, path: str) -> None:
    """A listener whose backlog is full drops new SYNs, so connecting hangs: connect_timeout ends it, on chat
    and on the other endpoints (litellm's embeddings call once took only the first-byte timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # fill the accept queue; connects beyond it stay in SYN_SENT
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.05)
        config = BackendConfig(name="b", provider=provider, model="openai/strong", timeout=5,
                               connect_timeout=0.3, api_base=f"http://127.0.0.1:{port}/v1")
        start = time.monotonic()
        error = upstream_error(config, stream=False) if path == "/chat/completions" else embeddings_error(config)
        assert time.monotonic() - start < 3.0 and error.kind == "retry" and error.status in (502, 504)
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_timeouts_resolve_from_timeout_for_old_configs() -> None:
    old = BackendConfig(name="b", model="openai/m", timeout=2.5)
    assert (old.connect_s, old.first_byte_s, old.idle_s) == (2.5, 2.5, 2.5)
    default = BackendConfig(name="b", model="openai/m")
    assert (default.connect_s, default.first_byte_s, default.idle_s) == (10.0, 60.0, 60.0)
    assert default.max_message_bytes == 16 * 1024 * 1024
    new = BackendConfig(name="b", model="openai/m", connect_timeout=1, first_byte_timeout=30, idle_timeout=5)
    assert (new.connect_s, new.first_byte_s, new.idle_s) == (1, 30, 5)


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2020"):
        assert parse_retry_after(bad) is None, bad


@pytest.mark.parametrize(("data", "what"), [
    (b'{"choices": [], "x": NaN}', "non-finite"), (b'{"x": 1e999}', "non-finite"), (b'{"x": -Infinity}', "non-finite"),
    (b'{"x": "\xff"}', "UnicodeDecodeError"), (b"[" * 100_000, "not valid JSON"), (b'{"a":', "JSONDecodeError")])
def test_loads_refuses_what_a_client_could_not_read(data: bytes, what: str) -> None:
    with pytest.raises(UpstreamError, match=what) as info:
        loads("b", data)
    assert (info.value.kind, info.value.status) == ("retry", 502)


@pytest.mark.parametrize(("body", "what"), [
    ([], "JSON list"), ({"choices": None}, "choices is NoneType"), ({"choices": [1]}, r"choices\[0\] is a int"),
    ({"choices": [{"message": "hi"}]}, "message is not an object"), ({"choices": [], "usage": 3}, "usage is a int"),
    ({"choices": [], "usage": {"prompt_tokens": "lots"}}, "'lots', not a token count"),
    ({"choices": [], "usage": {"completion_tokens": -1}}, "-1"),
    ({"choices": [], "usage": {"total_tokens": True}}, "True"),
    ({"error": {"message": "overloaded", "code": 529}}, "upstream sent an error in the response body: overloaded")])
def test_completion_shape_checks(body: Any, what: str) -> None:
    with pytest.raises(UpstreamError, match=what):
        check_completion("b", body)


def test_good_answers_pass_the_checks_unchanged() -> None:
    done = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 10**30, "completion_tokens": 2, "total_tokens": 3}}
    assert check_completion("b", done) is done
    chunk = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}], "usage": None}
    assert check_chunk("b", chunk) is chunk and check_chunk("b", {"choices": [], "usage": {"prompt_tokens": 1}})
    with pytest.raises(UpstreamError, match="error in a stream chunk: boom"):
        check_chunk("b", {"error": {"message": "boom"}})


@pytest.mark.parametrize(("text", "kept", "gone"), [
    ("Incorrect API key provided: sk-proj-abcdefghijklmnop1234", "Incorrect API key provided: sk-proj-[REDACTED]",
     "abcdefghijklmnop1234"),
    ("key sk-ant-api03-AbCdEfGhIjKlMnOpQrSt_uv", "sk-ant-api03-[REDACTED]", "AbCdEfGhIjKlMnOp"),
    ("Authorization: Bearer abc.def-ghi12345", "Bearer [REDACTED]", "abc.def-ghi12345"),
    ("bearer tok_abcdefgh123", "bearer [REDACTED]", "tok_abcdefgh123"),
    ('{"api_key": "hunter2hunter2"}', '"api_key": "[REDACTED]"', "hunter2"),
    ("url?api-key=s3cr3tvalue&x=1", "api-key=[REDACTED]&x=1", "s3cr3tvalue"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIA[REDACTED]", "IOSFODNN7EXAMPLE"),
    ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIza[REDACTED]", "SyA1234567890"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_[REDACTED]", "abcdefghijklmnop"),
    ("hf_abcdefghijklmnopqrstuvwxyzABCD gsk_abcdefghijklmnopqrstuvwx", "hf_[REDACTED] gsk_[REDACTED]",
     "abcdefghijklmnopqrst"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "jwt [REDACTED]", "eyJhbGci"),
    ("hex 0123456789abcdef0123456789abcdef01 end", "hex [REDACTED] end", "0123456789abcdef"),
    ("b64 dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZTEyMzQ1Njc4OTA= end", "b64 [REDACTED] end", "dGhpcyBp"),
])
def test_redact_removes_key_like_strings(text: str, kept: str, gone: str) -> None:
    out = redact(text)
    assert kept in out and gone not in out, out


@pytest.mark.parametrize("text", [
    "This model's maximum context length is 4096 tokens. However, your messages resulted in 9000 tokens.",
    "model meta-llama/Llama-3.1-8B-Instruct does not exist", "request chatcmpl-244543f4cc06b3f978ca2128 failed",
    "https://api.openai.com/v1/chat/completions returned 503", "The password is wrong", "Authorization: Bearer", ""])
def test_redact_keeps_ordinary_error_text(text: str) -> None:
    assert redact(text) == text


def test_upstream_error_messages_are_redacted() -> None:
    error = UpstreamError("b", "client", 400, "bad key sk-live-abcdefghijklmnopqrst", code="sk-abcdefghijklmnopqrst")
    assert "abcdefghijklmnop" not in error.message + str(error) + str(error.code)
