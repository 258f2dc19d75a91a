"""Retries, fallbacks and error shapes against a replay upstream that really fails (no mocks)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.routing import APIRoute
from gwhelpers import GatewayFactory, backend, base_config, ledger_rows, row_for

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer


def post(gateway: ThreadedServer, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(gateway.url + "/v1/chat/completions", content=content, timeout=10,
                      headers={"content-type": "application/json", **kwargs.pop("headers", {})}, **kwargs)


def chat(model: str, text: str = "Hello there.", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def chain(gateway: ThreadedServer, response: httpx.Response) -> list[tuple[str, int]]:
    row = row_for(gateway.ledger_path, response.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    return [(c["model"], c["status"]) for c in json.loads(row["fallback_chain"])]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


def test_retry_then_success_on_the_same_backend(gateway: ThreadedServer) -> None:
    r = post(gateway, chat("flaky"))  # the replay fails its first call with 503
    assert r.status_code == 200 and r.headers["x-thalamus-model"] == "flaky"
    row = row_for(gateway.ledger_path, r.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert json.loads(row["fallback_chain"]) == [
        {"model": "flaky", "attempt": 1, "status": 503, "error": "ServiceUnavailableError"}]


@pytest.mark.parametrize(("fault", "status"), [("503", 503), ("hang", 504), ("drop", 500), ("429", 429)])
def test_router_falls_back_in_score_order(make_gateway: GatewayFactory, dataset: RoutingDataset,
                                          fault: str, status: int) -> None:
    gw = make_gateway(faults={"strong": fault})
    for stream in (False, True):
        r = post(gw, chat("auto", dataset.texts[0], stream=stream))
        assert r.status_code == 200 and r.headers["x-thalamus-model"] == "mid"  # next best by score
        if not stream:
            assert r.json()["choices"][0]["message"]["content"] == "mid says the answer to question 0 is 0."
        else:
            assert r.text.endswith("data: [DONE]\n\n") and '"model":"mid"' in r.text
        tried = chain(gw, r)
        assert tried[0] == ("strong", status) and all(m == "strong" for m, _ in tried)


def test_stream_falls_back_before_the_first_byte(make_gateway: GatewayFactory, dataset: RoutingDataset) -> None:
    gw = make_gateway(faults={"strong": "drop"})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="auto", stream=True,
                                                 messages=[{"role": "user", "content": dataset.texts[4]}]))
    assert {c.model for c in chunks} == {"mid"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "mid says the answer to question 4 is 8."


def test_all_backends_failing_is_a_502_listing_them(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(faults={"strong": "503", "mid": "503", "weak": "500"})
    r = post(gw, chat("auto"))
    error = assert_openai_error(r, 502)
    assert error["code"] == "all_backends_failed"
    for model in ("strong", "mid", "weak"):
        assert model in error["message"]
    rows = ledger_rows(gw.ledger_path, 1)  # type: ignore[attr-defined]
    assert rows.iloc[0]["status"] == 502 and len(json.loads(rows.iloc[0]["fallback_chain"])) == 6


def test_context_length_goes_to_the_larger_model(gateway: ThreadedServer) -> None:
    r = post(gateway, chat("short-context"))
    assert r.status_code == 200 and r.headers["x-thalamus-model"] == "strong"
    assert chain(gateway, r) == [("short-context", 400)]


def test_context_length_without_a_larger_model_is_a_400(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(fallback={"backoff_s": 0.01})
    error = assert_openai_error(post(gw, chat("short-context")), 400, "messages")
    assert error["code"] == "context_length_exceeded" and "maximum context length" in error["message"]


def test_client_errors_from_upstream_are_returned(gateway: ThreadedServer) -> None:
    error = assert_openai_error(post(gateway, chat("rejecting")), 400)
    assert "replay fault 400" in error["message"]


def test_request_errors_are_openai_shaped_and_logged(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth={"enabled": True, "keys": [{"id": "team-a", "key": "sk-good"}]})
    good = {"authorization": "Bearer sk-good"}
    assert_openai_error(post(gw, b"{not json", headers=good), 400)
    assert_openai_error(post(gw, {"model": "auto"}, headers=good), 400, "messages")
    assert_openai_error(post(gw, {"messages": []}, headers=good), 400, "model")
    assert_openai_error(post(gw, chat("auto", routing={"lambda": 3}), headers=good), 400, "routing.lambda")
    assert_openai_error(post(gw, chat("auto", routing={"allowed": ["gpt-9"]}), headers=good), 400, "routing")
    assert_openai_error(post(gw, chat("no-such-model"), headers=good), 404, "model")
    assert_openai_error(post(gw, chat("auto", text="x" * 300_000), headers=good), 413)
    for headers in ({}, {"authorization": "Bearer sk-bad"}):  # no valid key: 401 and no ledger row
        unauthorized = post(gw, chat("auto"), headers=headers)
        assert_openai_error(unauthorized, 401)
        assert "x-thalamus-request-id" not in unauthorized.headers
    ok = post(gw, chat("auto"), headers=good)
    assert ok.status_code == 200
    rows = ledger_rows(gw.ledger_path, 8)  # type: ignore[attr-defined]
    assert sorted(rows["status"].tolist()) == [200, 400, 400, 400, 400, 400, 404, 413]
    assert rows.loc[rows["status"] == 200, "api_key_id"].iloc[0] == "team-a"
    assert httpx.get(gw.url + "/readyz").json()["status"] == "ready"


def test_fastapi_has_nothing_to_validate(replay: ThreadedServer, artifact: Path, tmp_path: Path) -> None:
    """Handlers (and their Depends) take only the Request and parse the body themselves (parse_json_body), so
    FastAPI never raises RequestValidationError and the gateway installs no handler for it. A route declaring a typed
    parameter would bring back FastAPI's 422, which is not OpenAI-shaped: this test guards that."""
    app = create_app(config_from_dict(base_config(replay.url, artifact, tmp_path / "ledger.sqlite")))
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    openai_paths = {"/chat/completions", "/models", "/models/{model_id:path}", "/feedback", "/responses",
                    "/embeddings", "/completions"}  # each also without the /v1 prefix
    assert {r.path for r in routes} == {"/v1" + p for p in openai_paths} | openai_paths | {
        "/healthz", "/readyz", "/health", "/health/readiness", "/health/liveness", "/health/liveliness",
        "/metrics", "/admin/keys", "/admin/keys/{key_id:path}", "/api/spend",
        "/admin/keys/{key_id}/rotate", "/admin/teams",
        "/api/requests", "/api/requests/{request_id}", "/api/stats/calibration", "/api/stats/filters",
        "/api/stats/keys", "/api/stats/models", "/api/stats/overview", "/api/stats/timeseries", "/dashboard",
        "/api/stats/routers", "/api/stats/rollout", "/api/stats/breakdown", "/api/stats/affinity", "/api/judge",
        "/api/stats/teams",
        "/dashboard/static/plotly.min.js", "/dashboard/static/{name}", "/api/controller", "/admin/routers",
        "/admin/routers/{name}/reload", "/admin/routers/{name}/candidate", "/admin/routers/{name}/promote"}
    for route in routes:  # handlers and their dependencies (the service, the caller's key) read the Request only
        pending = [route.dependant]
        while pending:
            d = pending.pop()
            assert not (d.path_params or d.query_params or d.header_params or d.cookie_params or d.body_params), \
                route.path
            pending.extend(d.dependencies)


def test_feedback_joins_and_unknown_ids_are_404(gateway: ThreadedServer, dataset: RoutingDataset) -> None:
    r = post(gateway, chat("auto", dataset.texts[9]))
    request_id = r.headers["x-thalamus-request-id"]
    for fb in ({"request_id": request_id, "score": 0.25, "source": "judge"},
               {"request_id": request_id, "label": "good", "source": "user", "comment": "nice"}):
        assert httpx.post(gateway.url + "/v1/feedback", json=fb).status_code == 200
    missing = httpx.post(gateway.url + "/v1/feedback", json={"request_id": "thl-nope", "score": 1})
    assert_openai_error(missing, 404, "request_id")
    assert_openai_error(httpx.post(gateway.url + "/v1/feedback", json={"request_id": request_id, "score": 2}),
                        400, "score")
    from thalamus.ledger import Ledger

    ledger = Ledger(f"sqlite:///{gateway.ledger_path}")  # type: ignore[attr-defined]
    joined = ledger.rows_with_feedback().set_index("id")
    assert joined.loc[request_id, "score"] == pytest.approx(0.625) and joined.loc[request_id, "n_feedback"] == 2
    exported = ledger.export()
    row = exported.texts.index(dataset.texts[9])
    assert exported.quality[row, exported.models.index("strong")] == pytest.approx(0.625)
    ledger.close()


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_retry_after_is_waited_for_up_to_its_cap(replay: ThreadedServer, artifact: Path, tmp_path: Path,
                                                 provider: str) -> None:
    """A 429 with Retry-After: 1 is retried on the same backend after that second; with a cap below it the
    gateway does not wait and moves on to the fallback model at once."""
    for cap, expected_model in ((5.0, "limited"), (0.2, "mid")):
        config = base_config(replay.url, artifact, tmp_path / f"ra-{cap}.sqlite", provider=provider)
        config["backends"].append(backend("limited", f"mid-{cap}-{provider}::429sx1", replay.url + "/v1",
                                          provider=provider, max_retries=1))
        config["fallback"] = {"backoff_s": 0.01, "models": ["mid"], "retry_after_cap_s": cap}
        with ThreadedServer(create_app(config_from_dict(config))) as gw:
            started = time.monotonic()
            r = post(gw, chat("limited"))
            elapsed = time.monotonic() - started
        assert r.status_code == 200 and r.headers["x-thalamus-model"] == expected_model
        assert (elapsed >= 1.0) if cap > 1 else (elapsed < 0.9), elapsed
        row = row_for(tmp_path / f"ra-{cap}.sqlite", r.headers["x-thalamus-request-id"])
        assert [(c["model"], c["status"]) for c in json.loads(row["fallback_chain"])] == [("limited", 429)]
