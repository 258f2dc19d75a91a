"""Pool-aware routing through real servers: a real local server holding one of two tiny models at a
time, a real gateway polling it, the openai SDK as client, the ledger read back.

The kNN router (hashing embedder) is trained so that "close" prompts rate tiny-qwen2_moe 0.01 above
tiny-mixtral and "gap" prompts rate it 1.0 above. With a switching cost of ~0.1 utility points (the
rate is set from the server's own measured load times), a close prompt stays on the resident model and
a gap prompt still goes to the better one. Poll failures come from a loopback proxy of our own in front
of the local server, whose ``/v1/models`` can be made to fail while chat requests pass through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI, Request, Response
from openai import OpenAI

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app as create_gateway
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger
from thalamus.router.knn import KNNRouter
from thalamus.serving.app import create_app as create_local_server
from thalamus.serving.config import ServingConfig
from thalamus.serving.models import make_tiny_moe

A, B = "tiny-mixtral", "tiny-qwen2_moe"  # A is resident at the start of each test; B rates higher
GREEDY: dict[str, Any] = {"max_tokens": 2, "temperature": 0, "extra_body": {"ignore_eos": True}}
CLOSE = [f"Translate the word {w} into French, please." for w in
         ("house", "tree", "water", "bread", "friend", "window", "street", "summer", "book", "river")]
GAP = [f"Prove in detail that {i} times {i + 2} plus one is a perfect square." for i in range(10)]


def dataset() -> RoutingDataset:
    quality = np.array([[0.50, 0.51]] * len(CLOSE) + [[0.0, 1.0]] * len(GAP))
    return RoutingDataset(name="pool-synthetic", prompts=pd.DataFrame({"text": CLOSE + GAP}), models=[A, B],
                          quality=quality, cost=np.zeros_like(quality))


def proxy_app(upstream: str, state: dict[str, str]) -> FastAPI:
    """Forwards everything to the local server; ``state["models"]`` = "fail" answers /v1/models with a 503."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request) -> Response:
        if path == "v1/models" and state["models"] == "fail":
            return Response("down for the test", status_code=503)
        async with httpx.AsyncClient(timeout=120) as client:
            answer = await client.request(request.method, f"{upstream}/{path}", content=await request.body(),
                                          headers={"content-type": "application/json"})
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    return app


@dataclass
class Local:
    url: str  # the proxy in front of the local server
    direct: str
    proxy_state: dict[str, str]
    artifact: Path
    root: Path

    def models(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in httpx.get(f"{self.direct}/v1/models", timeout=30).json()["data"]}

    def loads(self) -> int:
        return sum(int(m["loads"]) for m in self.models().values())

    def make_resident(self, model: str) -> None:
        client(self.direct).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                    **GREEDY)
        assert self.models()[model]["loaded"]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    root = tmp_path_factory.mktemp("pool-routing")
    for name in (A, B):
        make_tiny_moe(name.removeprefix("tiny-"), root / name)
    serving = ServingConfig.from_dict({"memory_budget": 20_000_000, "batch_window_ms": 1, "torch_threads": 1,
                                       "models": [{"name": m, "path": str(root / m)} for m in (A, B)]})
    artifact = root / "router-knn"
    KNNRouter(k=5, embedder="hashing").fit(dataset()).save(artifact)
    state = {"models": "ok"}
    with ThreadedServer(create_local_server(serving)) as server, \
            ThreadedServer(proxy_app(server.url, state)) as proxy:
        here = Local(proxy.url, server.url, state, artifact, root)
        for model in (A, B, A):  # measured loads of both; A resident
            here.make_resident(model)
        yield here


def gateway_config(local: Local, pool: dict[str, Any] | None, name: str) -> dict[str, Any]:
    backends = [{"name": m, "model": f"openai/{m}", "api_base": f"{local.url}/v1", "input_per_m": 0.0,
                 "output_per_m": 0.0, "timeout": 120, "max_retries": 0} for m in (A, B)]
    return {"backends": backends, "pool_routing": pool or {"enabled": False},
            "routers": {"local": {"artifact": str(local.artifact), "aliases": ["auto"],
                                  "knob": {"kind": "lambda", "value": 0.0}}},
            "ledger": {"url": f"sqlite:///{local.root / f'{name}.sqlite'}", "flush_ms": 10}}


def pool_settings(local: Local, **extra: Any) -> dict[str, Any]:
    """A rate that makes a switch cost ~0.1 utility points at the server's measured load times."""
    slowest = max(float(m["load_seconds_mean"]) for m in local.models().values())
    return {"enabled": True, "per_second": 0.1 / slowest, "poll_interval_s": 0.1, "poll_timeout_s": 2.0, **extra}


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(url: str, text: str) -> tuple[str, str]:
    raw = client(url).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], **GREEDY)
    return raw.headers["x-thalamus-model"], raw.headers["x-thalamus-request-id"]


def ledger_row(local: Local, name: str, request_id: str) -> dict[str, Any]:
    ledger = Ledger(f"sqlite:///{local.root / f'{name}.sqlite'}")
    try:
        for _ in range(500):
            rows = ledger.recent(limit=100)
            hit = rows[rows["id"] == request_id]
            if len(hit):
                return dict(hit.iloc[0])
            time.sleep(0.02)
    finally:
        ledger.close()
    raise AssertionError(f"no ledger row for {request_id}")


def test_resident_model_wins_close_calls_and_a_quality_gap_beats_the_penalty(local: Local) -> None:
    import json

    local.make_resident(A)
    with ThreadedServer(create_gateway(config_from_dict(gateway_config(local, pool_settings(local), "aware")))) as gw:
        before = local.loads()
        model, rid = ask(gw.url, CLOSE[0])
        assert model == A and local.loads() == before  # no swap: the resident model answered
        cost = json.loads(ledger_row(local, "aware", rid)["switch_cost"])
        assert cost["router_choice"] == B and set(cost["penalties"]) == {B}
        assert 0.02 < cost["penalties"][B]["penalty"] < 1.0 and cost["penalties"][B]["load_s"] > 0

        model, rid = ask(gw.url, GAP[0])
        assert model == B and local.loads() == before + 1  # worth the switch: B loaded, A evicted
        cost = json.loads(ledger_row(local, "aware", rid)["switch_cost"])
        assert cost["router_choice"] is None and set(cost["penalties"]) == {B}

        model, rid = ask(gw.url, CLOSE[1])  # B resident now (the gateway knew before its next poll)
        assert model == B and local.loads() == before + 1
        assert json.loads(ledger_row(local, "aware", rid)["switch_cost"])["penalties"].keys() == {A}


def test_without_pool_routing_the_close_call_swaps(local: Local) -> None:
    local.make_resident(A)
    with ThreadedServer(create_gateway(config_from_dict(gateway_config(local, None, "plain")))) as gw:
        before = local.loads()
        model, rid = ask(gw.url, CLOSE[2])
        assert model == B and local.loads() == before + 1
        assert ledger_row(local, "plain", rid)["switch_cost"] is None


def test_poll_failures_keep_the_last_state_and_routing(local: Local) -> None:
    local.make_resident(A)
    app = create_gateway(config_from_dict(gateway_config(local, pool_settings(local), "faults")))
    with ThreadedServer(app) as gw:
        tracker = app.state.pool
        assert tracker.snapshot()[f"{local.url}/v1"]["loaded"] == [A]
        local.proxy_state["models"] = "fail"
        try:
            deadline = time.monotonic() + 30
            while tracker.snapshot()[f"{local.url}/v1"]["failures"] < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            snap = tracker.snapshot()[f"{local.url}/v1"]
            assert snap["failures"] >= 3 and "503" in snap["last_error"] and snap["loaded"] == [A]
            assert ask(gw.url, CLOSE[3])[0] == A  # the last known state still steers the close call
            assert ask(gw.url, GAP[1])[0] == B  # and a request still reaches the better model
        finally:
            local.proxy_state["models"] = "ok"


def test_an_unreachable_server_at_start_routes_without_penalties(local: Local) -> None:
    local.make_resident(A)
    config = gateway_config(local, pool_settings(local), "dead")
    with ThreadedServer(FastAPI()) as dead:  # a port that answers 404 to everything, /v1/models included
        dead_url = dead.url
    config["backends"].append({"name": "ghost", "model": "openai/ghost", "api_base": f"{dead_url}/v1",
                               "input_per_m": 0.0, "output_per_m": 0.0, "timeout": 5, "max_retries": 0})
    app = create_gateway(config_from_dict(config))
    with ThreadedServer(app) as gw:  # the dead server's poll fails (connection refused); startup goes on
        snap = app.state.pool.snapshot()
        assert snap[f"{dead_url}/v1"]["failures"] >= 1 and snap[f"{dead_url}/v1"]["loaded"] == []
        assert ask(gw.url, CLOSE[4])[0] == A
