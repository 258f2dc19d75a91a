"""Observability that plugs in: OpenTelemetry spans (the SDK's in-memory exporter, and OTLP over HTTP to a
receiver on loopback, configured by the OTEL_* variables), the JSON access-log line, LiteLLM-shaped health
endpoints, and the bounded key / team labels and feedback histogram of /metrics, all through the real app."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request, Response
from gwhelpers import base_config, row_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from thalamus.errors import ConfigError
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.gateway.stats.metrics import OTHER, GatewayMetrics, busiest_keys
from thalamus.gateway.stats.tracing import exporter_name, provider_from_env, tracer_for
from thalamus.ledger import Ledger
from thalamus.ledger.row import LedgerRow

ADMIN = "sk-admin-obs"


def chat(model: str, text: str = "What is 2 plus 2?") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


@pytest.fixture(scope="module")
def traced(replay: ThreadedServer, artifact: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ThreadedServer, InMemorySpanExporter, Path]]:
    """A gateway whose spans go to an in-memory exporter; 'broken' falls back to 'weak'."""
    ledger = tmp_path_factory.mktemp("obs") / "ledger.sqlite"
    raw = base_config(replay.url, artifact, ledger, fallback={"backoff_s": 0.01, "models": ["weak"]},
                      auth={"enabled": True, "keys": [{"id": "static", "key": "sk-static"},
                                                      {"id": "static-ads", "key": "sk-ads", "team": "ads"}],
                            "admin_key": ADMIN})
    for entry in raw["backends"]:  # the replay's fault counters are per model string and session-wide
        if entry["name"] == "flaky":
            entry["model"] = "openai/mid-observability::503x1"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ThreadedServer(create_app(config_from_dict(raw), tracer_provider=provider)) as server:
        yield server, exporter, ledger


def post(server: ThreadedServer, body: dict[str, Any], key: str = "sk-static") -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}"})


def tree(exporter: InMemorySpanExporter, request_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The request span with this request id and its children, in start order."""
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "thalamus.request" and s.attributes
                and s.attributes.get("thalamus.request_id") == request_id)
    assert root.context is not None
    kids = [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]
    return root, sorted(kids, key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_routed_request_span_carries_the_decision(traced: tuple[ThreadedServer, InMemorySpanExporter, Path]
                                                  ) -> None:
    server, exporter, _ = traced
    r = post(server, chat("auto"))
    assert r.status_code == 200
    root, kids = tree(exporter, r.headers["x-thalamus-request-id"])
    a = attrs(root)
    assert a["gen_ai.request.model"] == "auto" and a["gen_ai.response.model"] == r.headers["x-thalamus-model"]
    assert a["thalamus.router"] == "best" and a["http.response.status_code"] == 200 and a["thalamus.key"] == "static"
    assert a["thalamus.fallback"] is False and a["thalamus.cost_usd"] > 0
    assert [k.name for k in kids] == ["thalamus.route", "thalamus.attempt"]
    route, attempt = attrs(kids[0]), attrs(kids[1])
    assert route["thalamus.chosen_model"] == r.headers["x-thalamus-model"] and route["thalamus.candidates"] == 3
    assert route["thalamus.predicted_quality"] == pytest.approx(float(r.headers["x-thalamus-predicted-quality"]),
                                                                 rel=1e-5)
    assert json.loads(str(route["thalamus.knob"]))["kind"] == "lambda"
    assert attempt == {"thalamus.model": r.headers["x-thalamus-model"], "thalamus.attempt.number": 1,
                       "thalamus.fallback": False}
    assert root.context is not None
    assert all(k.context is not None and k.context.trace_id == root.context.trace_id for k in kids)


def test_a_stream_span_ends_with_the_stream(traced: tuple[ThreadedServer, InMemorySpanExporter, Path]) -> None:
    server, exporter, _ = traced
    body = chat("auto") | {"stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": "Bearer sk-static"}) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert text.rstrip().endswith("[DONE]")
    root, kids = tree(exporter, r.headers["x-thalamus-request-id"])
    a = attrs(root)
    assert a["thalamus.stream"] is True and a["http.response.status_code"] == 200 and a["thalamus.cost_usd"] > 0
    assert [k.name for k in kids] == ["thalamus.route", "thalamus.attempt"]
    assert root.end_time is not None and all(k.end_time is not None and k.end_time <= root.end_time for k in kids)


def test_retries_and_fallbacks_are_child_spans(traced: tuple[ThreadedServer, InMemorySpanExporter, Path]) -> None:
    server, exporter, _ = traced
    flaky = post(server, chat("flaky"))  # one 503, then the retry answers
    assert flaky.status_code == 200
    _, kids = tree(exporter, flaky.headers["x-thalamus-request-id"])
    assert [(k.name, attrs(k)["thalamus.attempt.number"], k.status.status_code) for k in kids] == [
        ("thalamus.attempt", 1, StatusCode.ERROR), ("thalamus.attempt", 2, StatusCode.UNSET)]
    assert attrs(kids[0])["http.response.status_code"] == 503
    broken = post(server, chat("broken"))  # 503 twice, then the configured fallback answers
    assert broken.status_code == 200 and broken.headers["x-thalamus-model"] == "weak"
    root, kids = tree(exporter, broken.headers["x-thalamus-request-id"])
    assert [(k.name, attrs(k)["thalamus.model"]) for k in kids] == [
        ("thalamus.attempt", "broken"), ("thalamus.attempt", "broken"), ("thalamus.fallback", "weak")]
    assert attrs(kids[2])["thalamus.fallback"] is True and kids[2].status.status_code == StatusCode.UNSET
    assert attrs(root)["thalamus.fallback"] is True and attrs(root)["thalamus.upstream_failures"] == 2


def test_a_client_error_is_one_failed_attempt_and_no_fallback(
        traced: tuple[ThreadedServer, InMemorySpanExporter, Path]) -> None:
    server, exporter, ledger = traced
    r = post(server, chat("rejecting"))
    assert r.status_code == 400
    rid = r.headers["x-thalamus-request-id"]
    root, kids = tree(exporter, rid)
    assert [k.name for k in kids] == ["thalamus.attempt"] and attrs(kids[0])["http.response.status_code"] == 400
    assert attrs(root)["http.response.status_code"] == 400 and attrs(root)["thalamus.fallback"] is False
    assert root.status.status_code == StatusCode.UNSET  # a client's mistake is not the gateway's error
    row = row_for(ledger, rid)  # waits for the batched writer
    assert row["fallback_chain"] == "[]" and row["status"] == 400  # no fallback happened: none is counted


def test_access_log_has_one_json_line_per_request(traced: tuple[ThreadedServer, InMemorySpanExporter, Path],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server, _, _ = traced
    made = httpx.post(server.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"},
                      json={"id": "obs-search", "team": "search"}, timeout=10).json()
    with caplog.at_level(logging.INFO, logger="thalamus.access"):
        ok = post(server, chat("auto"), key=made["key"])
        fell = post(server, chat("broken"))
        refused = post(server, chat("no-such-model"))
        static = post(server, chat("weak"), key="sk-ads")  # a static key's team, from the config
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "thalamus.access"]
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == 4 and set(by_id) == {x.headers["x-thalamus-request-id"] for x in (ok, fell, refused, static)}
    first = by_id[ok.headers["x-thalamus-request-id"]]
    assert (first["key"], first["team"], first["requested_model"], first["status"], first["fallback"]) == (
        "obs-search", "search", "auto", 200, False)
    assert first["chosen_model"] == ok.headers["x-thalamus-model"] and first["cost_usd"] > 0
    assert first["latency_ms"] > 0 and first["router"] == "best"
    second = by_id[fell.headers["x-thalamus-request-id"]]
    assert (second["chosen_model"], second["fallback"], second["attempts"], second["team"]) == (
        "weak", True, ["broken:503", "broken:503"], None)
    third = by_id[refused.headers["x-thalamus-request-id"]]
    assert (third["status"], third["error"], third["chosen_model"]) == (404, "model_not_found", None)
    assert (by_id[static.headers["x-thalamus-request-id"]]["key"],
            by_id[static.headers["x-thalamus-request-id"]]["team"]) == ("static-ads", "ads")


def test_health_endpoints_in_litellms_shape(traced: tuple[ThreadedServer, InMemorySpanExporter, Path]) -> None:
    server, _, _ = traced
    assert httpx.get(server.url + "/health/liveness").json() == "I'm alive!"
    assert httpx.get(server.url + "/health/liveliness").json() == "I'm alive!"
    anonymous = httpx.get(server.url + "/health/readiness")
    assert anonymous.status_code == 200 and anonymous.json()["status"] == "healthy"
    assert anonymous.json()["db"] == "connected" and "routers" not in anonymous.json()
    insider = httpx.get(server.url + "/health/readiness", headers={"authorization": "Bearer sk-static"}).json()
    assert insider["routers"] == ["best"]
    assert httpx.get(server.url + "/health").status_code == 401  # it calls upstreams: a key is needed
    key = {"authorization": "Bearer sk-static"}
    good = httpx.get(server.url + "/health", params={"model": "weak"}, headers=key, timeout=30).json()
    assert good["healthy_count"] == 1 and good["healthy_endpoints"][0]["model"] == "weak"
    bad = httpx.get(server.url + "/health", params={"model": "broken"}, headers=key, timeout=30).json()
    assert bad["unhealthy_count"] == 1 and bad["unhealthy_endpoints"][0]["error_status"] == 503
    everything = httpx.get(server.url + "/health", params={"timeout": 1}, headers=key, timeout=30).json()
    names = {e["model"] for e in everything["healthy_endpoints"]} | {
        e["model"] for e in everything["unhealthy_endpoints"]}
    assert {"strong", "mid", "weak", "broken", "hanging"} <= names
    assert {"broken", "hanging"} <= {e["model"] for e in everything["unhealthy_endpoints"]}
    assert httpx.get(server.url + "/health", params={"model": "nope"}, headers=key).status_code == 404
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}  # the old probes stay


def test_metrics_key_team_labels_and_feedback_histogram(
        traced: tuple[ThreadedServer, InMemorySpanExporter, Path]) -> None:
    server, _, _ = traced
    made = httpx.post(server.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"},
                      json={"id": "obs-metrics", "team": "ads"}, timeout=10).json()
    r = post(server, chat("weak"), key=made["key"])
    fb = httpx.post(server.url + "/v1/feedback", json={"request_id": r.headers["x-thalamus-request-id"],
                                                       "score": 0.75},
                    headers={"authorization": f"Bearer {made['key']}"})
    assert fb.status_code == 200
    text = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text  # admin only
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {(s.labels["key"], s.labels["team"], s.labels["status_class"]): s.value
                for s in families["thalamus_key_requests"].samples if s.name.endswith("_total")}
    assert requests[("obs-metrics", "ads", "2xx")] == 1
    scores = {(s.labels["model"], s.labels["source"], s.labels.get("le")): s.value
              for s in families["thalamus_feedback_score"].samples}
    assert scores[("weak", "client", "0.7")] == 0 and scores[("weak", "client", "0.8")] == 1
    counts = {(s.labels["model"], s.labels["source"]): s.value
              for s in families["thalamus_feedback_score"].samples if s.name.endswith("_count")}
    assert counts[("weak", "client")] == 1


def test_the_label_seed_is_the_busiest_keys_and_a_database_failure_starts_without_one(tmp_path: Path) -> None:
    """A restarted gateway seeds its key labels with the busiest keys of the ledger; a ledger it cannot read
    gives no seed instead of a failed start."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    now = time.time()
    rows = [LedgerRow(id=f"r{i}", created_at=now - 60, api_key_id=key, status=200)
            for i, key in enumerate(["quiet", "busy", "busy", "busy", "mid", "mid", None])]
    ledger.insert_rows(rows)
    assert busiest_keys(ledger, limit=2) == ["busy", "mid"]
    unreadable = SimpleNamespace(engine=sa.create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'l.sqlite'}"))
    assert busiest_keys(unreadable) == []
    ledger.close()


def test_key_labels_are_bounded() -> None:
    metrics = GatewayMetrics(max_keys=3, seed_keys=["busy"])
    for i, key in enumerate(["busy", "a", "b", "c", "d", "busy", "a"]):
        metrics.observe(LedgerRow(id=f"r{i}", created_at=0.0, api_key_id=key, status=200, cost_usd=0.5,
                                  prompt_tokens=10, completion_tokens=5), team=f"team{i % 5}")
    families = {f.name: f for f in text_string_to_metric_families(metrics.scrape().decode())}
    samples = [s for s in families["thalamus_key_requests"].samples if s.name.endswith("_total")]
    by_key: dict[str, float] = {}
    for s in samples:
        by_key[s.labels["key"]] = by_key.get(s.labels["key"], 0) + s.value
    assert by_key == {"busy": 2, "a": 2, "b": 1, OTHER: 2}  # the seed kept its place; c and d share 'other'
    assert {s.labels["team"] for s in samples} == {"team0", "team1", "team2", OTHER}
    cost = sum(s.value for s in families["thalamus_key_cost_usd"].samples if s.name.endswith("_total"))
    assert cost == pytest.approx(3.5)


def test_otel_variables_choose_the_exporter() -> None:
    assert exporter_name({}) is None
    assert exporter_name({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == "otlp"
    assert exporter_name({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert exporter_name({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) is None
    assert exporter_name({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert provider_from_env({}) is None
    assert tracer_for(None) is None  # no exporter and no global provider: requests build no spans at all
    assert tracer_for(TracerProvider()) is not None
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        exporter_name({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="4318"):
        provider_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_otlp_export_to_a_collector_on_loopback(replay: ThreadedServer, artifact: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT alone turns OTLP/HTTP export on; the spans reach the receiver when the
    app shuts down (its provider is flushed by the lifespan)."""
    received: list[ExportTraceServiceRequest] = []
    collector = FastAPI()

    async def traces(request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        received.append(message)
        return Response(b"", media_type="application/x-protobuf")

    collector.add_api_route("/v1/traces", traces, methods=["POST"])
    with ThreadedServer(collector) as sink:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "thalamus-test")
        config = config_from_dict(base_config(replay.url, artifact, tmp_path / "ledger.sqlite"))
        with ThreadedServer(create_app(config)) as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", json=chat("auto"), timeout=30)
            assert r.status_code == 200
        names, ids, services = [], [], []
        for message in received:
            for rs in message.resource_spans:
                services += [a.value.string_value for a in rs.resource.attributes if a.key == "service.name"]
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        names.append(span.name)
                        ids += [a.value.string_value for a in span.attributes if a.key == "thalamus.request_id"]
    assert sorted(names) == ["thalamus.attempt", "thalamus.request", "thalamus.route"]
    assert ids == [r.headers["x-thalamus-request-id"]] and set(services) == {"thalamus-test"}
