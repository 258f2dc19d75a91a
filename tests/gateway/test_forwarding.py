"""Fields pass through untouched, tools survive a round trip (JSON and streamed), usage -> cost."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from gwhelpers import row_for

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.threaded import ThreadedServer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}


@pytest.fixture(scope="module")
def client(gateway: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_other_fields_reach_the_upstream_untouched(client: openai.OpenAI, replay: ThreadedServer) -> None:
    fields = {"seed": 7, "stop": ["\n\n"], "response_format": {"type": "json_object"}, "temperature": 0.3,
              "max_tokens": 55, "logit_bias": {"50256": -100}, "user": "u-1"}
    out = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Fields test."}],
                                         n=2, extra_body={"vendor_extension": {"a": [1, 2]},
                                                          "routing": {"lambda": 1.0}}, **fields)
    seen = replay.server.config.app.state.replay.requests[-1]
    for key, value in fields.items():
        assert seen[key] == value, key
    assert seen["n"] == 2 and seen["vendor_extension"] == {"a": [1, 2]}
    assert "routing" not in seen  # the gateway's own extension is consumed, not forwarded
    assert seen["model"] == "weak" and len(out.choices) == 2


def _tool_round_trip(client: openai.OpenAI, stream: bool) -> tuple[dict[str, object], str]:
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    kwargs = {"model": "strong", "tools": [WEATHER], "tool_choice": "auto"}
    if stream:
        calls: dict[int, dict[str, str]] = {}
        for chunk in client.chat.completions.create(messages=messages, stream=True, **kwargs):  # type: ignore
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] += tc.id or ""
                    slot["name"] += (tc.function.name or "") if tc.function else ""
                    slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
        call = calls[0]
    else:
        msg = client.chat.completions.create(messages=messages, **kwargs).choices[0].message  # type: ignore
        assert msg.tool_calls
        tc = msg.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}  # type: ignore
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]})
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"})
    final = client.chat.completions.create(messages=messages, **kwargs)  # type: ignore
    return call, final.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(client: openai.OpenAI, replay: ThreadedServer, stream: bool) -> None:
    call, answer = _tool_round_trip(client, stream)
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "replay", "days": 1}
    assert answer == "Tool result received: sunny, 21C"
    seen = replay.server.config.app.state.replay.requests[-1]
    assert seen["tools"] == [WEATHER] and seen["messages"][-1]["role"] == "tool"


def test_json_usage_and_cost_in_ledger(client: openai.OpenAI, gateway: ThreadedServer,
                                       dataset: RoutingDataset) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="strong", messages=[{"role": "user", "content": dataset.texts[1]}])
    usage = raw.parse().usage
    assert usage is not None
    row = row_for(gateway.ledger_path, raw.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["cost_usd"] == pytest.approx((usage.prompt_tokens * 10 + usage.completion_tokens * 30) / 1e6)
    assert not row["cost_estimated"] and row["ttft_ms"] > 0 and row["total_ms"] >= row["ttft_ms"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_usage_and_cost(gateway: ThreadedServer, dataset: RoutingDataset, include_usage: bool) -> None:
    async def run() -> tuple[str, list[str], object, str]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused") as aclient:
            raw = await aclient.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": dataset.texts[2]}], stream=True,
                stream_options={"include_usage": True} if include_usage else None,
                extra_body={"routing": {"lambda": 1.0}})
            parts, usage, models = [], None, set()
            async for chunk in raw.parse():  # type: ignore[attr-defined]
                models.add(chunk.model)
                usage = chunk.usage or usage
                parts.extend(c.delta.content or "" for c in chunk.choices)
            return raw.headers["x-thalamus-request-id"], parts, usage, models.pop()

    request_id, parts, usage, model = asyncio.run(run())
    assert model == "weak" and "".join(parts) == "weak says the answer to question 2 is 4."
    assert (usage is not None) == include_usage
    row = row_for(gateway.ledger_path, request_id)  # type: ignore[attr-defined]
    assert row["status"] == 200 and row["stream"] and row["cost_estimated"] == (not include_usage)
    assert row["completion_tokens"] > 0 and row["cost_usd"] == pytest.approx(
        (row["prompt_tokens"] * 0.1 + row["completion_tokens"] * 0.2) / 1e6)
    if usage is not None:
        assert row["completion_tokens"] == usage.completion_tokens  # type: ignore[attr-defined]
