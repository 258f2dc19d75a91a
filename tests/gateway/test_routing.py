"""Routing through the real gateway with the real openai SDK: knobs, model names, passthrough."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from gwhelpers import row_for

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.threaded import ThreadedServer


@pytest.fixture(scope="module")
def client(gateway: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, model: str, text: str, **kwargs: object) -> tuple[str, httpx.Headers, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs)  # type: ignore[call-overload]
    parsed = raw.parse()
    return parsed.model, raw.headers, parsed.choices[0].message.content or ""


def test_knob_moves_the_choice(client: openai.OpenAI, dataset: RoutingDataset) -> None:
    text = dataset.texts[3]
    quality_model, headers, answer = ask(client, "auto", text, extra_body={"routing": {"lambda": 0.0}})
    assert quality_model == "strong" and headers["x-thalamus-model"] == "strong"
    assert answer == "strong says the answer to question 3 is 6."  # recorded response, replayed
    assert float(headers["x-thalamus-predicted-quality"]) == pytest.approx(dataset.quality[:, 0].mean())
    assert float(headers["x-thalamus-expected-cost"]) == pytest.approx(0.01)
    cheap_model, _, answer = ask(client, "auto", text, extra_body={"routing": {"lambda": 1.0}})
    assert cheap_model == "weak" and answer.startswith("weak says")
    # willingness to pay: $0.0001 per unit of quality cannot afford "strong"
    assert ask(client, "router:best", text, extra_body={"routing": {"willingness_to_pay": 1e-4}})[0] != "strong"
    assert ask(client, "router:best", text, extra_body={"routing": {"willingness_to_pay": 100.0}})[0] == "strong"
    assert ask(client, "auto", text, extra_body={"routing": {"max_cost": 0.002}})[0] == "mid"
    assert ask(client, "auto", text, extra_body={"routing": {"excluded": ["strong"]}})[0] == "mid"
    assert ask(client, "auto", text, extra_body={"routing": {"allowed": ["weak", "mid"], "lambda": 0.0}})[0] == "mid"


def test_routellm_names_use_the_threshold(client: openai.OpenAI, dataset: RoutingDataset) -> None:
    margin = dataset.quality[:, 0].mean() - dataset.quality[:, 2].mean()
    assert ask(client, f"router-best-{margin - 0.05:.3f}", dataset.texts[0])[0] == "strong"
    assert ask(client, f"router-best-{margin + 0.05:.3f}", dataset.texts[0])[0] == "weak"


def test_passthrough_skips_routing(client: openai.OpenAI, gateway: ThreadedServer) -> None:
    model, headers, _ = ask(client, "mid", "Say something.", extra_body={"routing": {"lambda": 1.0}})
    assert model == "mid" and headers["x-thalamus-router"] == "none"
    assert "x-thalamus-predicted-quality" not in headers
    row = row_for(gateway.ledger_path, headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["router"] is None and row["chosen_model"] == "mid" and row["status"] == 200
    assert row["routing_ms"] is None


def test_routing_row_records_the_decision(client: openai.OpenAI, gateway: ThreadedServer,
                                          dataset: RoutingDataset) -> None:
    _, headers, _ = ask(client, "auto", dataset.texts[5], extra_body={"routing": {"lambda": 0.25}})
    row = row_for(gateway.ledger_path, headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["router"] == "best" and row["requested_model"] == "auto" and len(row["artifact_version"]) == 12
    assert json.loads(row["knob"])["value"] == 0.25
    candidates = json.loads(row["candidates"])
    assert set(candidates) == {"strong", "mid", "weak"}
    assert candidates["weak"]["cost"] == pytest.approx(1e-4)
    assert row["probability"] == 1.0 and row["routing_ms"] > 0
    assert row["prompt_text"] == dataset.texts[5] and len(row["prompt_hash"]) == 64  # HMAC-SHA256 hex


def test_routing_text_uses_system_and_last_user_turn_with_parts(client: openai.OpenAI,
                                                                 dataset: RoutingDataset) -> None:
    # the replay server keys on the same routing text, so a recorded answer proves the policy
    raw = client.chat.completions.create(model="strong", messages=[
        {"role": "user", "content": "an earlier turn"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": dataset.texts[7]}]},
    ])
    assert raw.choices[0].message.content == "strong says the answer to question 7 is 14."


def test_models_lists_backends_routers_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"strong", "mid", "weak", "router:best", "auto"} <= ids


def test_async_client(gateway: ThreadedServer, dataset: RoutingDataset) -> None:
    import asyncio

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused") as aclient:
            results = await asyncio.gather(*[aclient.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": t}]) for t in dataset.texts[:8]])
        return [r.model for r in results]

    assert asyncio.run(run()) == ["strong"] * 8


def test_knn_on_routerbench_matches_offline_decisions(data_dir: object, tmp_path: object, replay: ThreadedServer
                                                      ) -> None:
    """A kNN router fitted on real RouterBench rows routes the same through the gateway as offline,
    and spending more (a higher willingness to pay) never picks a cheaper model."""
    from pathlib import Path

    from thalamus.datasets.registry import load_dataset
    from thalamus.gateway.app import create_app
    from thalamus.gateway.config import config_from_dict
    from thalamus.router.policy import Knob
    from thalamus.router.registry import make_router

    knn_module = pytest.importorskip("thalamus.router.knn")
    del knn_module
    train, test = load_dataset("routerbench_subset").train_test()
    router = make_router("knn", embedder="hashing", k=20).fit(train.subset(range(400)))
    artifact = router.save(Path(str(tmp_path)) / "knn")
    config = config_from_dict({
        "backends": [{"name": m, "model": f"openai/{m}", "api_base": replay.url + "/v1", "input_per_m": 1.0,
                      "output_per_m": 1.0} for m in train.models],
        "routers": {"knn": {"artifact": str(artifact), "knob": {"kind": "wtp", "value": 0.01}}},
        "ledger": {"url": f"sqlite:///{Path(str(tmp_path)) / 'l.sqlite'}"}})
    with ThreadedServer(create_app(config)) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        for text in test.texts[:6]:
            costs = []
            for wtp in (0.0, 0.001, 0.01, 1.0):
                chosen, headers, _ = ask(client, "router:knn", text, extra_body={"routing": {"wtp": wtp}})
                assert chosen == router.route(text, Knob("wtp", wtp)).model
                costs.append(float(headers["x-thalamus-expected-cost"]))
            assert costs == sorted(costs)
