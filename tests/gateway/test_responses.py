"""POST /v1/responses through the real openai SDK: routed like chat, translated or forwarded, one row each."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from gwhelpers import MODELS, GatewayFactory, backend, row_for
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFunctionToolCall,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
)

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.threaded import ThreadedServer

TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def sdk(gw: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def _upstream_log(replay: ThreadedServer) -> Any:
    return replay.server.config.app.state.replay.requests  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_json_response_is_routed_and_logged(make_gateway: GatewayFactory, dataset: RoutingDataset,
                                            provider: str) -> None:
    gw = make_gateway(provider=provider)
    text = dataset.texts[3]
    raw = sdk(gw).responses.with_raw_response.create(model="auto", instructions="Answer briefly.", input=text)
    response = raw.parse()
    chosen = raw.headers["x-thalamus-model"]
    assert response.model == chosen and response.status == "completed"
    # the replay answers a routing text it has no recording for (instructions + input) with its synthetic text
    assert response.output_text.startswith("Replay answer ") and response.output_text.endswith(f"from {chosen}.")
    assert response.usage is not None and response.usage.output_tokens > 0
    row = row_for(gw.ledger_path, raw.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 200 and row["router"] == "best" and row["requested_model"] == "auto"
    assert row["prompt_text"] == f"Answer briefly.\n\n{text}"  # instructions + the last user input
    assert row["prompt_tokens"] == response.usage.input_tokens and row["cost_usd"] > 0


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_stream_reads_as_the_sdks_event_types(make_gateway: GatewayFactory, dataset: RoutingDataset,
                                              provider: str) -> None:
    gw = make_gateway(provider=provider)
    stream = sdk(gw).responses.create(model="mid", input=[{"role": "user", "content": dataset.texts[5]}],
                                      stream=True)
    seen = list(stream)
    assert isinstance(seen[0], ResponseCreatedEvent) and isinstance(seen[-1], ResponseCompletedEvent)
    deltas = "".join(e.delta for e in seen if isinstance(e, ResponseTextDeltaEvent))
    final = seen[-1].response
    assert deltas == final.output_text == "mid says the answer to question 5 is 10."
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    assert final.usage is not None and final.usage.total_tokens > 0
    rid = stream.response.headers["x-thalamus-request-id"]
    row = row_for(gw.ledger_path, rid)  # type: ignore[attr-defined]
    assert row["status"] == 200 and row["stream"] and row["completion_tokens"] == final.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_become_function_call_items(make_gateway: GatewayFactory, stream: bool) -> None:
    gw = make_gateway(provider="openai-compatible")
    args: dict[str, Any] = {"model": "weak", "input": "Weather in Oslo?", "tools": [TOOL]}
    if stream:
        events = list(sdk(gw).responses.create(**args, stream=True))
        items = [e.item for e in events if isinstance(e, ResponseOutputItemDoneEvent)]
    else:
        items = list(sdk(gw).responses.create(**args).output)
    assert len(items) == 1 and isinstance(items[0], ResponseFunctionToolCall)
    assert items[0].name == "get_weather" and items[0].arguments == '{"city": "replay"}'
    follow = sdk(gw).responses.create(model="weak", tools=[TOOL], input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": items[0].call_id, "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": items[0].call_id, "output": "sunny, 21 C"}])
    assert follow.output_text == "Tool result received: sunny, 21 C"  # the tool result reached the model


def test_native_backends_get_the_responses_body(make_gateway: GatewayFactory, replay: ThreadedServer,
                                                dataset: RoutingDataset) -> None:
    api = replay.url + "/v1"
    gw = make_gateway(provider="openai-compatible", backends=[
        backend(m, m, api, provider="openai-compatible", responses=True) for m in MODELS])
    response = sdk(gw).responses.create(model="auto", instructions="Be brief.", input=dataset.texts[2])
    seen = _upstream_log(replay)[-1]
    assert seen["input"] == dataset.texts[2] and "messages" not in seen  # forwarded, not translated
    assert response.id.startswith("resp_replay") and response.output_text.endswith(f"from {response.model}.")
    events = list(sdk(gw).responses.create(model="mid", input="Hello there", stream=True))
    assert isinstance(events[-1], ResponseCompletedEvent) and events[-1].response.id.startswith("resp_replay")
    assert events[-1].response.model == "mid"


def test_client_mistakes_are_4xx_with_a_row(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    for args, param in (({"model": "mid"}, "input"), ({"model": "mid", "input": "x", "previous_response_id": "r1"},
                                                       "previous_response_id"),
                        ({"model": "mid", "input": [{"type": "web_search_call"}]}, "input[0].type"),
                        # provider state alone (was an IndexError, a 500): nothing for a model to answer
                        ({"model": "mid", "input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input"),
                        ({"model": "mid", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]")):
        with pytest.raises(openai.BadRequestError) as bad:
            sdk(gw).responses.create(**args)
        assert bad.value.param == param, args
        row = row_for(gw.ledger_path, bad.value.response.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
        assert row["status"] == 400


def test_stream_falls_back_before_its_first_event_and_reports_a_later_failure(
        make_gateway: GatewayFactory, replay: ThreadedServer) -> None:
    api = replay.url + "/v1"
    gw = make_gateway(provider="openai-compatible", fallback={"models": ["mid"], "backoff_s": 0.01}, backends=[
        backend(m, m, api, provider="openai-compatible") for m in MODELS] + [
        backend("broken", "strong::503", api, provider="openai-compatible"),
        backend("cut", "mid::errormid", api, provider="openai-compatible", max_retries=0)])
    stream = sdk(gw).responses.create(model="broken", input="Hi", stream=True)
    events = list(stream)
    assert isinstance(events[-1], ResponseCompletedEvent) and events[-1].response.model == "mid"
    row = row_for(gw.ledger_path, stream.response.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 200 and [c["model"] for c in json.loads(row["fallback_chain"])] == ["broken", "broken"]
    cut = sdk(gw).responses.create(model="cut", input="Hi", stream=True)
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        list(cut)
    row = row_for(gw.ledger_path, cut.response.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 502


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_the_sdks_stream_helper_accumulates_our_events(make_gateway: GatewayFactory, provider: str) -> None:
    """``client.responses.stream`` rebuilds the response from the events: every item must be opened,
    filled and closed in order for its final response to match."""
    gw = make_gateway(provider=provider)
    with sdk(gw).responses.stream(model="mid", input="Hello there") as stream:
        deltas = "".join(e.delta for e in stream if isinstance(e, ResponseTextDeltaEvent))
        final = stream.get_final_response()
    assert final.output_text == deltas and deltas.endswith("from mid.") and final.usage is not None
    with sdk(gw).responses.stream(model="weak", input="Weather?", tools=[TOOL]) as stream:  # type: ignore[list-item]
        calls = stream.get_final_response().output
    assert [(c.type, getattr(c, "name", None)) for c in calls] == [("function_call", "get_weather")]
