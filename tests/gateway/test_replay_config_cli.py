"""The replay upstream on its own, config validation (errors name the key), the CLI commands."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from gwhelpers import GatewayFactory, ledger_rows
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError
from thalamus.gateway.config import config_from_dict, load_config
from thalamus.gateway.replay.server import create_replay_app, parse_aliases
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.gateway.wire.protocol import estimate_prompt_tokens, estimate_tokens

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "thalamus.yaml"


def replay_chat(replay: ThreadedServer, model: str, text: str, **headers: str) -> httpx.Response:
    return httpx.post(replay.url + "/v1/chat/completions", headers=headers, timeout=5,
                      json={"model": model, "messages": [{"role": "user", "content": text}]})


def test_replay_answers_recorded_and_synthetic(replay: ThreadedServer, dataset: RoutingDataset) -> None:
    body = replay_chat(replay, "mid", dataset.texts[11]).json()
    answer = "mid says the answer to question 11 is 22."
    assert body["choices"][0]["message"]["content"] == answer and body["model"] == "mid"
    messages = [{"role": "user", "content": dataset.texts[11]}]
    assert body["usage"] == {"prompt_tokens": estimate_prompt_tokens(messages),
                             "completion_tokens": estimate_tokens(answer),
                             "total_tokens": estimate_prompt_tokens(messages) + estimate_tokens(answer)}
    first = replay_chat(replay, "mid", "never recorded").json()["choices"][0]["message"]["content"]
    again = replay_chat(replay, "mid", "never recorded").json()["choices"][0]["message"]["content"]
    assert first == again and first.startswith("Replay answer ") and first.endswith("from mid.")


def test_replay_faults_by_suffix_and_header(replay: ThreadedServer) -> None:
    assert replay_chat(replay, "weak::503x2", "f").status_code == 503
    assert replay_chat(replay, "weak::503x2", "f").status_code == 503
    assert replay_chat(replay, "weak::503x2", "f").status_code == 200  # only the first two fail
    assert replay_chat(replay, "weak", "f", **{"x-replay-fault": "429"}).status_code == 429
    ctx = replay_chat(replay, "weak::ctx", "f")
    assert ctx.status_code == 400 and ctx.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(httpx.HTTPError):
        replay_chat(replay, "weak::drop", "f")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cases = {
        "backends: []": "backends: List should have at least 1 item",
        "backends: [{name: a, model: openai/a, timeout: soon}]": "backends[0].timeout",
        "backends: [{name: a, model: openai/a, colour: red}]": "backends[0].colour",
        "backends: [{name: mystery}]": "backends[0]: backend 'mystery' is not in the catalog",
        "backends: [{name: a, model: m}]\nfallback: {models: [b]}": "fallback.models[0]: unknown backend 'b'",
        "backends: [{name: a, model: m}]\nrouters: {r: {artifact: x, aliases: [a]}}": "routers.r.aliases[0]",
        "backends: [{name: a, model: m}]\nrouters: {r: {artifact: x, strong: a}}": "routers.r: set both",
        "backends: [{name: a, model: m}]\nauth: {enabled: true}": "auth.keys",
        "backends: [{name: a, model: m, provider: openai-compatible}]": "needs 'api_base'",
        "backends: [{name: a, model: m}]\nledger: {flush_ms: 0}": "ledger.flush_ms",
        "backends: [{name: a, model: m}]": "backends[0]: backend 'a' (model 'm') is not in the model catalog",
    }
    for text, expected in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=None) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}: ") and expected in str(info.value), (text, str(info.value))


def test_catalog_fills_backend_defaults() -> None:
    cfg = config_from_dict({"backends": [{"name": "gpt-4-1106-preview"}, {"name": "mistralai/mixtral-8x7b-chat"}]})
    gpt4, mixtral = cfg.backends
    assert (gpt4.model, gpt4.api_key_env, gpt4.input_per_m, gpt4.output_per_m) == (
        "openai/gpt-4-1106-preview", "OPENAI_API_KEY", 10.0, 30.0)
    assert mixtral.model is not None and mixtral.model.startswith("together_ai/") and mixtral.output_per_m == 0.6


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert len(cfg.backends) == 11 and "cluster" in cfg.routers and "auto" in cfg.routers["cluster"].aliases
    assert cfg.routers["cluster"].artifact.name == "cluster"  # trained with --embedder static:dims=384


def test_cli_config_check_logs_and_export(make_gateway: GatewayFactory, tmp_path: Path,
                                          dataset: RoutingDataset) -> None:
    gw = make_gateway()
    for i in range(3):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=10,
                       json={"model": "auto", "messages": [{"role": "user", "content": dataset.texts[i]}]})
        httpx.post(gw.url + "/v1/feedback", json={"request_id": r.headers["x-thalamus-request-id"], "label": "good"})
    gw.stop()
    ledger = f"sqlite:///{gw.ledger_path}"  # type: ignore[attr-defined]
    assert len(ledger_rows(gw.ledger_path, 3)) == 3  # type: ignore[attr-defined]
    runner, app = CliRunner(), build_app()
    logs = runner.invoke(app, ["logs", "--ledger", ledger, "--limit", "2"])
    assert logs.exit_code == 0 and "last 2 requests" in logs.output and "strong" in logs.output
    out = tmp_path / "logged.parquet"
    export = runner.invoke(app, ["logs", "export", "--ledger", ledger, "--out", str(out)])
    assert export.exit_code == 0, export.output
    logged = RoutingDataset.from_parquet(out)
    assert logged.n_prompts == 3 and logged.models == ["strong"] and (logged.quality[:, 0] == 1.0).all()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"backends": [{"name": "a", "model": "m", "timeout": -1}]}))
    check = runner.invoke(app, ["config", "check", str(bad)])
    assert check.exit_code != 0 and "backends[0].timeout" in str(check.exception or check.output)


def test_openai_compatible_provider_relays_and_falls_back(make_gateway: GatewayFactory,
                                                          dataset: RoutingDataset) -> None:
    import openai

    gw = make_gateway(faults={"strong": "503"}, provider="openai-compatible")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": dataset.texts[6]}], seed=1)
    assert raw.headers["x-thalamus-model"] == "mid"
    assert raw.parse().choices[0].message.content == "mid says the answer to question 6 is 12."
    chunks = list(client.chat.completions.create(model="auto", stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": dataset.texts[6]}]))
    assert {c.model for c in chunks} == {"mid"} and chunks[-1].usage is not None and chunks[-1].choices == []
    # context-length error -> the larger model 'strong', which is down: 502 naming both
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=10,
                   json={"model": "short-context", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502 and "short-context (400" in r.json()["error"]["message"]
    assert "strong (503" in r.json()["error"]["message"]
    assert len(ledger_rows(gw.ledger_path, 3)) == 3  # type: ignore[attr-defined]


def test_replay_aliases_answer_as_the_recorded_model(dataset: RoutingDataset) -> None:
    """``replay-server --as NAME=RECORDED``: a team's model name gets the recorded model's answers."""
    app = create_replay_app(dataset, aliases=parse_aliases(["team-model = mid"]))
    with TestClient(app) as client:
        body = client.post("/v1/chat/completions", json={
            "model": "team-model", "messages": [{"role": "user", "content": dataset.texts[11]}]}).json()
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert body["choices"][0]["message"]["content"] == "mid says the answer to question 11 is 22."
    assert body["model"] == "team-model" and listed == [*dataset.models, "team-model"]
    with pytest.raises(ValueError, match="does not record: nope; its models are: "):
        create_replay_app(dataset, aliases={"gpt-4o": "nope"})
    with pytest.raises(ValueError, match="write NAME=RECORDED_MODEL"):
        parse_aliases(["gpt-4o"])
