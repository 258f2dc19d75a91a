"""Load-aware routing's penalty: a real tracker polls a loopback server's ``/metrics`` (vLLM's names) and
``pool_aware.adjust`` charges each candidate its expected wait, (running + waiting) x service_s x per_second."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Response

from thalamus.gateway.config import BackendConfig
from thalamus.gateway.config.pool import PoolRoutingConfig
from thalamus.gateway.learning.pool_aware import adjust
from thalamus.gateway.learning.pool_state import PoolTracker
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.policy import Knob, decide


def engine_app(load: dict[str, tuple[int, int]]) -> FastAPI:
    """A vLLM-like server: /v1/models without residency, /metrics with each model's running and waiting."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in load]}

    @app.get("/metrics")
    async def metrics() -> Response:
        lines = ["# TYPE vllm:num_requests_running gauge", "# TYPE vllm:num_requests_waiting gauge"]
        for model, (running, waiting) in load.items():
            lines += [f'vllm:num_requests_running{{model_name="{model}"}} {running}',
                      f'vllm:num_requests_waiting{{model_name="{model}"}} {waiting}']
        return Response("\n".join(sorted(lines)) + "\n", media_type="text/plain")

    return app


def tracker_for(url: str, **pool: Any) -> PoolTracker:
    backends = [BackendConfig(name=m, model=f"openai/{m}", api_base=f"{url}/v1", input_per_m=0, output_per_m=0)
                for m in ("busy", "idle")]
    tracker = PoolTracker(PoolRoutingConfig(enabled=True, **pool), backends)

    async def poll() -> None:
        await tracker.start()
        await tracker.close()

    asyncio.run(poll())
    return tracker


DECISION = decide([0.60, 0.55], [0.0, 0.0], ["busy", "idle"], Knob("lambda", 0.0))


def test_the_wait_penalty_moves_a_close_call_off_the_busy_engine() -> None:
    with ThreadedServer(engine_app({"busy": (2, 3), "idle": (0, 0)})) as server:
        tracker = tracker_for(server.url, load_aware=True, per_second=0.01, service_s=2.0)
    assert tracker.expected_wait_s("busy") == 10.0 and tracker.expected_wait_s("idle") == 0.0
    assert DECISION.model == "busy"
    moved = adjust(tracker, DECISION)
    assert moved.model == "idle" and "expected wait 10 s" in moved.reason
    record = moved.log["switch_cost"]
    assert record == {"per_second": 0.01, "router_choice": "busy",
                      "penalties": {"busy": {"wait_s": 10.0, "penalty": 0.1}}}


def test_a_quality_gap_beats_the_wait_and_per_backend_service_times_apply() -> None:
    with ThreadedServer(engine_app({"busy": (1, 0), "idle": (0, 0)})) as server:
        tracker = tracker_for(server.url, load_aware=True, per_second=0.01, service_s=2.0,
                              service_s_by_backend={"busy": 4.0})
    kept = adjust(tracker, DECISION)  # 4 s x 0.01 = 0.04 < the 0.05 quality gap
    assert kept.model == "busy" and kept.log["switch_cost"]["router_choice"] is None
    assert kept.log["switch_cost"]["penalties"] == {"busy": {"wait_s": 4.0, "penalty": 0.04}}
    tracker.chosen("busy")  # the load is the polled one: the gateway's own sends are not counted
    assert tracker.expected_wait_s("busy") == 4.0


def test_without_load_aware_or_without_metrics_nothing_is_charged() -> None:
    with ThreadedServer(engine_app({"busy": (5, 5), "idle": (0, 0)})) as server:
        plain = tracker_for(server.url, per_second=0.01)
    assert plain.expected_wait_s("busy") is None and adjust(plain, DECISION) is DECISION
    with ThreadedServer(FastAPI()) as bare:  # /metrics answers 404: counted, no load, no penalty
        tracker = tracker_for(bare.url, load_aware=True, per_second=0.01)
    snap = tracker.snapshot()[f"{bare.url}/v1"]
    assert snap["load_failures"] == 1 and "404" in snap["load_error"] and snap["load"] == {}
    assert tracker.expected_wait_s("busy") is None and adjust(tracker, DECISION) is DECISION
