"""Embeddings and legacy completions passthrough, models.retrieve, routes without /v1, CORS, forwarded headers."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest
from gwhelpers import MODELS, GatewayFactory, backend, row_for

from thalamus.gateway.replay.threaded import ThreadedServer


def sdk(gw: ThreadedServer, key: str = "unused", prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + prefix, api_key=key, max_retries=0, timeout=30)


def _log(replay: ThreadedServer) -> Any:
    return replay.server.config.app.state.replay  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_embeddings_pass_to_the_named_backend(make_gateway: GatewayFactory, provider: str) -> None:
    gw = make_gateway(provider=provider)
    raw = sdk(gw).embeddings.with_raw_response.create(model="mid", input=["first text", "second text"])
    result = raw.parse()
    assert [len(d.embedding) for d in result.data] == [8, 8] and result.model == "mid"
    assert all(abs(math.hypot(*d.embedding) - 1) < 1e-6 for d in result.data)
    row = row_for(gw.ledger_path, raw.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 200 and row["chosen_model"] == "mid" and row["router"] is None
    assert row["prompt_tokens"] == result.usage.prompt_tokens and row["completion_tokens"] == 0
    assert abs(row["cost_usd"] - result.usage.prompt_tokens * 1.0 / 1e6) < 1e-15  # 'mid': $1 per 1M input
    with pytest.raises(openai.NotFoundError) as routed:
        sdk(gw).embeddings.create(model="auto", input="x")  # no routing for embeddings
    assert "named backend" in str(routed.value)
    rid = routed.value.response.headers["x-thalamus-request-id"]
    assert row_for(gw.ledger_path, rid)["status"] == 404  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_completions_json_and_stream(make_gateway: GatewayFactory, provider: str) -> None:
    gw = make_gateway(provider=provider)
    done = sdk(gw).completions.with_raw_response.create(model="weak", prompt="Say something", max_tokens=20)
    text = done.parse().choices[0].text
    assert text.startswith("Replay answer ") and text.endswith("from weak.")
    assert row_for(gw.ledger_path, done.headers["x-thalamus-request-id"])["status"] == 200  # type: ignore[attr-defined]
    stream = sdk(gw).completions.create(model="weak", prompt="Say something", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == text
    row = row_for(gw.ledger_path, stream.response.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 200 and row["stream"] and row["completion_tokens"] > 0
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gw).completions.create(model="weak", prompt="")
    assert bad.value.param == "prompt"


def test_models_retrieve_and_routes_without_v1(make_gateway: GatewayFactory, replay: ThreadedServer) -> None:
    api = replay.url + "/v1"
    gw = make_gateway(backends=[backend(m, m, api) for m in MODELS] + [backend("org/mid-large", "mid", api)])
    client = sdk(gw)
    assert client.models.retrieve("org/mid-large").id == "org/mid-large"  # a name with '/'
    assert client.models.retrieve("router:best").owned_by == "thalamus:router"
    assert client.models.retrieve("auto").id == "auto"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    bare = sdk(gw, prefix="")  # a client whose base URL has no /v1
    answer = bare.chat.completions.create(model="org/mid-large", messages=[{"role": "user", "content": "Hi"}])
    assert answer.model == "org/mid-large"
    assert {m.id for m in bare.models.list()} >= {"strong", "router:best", "org/mid-large"}
    assert bare.embeddings.create(model="mid", input="x").data[0].embedding
    assert bare.responses.create(model="mid", input="Hi").status == "completed"


def test_cors_is_off_by_default_and_configurable(make_gateway: GatewayFactory) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    off = make_gateway()
    r = httpx.options(off.url + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    on = make_gateway(server={"max_body_bytes": 200_000, "cors": {"allow_origins": ["https://app.example"]}})
    r = httpx.options(on.url + "/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(on.url + "/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    get = httpx.get(on.url + "/v1/models", headers={"origin": "https://app.example"})
    assert get.headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_listed_request_headers_reach_the_upstream(make_gateway: GatewayFactory, replay: ThreadedServer,
                                                   provider: str) -> None:
    keys = {"enabled": True, "keys": [{"id": "a", "key": "sk-client-secret"}]}
    gw = make_gateway(provider=provider, auth=keys, server={
        "max_body_bytes": 200_000, "forward_headers": ["traceparent", "X-Team-Trace", "authorization"]})
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sdk(gw, key="sk-client-secret").chat.completions.create(
        model="mid", messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"traceparent": trace, "x-team-trace": "t-42", "x-not-listed": "no"})
    seen = _log(replay).headers[-1]
    assert seen["traceparent"] == trace and seen["x-team-trace"] == "t-42" and "x-not-listed" not in seen
    assert "sk-client-secret" not in str(seen)  # the gateway key never goes upstream, even when listed
    sdk(gw, key="sk-client-secret").embeddings.create(model="mid", input="x", extra_headers={"traceparent": trace})
    assert _log(replay).headers[-1]["traceparent"] == trace


def test_passthrough_obeys_key_scope(make_gateway: GatewayFactory) -> None:
    auth = {"enabled": True, "keys": [{"id": "s", "key": "sk-s"}], "admin_key": "sk-admin", "sync_ms": 50}
    gw = make_gateway(auth=auth)
    made = httpx.post(gw.url + "/admin/keys", headers={"authorization": "Bearer sk-admin"},
                      json={"id": "mid-only", "models": ["mid"]}).json()["key"]
    assert sdk(gw, made).embeddings.create(model="mid", input="x").data
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gw, made).embeddings.create(model="weak", input="x")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gw, made).responses.create(model="weak", input="x")
