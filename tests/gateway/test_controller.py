"""The knob controller: holds a strong-model share through the real gateway, bounded steps, state in
/api/controller and in every row's knob; the quality floor's integral step on a real SQLite ledger."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from gwhelpers import GatewayFactory, ledger_rows

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.config import ControllerConfig, RouterConfig
from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.controller import Controller
from thalamus.ledger import Ledger, LedgerRow
from thalamus.router.base import Router
from thalamus.router.knn import KNNRouter


@pytest.fixture
def knn_artifact(tmp_path: Path, dataset: RoutingDataset) -> Path:
    out = tmp_path / "knn"
    KNNRouter(embedder="hashing", k=5).fit(dataset).save(out)
    return out


def test_controller_moves_the_knob_to_hold_the_strong_share(make_gateway: GatewayFactory, dataset: RoutingDataset,
                                                            knn_artifact: Path) -> None:
    controller = {"target": "strong_share", "value": 0.3, "strong": "strong", "window": 40, "min_rows": 20,
                  "interval_s": 0.2, "max_step": 0.1}
    routers = {"best": {"artifact": str(knn_artifact), "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                        "controller": controller}}
    gw = make_gateway(routers=routers)
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for i in range(240):
            r = client.post("/v1/chat/completions", json={"model": "auto", "messages": [
                {"role": "user", "content": dataset.texts[i % dataset.n_prompts]}]})
            assert r.status_code == 200
            if i % 20 == 19:
                time.sleep(0.25)  # let the controller step between bursts
        state = client.get("/api/controller").json()["controllers"][0]
    assert state["router"] == "best" and state["steps"] >= 5 and state["knob"] > 0
    knobs = [h["knob"] for h in state["history"]]
    assert all(abs(b - a) <= 0.1 + 1e-9 for a, b in zip([0.0, *knobs], knobs, strict=False))  # bounded steps
    rows = ledger_rows(gw.ledger_path, 240).sort_values("created_at")  # type: ignore[attr-defined]
    values = [json.loads(k)["value"] for k in rows["knob"]]
    assert values[0] == 0.0 and len(set(values)) > 2  # the ledger shows the knob each request used
    first, last = rows.head(40), rows.tail(60)
    assert (first["chosen_model"] == "strong").mean() > 0.6  # lambda 0: mostly strong
    assert abs((last["chosen_model"] == "strong").mean() - 0.3) <= 0.15


def _loaded(artifact: Path, controller: ControllerConfig) -> LoadedRouter:
    rc = RouterConfig(artifact=artifact, knob={"kind": "lambda", "value": 0.5}, controller=controller)
    return LoadedRouter("best", Router.load(artifact), "v1", rc, ("strong", "mid", "weak"))


def test_quality_floor_steps_toward_quality_when_feedback_falls_below(tmp_path: Path, knn_artifact: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'floor.sqlite'}")
    cfg = ControllerConfig(target="quality_floor", value=0.8, window=50, min_rows=10, max_step=0.05, gain=0.5)
    loaded = _loaded(knn_artifact, cfg)
    c = Controller(loaded, cfg)
    assert c.step(ledger).steps == 0  # too few rows: no step
    now = time.time()
    ledger.insert_rows([LedgerRow(id=f"r{i}", created_at=now + i, router="best", status=200, chosen_model="weak",
                                  candidates={"weak": {"quality": 0.5, "cost": 0.0001}}) for i in range(20)])
    for i in range(20):
        ledger.add_feedback(f"r{i}", 0.6, None, None, None)
    state = c.step(ledger)
    # shortfall 0.2 * gain 0.5 = 0.1 wanted; the step is capped at 0.05
    assert state.measured == pytest.approx(0.6) and loaded.config.knob.value == pytest.approx(0.45)
    assert state.aim == pytest.approx(0.4) and state.steps == 1
    ledger.close()
