"""The pipeline in process: the real app through httpx's ASGI transport and the real openai SDK, backends
of the tests' own (fakes.py) behind the Backend protocol, a real SQLite ledger. Part of the fast tier.

What it pins: each endpoint adapter (chat, Responses, embeddings, completions) on the one pipeline; the one
relay's rules (a mid-stream failure is an error item and a 502 row); fallbacks; the one price rule on the
row (cost = tokens x the backend's configured prices, and the row records those prices); the client's body
reaching the upstream without the gateway's ``routing`` extension.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pandas as pd
import pytest
from fakes import FakeBackend
from gwhelpers import MODELS, PRICES, ledger_rows

from thalamus.gateway.app import create_app
from thalamus.gateway.config import GatewayConfig, config_from_dict
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.checks import UpstreamError


def _config(artifact: Path, ledger: Path) -> GatewayConfig:
    backends = [{"name": m, "provider": "openai-compatible", "model": f"openai/{m}", "api_base": "http://fake.invalid/v1",
                 "input_per_m": PRICES[m][0], "output_per_m": PRICES[m][1], "max_retries": 1} for m in MODELS]
    return config_from_dict({
        "backends": backends,
        "routers": {"best": {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                             "baseline": "strong"}},
        "fallback": {"backoff_s": 0.0, "models": ["weak"]},
        "ledger": {"url": f"sqlite:///{ledger}", "flush_ms": 5, "store_prompts": True},
    })


@asynccontextmanager
async def gateway(config: GatewayConfig) -> AsyncIterator[tuple[openai.AsyncOpenAI, dict[str, FakeBackend]]]:
    fakes = {b.name: FakeBackend(b) for b in config.backends}
    backends: dict[str, Backend] = dict(fakes)
    app = create_app(config, backends=backends)
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        async with http:
            yield openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="none", http_client=http,
                                     max_retries=0), fakes


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


def _rows(path: Path, n: int) -> pd.DataFrame:
    return ledger_rows(path, n).set_index("id")


def _cost(model: str, prompt: int, completion: int) -> float:
    return (prompt * PRICES[model][0] + completion * PRICES[model][1]) / 1e6


def test_chat_routed_and_priced_by_the_one_rule(artifact: Path, ledger: Path) -> None:
    async def run() -> tuple[Any, Any, dict[str, FakeBackend]]:
        async with gateway(_config(artifact, ledger)) as (client, fakes):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "What is 2 + 2?"}],
                extra_body={"routing": {"lambda": 0.0}})
            return raw.headers, raw.parse(), fakes

    headers, answer, fakes = asyncio.run(run())
    chosen = headers["x-thalamus-model"]
    assert answer.model == chosen and answer.choices[0].message.content == f"{chosen} answers: What is 2 + 2?"
    assert fakes[chosen].seen and all("routing" not in body for body in fakes[chosen].seen)  # not forwarded
    row = _rows(ledger, 1).loc[headers["x-thalamus-request-id"]]
    assert row["status"] == 200 and row["router"] == "best" and row["chosen_model"] == chosen
    assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 5) and not row["cost_estimated"]
    assert row["cost_usd"] == pytest.approx(_cost(chosen, 12, 5))
    assert (row["price_input_per_m"], row["price_output_per_m"]) == PRICES[chosen]
    # the counterfactual baseline is priced by the same rule at the same tokens
    assert row["baseline_model"] == "strong" and row["baseline_cost_usd"] == pytest.approx(_cost("strong", 12, 5))


def test_stream_relay_records_before_done_and_reports_a_mid_stream_failure(artifact: Path, ledger: Path) -> None:
    async def run() -> tuple[str, list[str], str]:
        async with gateway(_config(artifact, ledger)) as (client, fakes):
            text = ""
            stream = await client.chat.completions.create(model="mid", stream=True,
                                                          messages=[{"role": "user", "content": "one two three"}])
            async for chunk in stream:
                text += "".join(c.delta.content or "" for c in chunk.choices)
            fakes["mid"].fail_after = 2
            http = client._client  # the same transport, to read the raw error item
            resp = await http.post("/v1/chat/completions", json={
                "model": "mid", "stream": True, "messages": [{"role": "user", "content": "one two three"}]})
            items = [line for line in resp.text.split("\n\n") if line]
            return text, items, resp.headers["x-thalamus-request-id"]

    text, items, failed_id = asyncio.run(run())
    assert text == "mid answers: one two three"
    assert items[-1].startswith("data: ") and "failed mid-stream" in items[-1] and "[DONE]" not in items[-1]
    rows = _rows(ledger, 2)
    assert sorted(rows["status"]) == [200, 502]
    assert rows.loc[failed_id, "error_type"] == "upstream_reset"
    ok = rows[rows["status"] == 200].iloc[0]
    assert ok["cost_usd"] == pytest.approx(_cost("mid", 12, 5))


def test_fallback_after_retries_and_client_errors_pass_through(artifact: Path, ledger: Path) -> None:
    async def run() -> tuple[Any, int, str]:
        async with gateway(_config(artifact, ledger)) as (client, fakes):
            fakes["mid"].fail = [UpstreamError("mid", "retry", 503, "overloaded", "overloaded")] * 2
            raw = await client.chat.completions.with_raw_response.create(
                model="mid", messages=[{"role": "user", "content": "hello"}])
            fakes["mid"].fail = [UpstreamError("mid", "client", 400, "bad tool schema", "invalid_tools")]
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model="mid", messages=[{"role": "user", "content": "hi"}])
            return raw.headers, err.value.status_code, str(err.value)

    headers, status, message = asyncio.run(run())
    assert headers["x-thalamus-model"] == "weak"  # mid failed twice (1 retry), the configured fallback answered
    assert status == 400 and "bad tool schema" in message
    rows = _rows(ledger, 2)
    chain = json.loads(rows.loc[headers["x-thalamus-request-id"], "fallback_chain"])
    assert [(c["model"], c["attempt"], c["status"]) for c in chain] == [("mid", 1, 503), ("mid", 2, 503)]
    assert rows.loc[headers["x-thalamus-request-id"], "cost_usd"] == pytest.approx(_cost("weak", 12, 5))


def test_responses_embeddings_and_completions_share_the_pipeline(artifact: Path, ledger: Path) -> None:
    async def run() -> tuple[Any, list[str], Any, Any, list[str]]:
        async with gateway(_config(artifact, ledger)) as (client, _):
            response = await client.responses.create(model="weak", input="Name a prime.", instructions="Be brief.")
            events = [e.type async for e in await client.responses.create(model="weak", input="x", stream=True)]
            embedding = await client.embeddings.create(model="mid", input="vector me")
            completion = await client.completions.create(model="strong", prompt="The answer is")
            streamed = [c.choices[0].text async for c in await client.completions.create(
                model="strong", prompt="The answer is", stream=True)]
            return response, events, embedding, completion, streamed

    response, events, embedding, completion, streamed = asyncio.run(run())
    assert response.model == "weak" and response.output_text == "weak answers: Name a prime."
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert embedding.data[0].embedding == [0.1, 0.2] and completion.choices[0].text == "forty-two"
    assert "".join(streamed) == "forty-two"
    rows = _rows(ledger, 5)
    assert list(rows["status"]) == [200] * 5
    assert sorted(rows["chosen_model"]) == ["mid", "strong", "strong", "weak", "weak"]
    emb = rows[rows["chosen_model"] == "mid"].iloc[0]
    assert emb["cost_usd"] == pytest.approx(_cost("mid", 12, 0))  # embeddings: input tokens only


def test_passthrough_endpoints_do_not_take_a_router(artifact: Path, ledger: Path) -> None:
    async def run() -> openai.NotFoundError:
        async with gateway(_config(artifact, ledger)) as (client, _):
            with pytest.raises(openai.NotFoundError) as err:
                await client.embeddings.create(model="auto", input="x")
            return err.value

    err = asyncio.run(run())
    assert "not a configured backend" in str(err)
    assert _rows(ledger, 1)["status"].tolist() == [404]
