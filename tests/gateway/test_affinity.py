"""Conversation affinity end to end: multi-turn conversations through the openai SDK (chat and Responses),
with and without a session id, kept or switched by the margin, pinned to their provider family by
thinking state, shared by two replicas through the ledger database, and the switch rate in the stats."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gwhelpers import GatewayFactory, base_config, row_for

from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer

Q1, Q2, Q3 = "What is 3 plus 4?", "And what is that times 6?", "Now subtract 5."


def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20)


def chat(server: ThreadedServer, messages: list[dict[str, Any]], lam: float, routing: dict[str, Any] | None = None,
         **extra: Any) -> tuple[str, str, str]:
    """(answering model, answer text, request id) of one routed chat turn at routing lambda ``lam``."""
    raw = client(server).chat.completions.with_raw_response.create(
        model="router:best", messages=messages, extra_body={"routing": {"lambda": lam} | (routing or {})},  # type: ignore[arg-type]
        **extra)
    answer = raw.parse()
    return raw.headers["x-thalamus-model"], answer.choices[0].message.content or "", raw.headers[
        "x-thalamus-request-id"]


def router_override(**values: Any) -> dict[str, Any]:
    return {"routers": {"best": {"artifact": "", "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                                 "strong": "strong", "weak": "weak"} | values}}


@pytest.fixture
def gateway_with(make_gateway: GatewayFactory, artifact: Path) -> Iterator[Any]:
    def start(margin: float | None = None, **overrides: Any) -> ThreadedServer:
        routers = router_override(artifact=str(artifact), **({} if margin is None else {"switch_margin": margin}))
        return make_gateway(**routers, **overrides)
    yield start


def test_history_keeps_the_model_under_the_margin(gateway_with: Any) -> None:
    """No session id: the earlier user turns identify the conversation; the router's gain at turn 2 is below
    the margin, so the model that answered turn 1 answers turn 2 (and a fresh conversation is re-routed)."""
    server = gateway_with(margin=0.9)
    m1, a1, id1 = chat(server, [{"role": "user", "content": Q1}], lam=0.0)
    assert m1 == "strong"
    turn2 = [{"role": "user", "content": Q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": Q2}]
    m2, _, id2 = chat(server, turn2, lam=0.5)
    fresh, _, id3 = chat(server, [{"role": "user", "content": Q2}], lam=0.5)
    assert m2 == "strong" and fresh != "strong"  # the router alone prefers another model at lambda 0.5
    r1, r2, r3 = (row_for(server.ledger_path, i) for i in (id1, id2, id3))
    assert (r1["affinity"], r2["affinity"], r2["affinity_reason"]) == ("new", "kept", "margin")
    assert r2["session_id"] == r1["session_id"] and r3["session_id"] != r1["session_id"]
    assert r2["chosen_model"] == "strong" and r3["affinity"] == "new"


def test_session_header_switches_on_a_gain_above_the_margin(gateway_with: Any) -> None:
    """With an explicit id the conversation is found whatever the messages; a gain above the margin switches."""
    server = gateway_with(margin=0.05)
    headers = {"x-thalamus-session-id": "conv-42"}
    m1, _, id1 = chat(server, [{"role": "user", "content": Q1}], lam=0.0, extra_headers=headers)
    # the client keeps the history itself and sends only the new turn: the id still finds the conversation
    m2, _, id2 = chat(server, [{"role": "user", "content": Q2}], lam=0.5, extra_headers=headers)
    m3, _, id3 = chat(server, [{"role": "user", "content": Q3}], lam=0.5, extra_headers=headers)
    r1, r2, r3 = (row_for(server.ledger_path, i) for i in (id1, id2, id3))
    assert m1 == "strong" and m2 != "strong" and m3 == m2
    assert (r2["affinity"], r2["affinity_reason"]) == ("switched", "gain")
    assert (r3["affinity"], r3["affinity_reason"]) == ("kept", "same")
    assert r1["session_id"] == r2["session_id"] == r3["session_id"]
    gain = _gain(r2, "strong", r2["chosen_model"], lam=0.5)
    assert gain > 0.05
    stats = httpx.get(server.url + "/api/stats/affinity").json()
    assert (stats["conversations"], stats["kept"], stats["switched"], stats["switch_rate"]) == (1, 1, 1, 0.5)


def _gain(row: dict[str, Any], previous: str, chosen: str, lam: float) -> float:
    """The utility gain the row's candidates give ``chosen`` over ``previous`` under a lambda knob."""
    import json

    cands = json.loads(row["candidates"])
    scale = max(c["cost"] for c in cands.values())
    u = {m: (1 - lam) * c["quality"] - lam * c["cost"] / scale for m, c in cands.items()}
    return u[chosen] - u[previous]


def test_metadata_session_id_in_the_responses_api(gateway_with: Any) -> None:
    """Responses API: ``metadata.session_id`` names the conversation; turn 2 stays under the margin."""
    server = gateway_with(margin=0.9)
    sdk = client(server)
    meta = {"session_id": "resp-conv-1"}
    first = sdk.responses.with_raw_response.create(model="router:best", input=Q1, metadata=meta,
                                                   extra_body={"routing": {"lambda": 0.0}})
    answer = first.parse()
    second = sdk.responses.with_raw_response.create(
        model="router:best", metadata=meta, extra_body={"routing": {"lambda": 0.5}},
        input=[{"role": "user", "content": Q1}, {"role": "assistant", "content": answer.output_text},
               {"role": "user", "content": Q2}])
    assert first.headers["x-thalamus-model"] == second.headers["x-thalamus-model"] == "strong"
    r2 = row_for(server.ledger_path, second.headers["x-thalamus-request-id"])
    assert (r2["affinity"], r2["affinity_reason"]) == ("kept", "margin")
    # without affinity the same second turn goes elsewhere: the margin, not the router, kept it
    other = sdk.responses.with_raw_response.create(model="router:best", input=Q2,
                                                   extra_body={"routing": {"lambda": 0.5}})
    assert other.headers["x-thalamus-model"] != "strong"


def test_switching_off_affinity_reroutes_every_turn(gateway_with: Any) -> None:
    server = gateway_with(affinity={"enabled": False})
    m1, a1, _ = chat(server, [{"role": "user", "content": Q1}], lam=0.0)
    turn2 = [{"role": "user", "content": Q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": Q2}]
    m2, _, id2 = chat(server, turn2, lam=0.5)
    assert m1 == "strong" and m2 != "strong"
    assert row_for(server.ledger_path, id2)["affinity"] is None


THINKING = {"type": "thinking", "thinking": "3 + 4 = 7", "signature": "EqQBCkYIBxgCKkDsig"}


@pytest.fixture
def family_gateway(replay: ThreadedServer, artifact: Path, tmp_path: Path) -> Iterator[ThreadedServer]:
    """strong and mid of the "anthropic" family, weak of "openai"; a margin of 0 (any gain switches)."""
    ledger = tmp_path / "ledger.sqlite"
    config = base_config(replay.url, artifact, ledger, provider="openai-compatible",
                         **router_override(artifact=str(artifact), switch_margin=0.0))
    families = {"strong": "anthropic", "mid": "anthropic", "weak": "openai"}
    for entry in config["backends"]:
        entry["family"] = families.get(entry["name"], "other")
    with ThreadedServer(create_app(config_from_dict(config))) as server:
        server.ledger_path = ledger  # type: ignore[attr-defined]
        yield server


def test_thinking_state_never_changes_family(family_gateway: ThreadedServer) -> None:
    server = family_gateway
    ledger: Path = server.ledger_path  # type: ignore[attr-defined]
    m1, a1, _ = chat(server, [{"role": "user", "content": Q1}], lam=0.0)
    assert m1 == "strong"
    plain: list[dict[str, Any]] = [{"role": "user", "content": Q1}, {"role": "assistant", "content": a1},
                                   {"role": "user", "content": Q2}]
    with_state: list[dict[str, Any]] = [
        plain[0], {"role": "assistant", "content": [THINKING, {"type": "text", "text": a1}]}, plain[2]]
    # lambda 1: the router wants the cheapest model, weak (openai); the thinking block keeps the conversation
    # with anthropic, where the cheaper mid still beats strong: a switch, inside the family
    m2, _, id2 = chat(server, with_state, lam=1.0)
    assert m2 == "mid"
    row = row_for(ledger, id2)
    assert (row["affinity"], row["affinity_reason"]) == ("switched", "gain")
    # litellm's form of the same state (thinking_blocks on the message), with mid excluded: strong, kept
    blocks: list[dict[str, Any]] = [
        plain[0], {"role": "assistant", "content": a1, "thinking_blocks": [THINKING]}, plain[2]]
    m3, _, id3 = chat(server, blocks, lam=1.0, routing={"excluded": ["mid"]})
    assert m3 == "strong" and row_for(ledger, id3)["affinity_reason"] == "state"
    # no anthropic model allowed: refused with a 409 naming the family, never answered by another provider
    with pytest.raises(openai.APIStatusError) as err:
        chat(server, with_state, lam=1.0, routing={"allowed": ["weak"]})
    assert err.value.status_code == 409 and "anthropic" in str(err.value.message)
    # the same history without the state may change family
    m4, _, _ = chat(server, plain, lam=1.0)
    assert m4 == "weak"


def test_reasoning_items_pin_the_family_in_the_responses_api(family_gateway: ThreadedServer) -> None:
    sdk = client(family_gateway)
    first = sdk.responses.with_raw_response.create(model="router:best", input=Q1,
                                                   extra_body={"routing": {"lambda": 0.0}})
    text = first.parse().output_text
    history: list[Any] = [{"role": "user", "content": Q1},
                          {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB..."},
                          {"role": "assistant", "content": text}, {"role": "user", "content": Q2}]
    second = sdk.responses.with_raw_response.create(model="router:best", input=history,
                                                    extra_body={"routing": {"lambda": 1.0}})
    assert first.headers["x-thalamus-model"] == "strong" and second.headers["x-thalamus-model"] == "mid"
    plain = [h for h in history if h.get("type") != "reasoning"]
    third = sdk.responses.with_raw_response.create(model="router:best", input=plain,
                                                   extra_body={"routing": {"lambda": 1.0}})
    assert third.headers["x-thalamus-model"] == "weak"


def test_replicas_share_sessions_and_a_failing_model_switches(make_gateway: GatewayFactory, artifact: Path,
                                                              tmp_path: Path) -> None:
    """Two gateways on one ledger database: turn 2 lands on the replica where strong fails; it was kept,
    failed, and the answer came from a fallback (switched, "failed"); turn 3 on the first replica stays there."""
    shared = tmp_path / "shared.sqlite"
    ledger = {"url": f"sqlite:///{shared}", "store_prompts": True, "flush_ms": 20}
    routers = router_override(artifact=str(artifact), switch_margin=0.9)
    a = make_gateway(ledger=ledger, **routers)
    b = make_gateway(faults={"strong": "503"}, ledger=ledger, **routers)
    m1, a1, _ = chat(a, [{"role": "user", "content": Q1}], lam=0.0)
    time.sleep(0.3)  # the session write is batched (affinity.flush_ms)
    turn2 = [{"role": "user", "content": Q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": Q2}]
    m2, a2, id2 = chat(b, turn2, lam=0.0)
    row = row_for(shared, id2)
    assert m1 == "strong" and m2 != "strong"
    assert (row["affinity"], row["affinity_reason"]) == ("switched", "failed")
    time.sleep(0.3)
    turn3 = [*turn2, {"role": "assistant", "content": a2}, {"role": "user", "content": Q3}]
    m3, _, id3 = chat(a, turn3, lam=0.0)  # the router alone would pick strong again (lambda 0)
    assert m3 == m2 and row_for(shared, id3)["affinity_reason"] == "margin"


def test_a_streamed_turn_is_remembered(gateway_with: Any) -> None:
    """The answer of a streamed turn is recorded when the stream ends; the next (streamed) turn keeps it."""
    server = gateway_with(margin=0.9)
    sdk = client(server)
    headers = {"x-thalamus-session-id": "streamed-1"}
    with sdk.chat.completions.with_streaming_response.create(
            model="router:best", messages=[{"role": "user", "content": Q1}], stream=True, extra_headers=headers,
            extra_body={"routing": {"lambda": 0.0}}) as first:
        m1, text = first.headers["x-thalamus-model"], "".join(
            c.choices[0].delta.content or "" for c in first.parse() if c.choices)
    turn2 = [{"role": "user", "content": Q1}, {"role": "assistant", "content": text}, {"role": "user", "content": Q2}]
    with sdk.chat.completions.with_streaming_response.create(
            model="router:best", messages=turn2, stream=True, extra_headers=headers,  # type: ignore[arg-type]
            extra_body={"routing": {"lambda": 0.5}}) as second:
        m2, rid = second.headers["x-thalamus-model"], second.headers["x-thalamus-request-id"]
        list(second.parse())
    assert m1 == m2 == "strong"
    assert row_for(server.ledger_path, rid)["affinity"] == "kept"
