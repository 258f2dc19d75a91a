"""Client mistakes are 4xx, never 5xx: hostile and broken bodies against the real gateway on loopback.

Each case below was a 500 (or a silently accepted value) before; the property-based tests send over a
thousand generated chat and feedback bodies and check the two promises for all of them: no 5xx caused by
client input, and exactly one ledger row per chat request that reached the gateway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gwhelpers import GatewayFactory, base_config, ledger_rows, row_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer

HEADERS = {"content-type": "application/json"}


def post(client: httpx.Client, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return client.post(path, content=raw, headers=HEADERS | headers)


def chat_bytes(content: Any = "Hello.", **extra: Any) -> bytes:
    return json.dumps({"model": "auto", "messages": [{"role": "user", "content": content}], **extra}).encode()


def deep(depth: int) -> bytes:
    return b'{"model": "auto", "messages": ' + b"[" * depth + b"]" * depth + b"}"


BAD_CHAT = {
    "nested 90k deep": (deep(90_000), None),
    "nested 65 deep": (deep(65), None),
    "lone surrogate in content": (chat_bytes("\ud800 hello"), "messages[0].content"),
    "lone surrogate in a content part": (chat_bytes([{"type": "text", "text": "x\udfff"}]),
                                        "messages[0].content[0].text"),
    "NaN willingness_to_pay": (chat_bytes(routing={"willingness_to_pay": math.nan}), None),
    "NaN max_cost": (chat_bytes(routing={"max_cost": math.nan}), None),
    "NaN temperature": (chat_bytes(temperature=math.nan), None),
    "Infinity max_tokens": (chat_bytes(max_tokens=math.inf), None),
    "1e999 literal": (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "top_p": 1e999}', None),
    "not an object": (b"[1, 2]", None),
    "invalid UTF-8": (b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None),
}


@pytest.mark.parametrize("case", sorted(BAD_CHAT))
@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_bad_chat_bodies_are_400_with_one_row(make_gateway: GatewayFactory, replay: ThreadedServer, case: str,
                                              provider: str) -> None:
    gw = make_gateway(provider=provider)
    raw, param = BAD_CHAT[case]
    upstream_calls = len(replay.server.config.app.state.replay.requests)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        r = post(client, "/v1/chat/completions", raw)
        assert r.status_code == 400, r.text
        assert r.headers.get("connection") != "close"  # keep-alive survives a client mistake
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
        assert client.get("/healthz").status_code == 200  # same connection still serves
    assert len(replay.server.config.app.state.replay.requests) == upstream_calls  # nothing was forwarded
    row = row_for(gw.ledger_path, r.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 400 and row["error_type"] in {"invalid_json", "invalid_unicode", None} | {
        error["code"]}


# bodies of a valid shape that litellm failed on and reported as a connection error: a 502 after a retry on
# every candidate; OpenAI answers each with a 400 naming the field
LITELLM_MISHANDLED = {
    "developer content null": ("/v1/chat/completions", {"model": "auto", "messages": [
        {"role": "developer", "content": None}, {"role": "user", "content": "Hello."}]}, "messages[0].content"),
    "user content a number": ("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": 5}]},
                              "messages[0].content"),
    "encoding_format 5": ("/v1/embeddings", {"model": "weak", "input": "x", "encoding_format": 5}, "encoding_format"),
    "dimensions abc": ("/v1/embeddings", {"model": "weak", "input": "x", "dimensions": "abc"}, "dimensions"),
    "input of objects": ("/v1/embeddings", {"model": "weak", "input": [{"a": 1}]}, "input"),
}


@pytest.mark.parametrize("case", sorted(LITELLM_MISHANDLED))
@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_mistakes_litellm_mishandles_are_400_on_both_providers(make_gateway: GatewayFactory, replay: ThreadedServer,
                                                               case: str, provider: str) -> None:
    gw = make_gateway(provider=provider)
    path, body, param = LITELLM_MISHANDLED[case]
    upstream_calls = len(replay.server.config.app.state.replay.requests)
    r = httpx.post(gw.url + path, json=body, timeout=20)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert len(replay.server.config.app.state.replay.requests) == upstream_calls  # answered before forwarding
    row = row_for(gw.ledger_path, r.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 400 and row["fallback_chain"] in (None, "[]")


def test_a_part_litellm_refuses_is_400_naming_the_message(make_gateway: GatewayFactory) -> None:
    """litellm's own check of user content parts raises before sending; it was reported as a connection error."""
    gw = make_gateway(provider="litellm")
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=20, content=chat_bytes([{"type": "other"}]),
                   headers=HEADERS)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "messages[0]" and error["code"] == "invalid_message"
    row = row_for(gw.ledger_path, r.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    # one try: a client error on the first try is not a fallback, so it is not on the chain; a retried try
    # (or a fallback) would have left its failure there
    assert json.loads(row["fallback_chain"]) == [] and row["status"] == 400


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_non_ascii_forwarded_header_is_400(make_gateway: GatewayFactory, provider: str) -> None:
    """httpx (under litellm) cannot send a non-ASCII header value: it was a 502 after retries."""
    gw = make_gateway(provider=provider, server={"max_body_bytes": 200_000, "forward_headers": ["x-trace"]})
    r = httpx.post(gw.url + "/v1/chat/completions", content=chat_bytes(), timeout=20,
                   headers=[(b"content-type", b"application/json"), (b"x-trace", "café".encode())])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "x-trace" and r.json()["error"]["code"] == "invalid_header_value"
    ok = httpx.post(gw.url + "/v1/chat/completions", content=chat_bytes(), timeout=20,
                    headers=HEADERS | {"x-trace": "00-abc-01"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_upstream_400_passes_its_param_and_code(make_gateway: GatewayFactory, provider: str) -> None:
    """litellm's class name (BadRequestError) was the code and param was null."""
    gw = make_gateway(provider=provider)
    r = httpx.post(gw.url + "/v1/chat/completions", content=chat_bytes(model="rejecting"), headers=HEADERS,
                   timeout=20)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("temperature", "replay_400")  # the replay's 400 fault names both


def test_replay_answers_a_bad_dimensions_with_400(replay: ThreadedServer) -> None:
    for dims in ("abc", 0, -1, 10**6, True, 1.5):
        r = httpx.post(replay.url + "/v1/embeddings", json={"model": "weak", "input": "x", "dimensions": dims},
                       timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", (dims, r.text)
    ok = httpx.post(replay.url + "/v1/embeddings", json={"model": "weak", "input": "x", "dimensions": 16}, timeout=10)
    assert len(ok.json()["data"][0]["embedding"]) == 16


def test_routing_knobs_must_be_finite(gateway: ThreadedServer) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for field in ("willingness_to_pay", "max_cost", "lambda"):
            raw = chat_bytes(routing={field: 1e308 * 10 if field != "lambda" else -1})
            r = post(client, "/v1/chat/completions", raw)
            assert r.status_code == 400, (field, r.text)


def test_feedback_mistakes_are_400(gateway: ThreadedServer, dataset: RoutingDataset) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        rid = post(client, "/v1/chat/completions", chat_bytes(dataset.texts[0])).headers["x-thalamus-request-id"]
        cases: list[tuple[bytes, str | None]] = [
            (json.dumps({"request_id": rid, "label": [1]}).encode(), "label"),
            (json.dumps({"request_id": rid, "label": {}}).encode(), "label"),
            (json.dumps({"request_id": rid, "score": math.nan}).encode(), None),
            (json.dumps({"request_id": rid, "score": 1, "source": "x" * 129}).encode(), "source"),
            (json.dumps({"request_id": rid, "score": 1, "comment": "a\x00b"}).encode(), "comment"),
            (json.dumps({"request_id": "thl-\x00", "score": 1}).encode(), "request_id"),
            (json.dumps({"request_id": rid, "score": 1, "comment": "\ud800"}).encode(), "comment"),
            (b'{"request_id": ' + b"[" * 90_000 + b"]" * 90_000 + b"}", None),
        ]
        for raw, param in cases:
            r = post(client, "/v1/feedback", raw)
            assert r.status_code == 400, (raw[:60], r.text)
            assert r.json()["error"]["param"] == param, raw[:60]


@pytest.mark.parametrize("header", ["Bearer sk-é-ünïcode", "Bearer \u00ff\u00fe", "Basic sk-good", "sk-good",
                                    "Bearer", ""])
def test_any_authorization_header_is_401_not_500(make_gateway: GatewayFactory, header: str) -> None:
    gw = make_gateway(auth={"enabled": True, "keys": [{"id": "team-a", "key": "sk-good"}]})
    # httpx refuses non-latin-1 header text, so the bytes go out as the client's UTF-8
    r = httpx.post(gw.url + "/v1/chat/completions", content=chat_bytes(),
                   headers=[(b"content-type", b"application/json"), (b"authorization", header.encode())], timeout=10)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(make_gateway: GatewayFactory, scheme: str) -> None:
    gw = make_gateway(auth={"enabled": True, "keys": [{"id": "team-a", "key": "sk-good"}]})
    r = httpx.post(gw.url + "/v1/chat/completions", content=chat_bytes(), timeout=10,
                   headers=HEADERS | {"authorization": f"{scheme} sk-good"})
    assert r.status_code == 200, r.text


def test_routellm_name_keeps_the_requests_routing_limits(gateway: ThreadedServer, dataset: RoutingDataset) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for text in dataset.texts[:5]:
            plain = post(client, "/v1/chat/completions", chat_bytes(text, model="router-best-0.0"))
            assert plain.headers["x-thalamus-model"] == "strong"  # threshold 0: always the strong model
            excluded = post(client, "/v1/chat/completions",
                            json.dumps({"model": "router-best-0.0", "messages": [{"role": "user", "content": text}],
                                        "routing": {"excluded": ["strong"]}}).encode())
            assert excluded.status_code == 200 and excluded.headers["x-thalamus-model"] == "weak"
            capped = post(client, "/v1/chat/completions",
                          json.dumps({"model": "router-best-0.0", "messages": [{"role": "user", "content": text}],
                                      "routing": {"max_cost": 1e-9}}).encode())
            assert capped.headers["x-thalamus-model"] == "weak"  # the strong call is over the budget


# -- property-based: >= 1,000 generated bodies ------------------------------------------------------------

_text = st.one_of(st.text(max_size=30), st.sampled_from(["\ud800", "a\udfffb", "\x00", "é" * 3, ""]))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), _text,
                    st.floats(allow_nan=True, allow_infinity=True))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(_text, inner, max_size=3)), max_leaves=8)
_message = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "assistant",
                                                                      "tool"]),
                                            "content": st.one_of(_text, st.lists(st.fixed_dictionaries(
                                                {"type": st.sampled_from(["text", "image_url"]),
                                                 "text": _json}), max_size=2), _json)}), _json)
_routing = st.one_of(st.none(), st.dictionaries(
    st.sampled_from(["willingness_to_pay", "wtp", "lambda", "max_cost", "allowed", "excluded", "bogus"]),
    st.one_of(_scalar, st.lists(st.sampled_from(["strong", "mid", "weak", "nope"]), max_size=3)), max_size=3))
_chat = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["auto", "weak", "router:best", "router-best-0.5", "rejecting"]), _scalar),
     "messages": st.one_of(st.lists(_message, min_size=1, max_size=3), _json)},
    optional={"routing": _routing, "stream": st.one_of(st.booleans(), _scalar),
              "temperature": _scalar, "max_tokens": _scalar, "n": st.integers(1, 2), "extra": _json})


def _encode(body: Any, deep_nest: int) -> bytes:
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates go out as \ud800 escapes, NaN as NaN
    return raw if not deep_nest else raw[:-1] + b', "x": ' + b"[" * deep_nest + b"]" * deep_nest + b"}"


@dataclass
class PropertyRun:
    """One gateway per provider shared by every generated example of this module, and what was sent to it."""

    server: ThreadedServer
    client: httpx.Client
    ledger_path: Path
    first_id: str
    sent: int = 1


@pytest.fixture(scope="module", params=["litellm", "openai-compatible"])
def prop(replay: ThreadedServer, artifact: Path, tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[PropertyRun]:
    """Both providers get the same generated bodies: litellm translates a body itself and fails on shapes
    the relay forwards as they are, so a client mistake must be caught before either."""
    ledger = tmp_path_factory.mktemp("prop") / "ledger.sqlite"
    config = base_config(replay.url, artifact, ledger, provider=request.param)
    with ThreadedServer(create_app(config_from_dict(config))) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        first = post(client, "/v1/chat/completions", chat_bytes())
        yield PropertyRun(server, client, ledger, first.headers["x-thalamus-request-id"])


_PROPERTY = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=600, **_PROPERTY)  # type: ignore[arg-type]
@given(body=_chat, deep_nest=st.sampled_from([0, 0, 0, 0, 70, 5000]))
def test_generated_chat_bodies_never_5xx(prop: PropertyRun, body: dict[str, Any], deep_nest: int) -> None:
    r = post(prop.client, "/v1/chat/completions", _encode(body, deep_nest))
    prop.sent += 1
    assert r.status_code < 500, (body, r.text)
    assert "x-thalamus-request-id" in r.headers


# valid-shape bodies: they pass the gateway's own checks often, so they reach the backend (and litellm's
# translation): the shapes litellm mishandled (a developer message with content null: 62 of 700) live here
_part = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
                  st.fixed_dictionaries({"type": st.just("image_url"),
                                         "image_url": st.fixed_dictionaries({"url": st.just("data:,x")})}),
                  st.fixed_dictionaries({"type": st.sampled_from(["other", "refusal", "input_text"])}))
_valid_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "developer", "assistant", "tool", "function"]),
     "content": st.one_of(_text, st.none(), st.lists(_part, max_size=2), st.integers(), st.booleans())},
    optional={"name": st.text(max_size=8), "tool_call_id": st.text(max_size=8)})
_valid_chat = st.fixed_dictionaries(
    {"model": st.sampled_from(["auto", "weak", "router:best", "strong"]),
     "messages": st.lists(_valid_message, min_size=1, max_size=3)},
    optional={"temperature": st.floats(0, 2), "max_tokens": st.integers(1, 50), "stream": st.booleans(),
              "user": st.text(max_size=8), "seed": st.integers(0, 100)})


@settings(max_examples=300, **_PROPERTY)  # type: ignore[arg-type]
@given(body=_valid_chat)
def test_generated_valid_shape_chat_bodies_never_5xx(prop: PropertyRun, body: dict[str, Any]) -> None:
    r = post(prop.client, "/v1/chat/completions", _encode(body, 0))
    prop.sent += 1
    assert r.status_code < 500, (body, r.text)
    assert "x-thalamus-request-id" in r.headers


_feedback = st.dictionaries(st.sampled_from(["request_id", "score", "label", "source", "comment", "other"]),
                            _json, max_size=5)


@settings(max_examples=500, **_PROPERTY)  # type: ignore[arg-type]
@given(body=_feedback, use_real_id=st.booleans())
def test_generated_feedback_bodies_never_5xx(prop: PropertyRun, body: dict[str, Any], use_real_id: bool) -> None:
    if use_real_id and "request_id" in body:
        body["request_id"] = prop.first_id
    r = post(prop.client, "/v1/feedback", json.dumps(body).encode())
    assert r.status_code < 500, (body, r.text)


_tokens = st.lists(st.integers(-3, 200_000), max_size=4)
_embedding = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["weak", "strong", "auto", "nope"]), _scalar),
     "input": st.one_of(_text, st.lists(_text, max_size=3), _tokens, st.lists(_tokens, max_size=3), _json)},
    optional={"encoding_format": st.one_of(st.sampled_from(["float", "base64"]), _scalar),
              "dimensions": st.one_of(st.integers(-2, 10_000), _scalar), "user": _json, "stream": _scalar})


@settings(max_examples=250, **_PROPERTY)  # type: ignore[arg-type]
@given(body=_embedding)
def test_generated_embedding_bodies_never_5xx(prop: PropertyRun, body: dict[str, Any]) -> None:
    """encoding_format: 5 was a 502 on litellm (it fails on it and reports a connection error)."""
    r = post(prop.client, "/v1/embeddings", _encode(body, 0))
    prop.sent += 1
    assert r.status_code < 500, (body, r.text)
    assert "x-thalamus-request-id" in r.headers


_completion = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["weak", "strong", "auto"]), _scalar),
     "prompt": st.one_of(_text, st.lists(_text, max_size=3), _tokens, st.lists(_tokens, max_size=3), _json)},
    optional={"max_tokens": st.one_of(st.integers(1, 50), _scalar), "stream": st.one_of(st.booleans(), _scalar),
              "temperature": st.one_of(st.floats(0, 2), _scalar), "echo": _scalar, "suffix": _scalar,
              "logprobs": _scalar, "stop": st.one_of(_text, st.lists(_text, max_size=2), _scalar)})


@settings(max_examples=150, **_PROPERTY)  # type: ignore[arg-type]
@given(body=_completion)
def test_generated_completion_bodies_never_5xx(prop: PropertyRun, body: dict[str, Any]) -> None:
    r = post(prop.client, "/v1/completions", _encode(body, 0))
    prop.sent += 1
    assert r.status_code < 500, (body, r.text)
    assert "x-thalamus-request-id" in r.headers


def test_generated_bodies_left_one_row_per_chat_request(prop: PropertyRun) -> None:
    """After the property tests above (file order): every chat, embeddings and completions request that
    reached the gateway has a row."""
    assert prop.sent >= 1000, "run with the property tests above"
    rows = ledger_rows(prop.ledger_path, prop.sent, timeout=20)
    assert len(rows) == prop.sent
    assert rows["status"].lt(500).all()


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
@pytest.mark.parametrize("part", [{"type": "image_url"}, {"type": "text"}, {"type": "input_audio"}, "just text",
                                  {"text": "no type"}])
def test_malformed_content_parts_are_400(make_gateway: GatewayFactory, provider: str, part: Any) -> None:
    """litellm fails on a part without its payload and reports it as a connection error (a 502 after
    retries): the gateway answers the client's mistake itself."""
    gw = make_gateway(provider=provider)
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=10, content=chat_bytes([part]), headers=HEADERS)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("messages[0].content[0]")
