"""Load-aware routing with a real busy engine: two ``thalamus serve-local`` processes serve one tiny model
each, background requests keep one of them busy, and a real gateway (kNN router that rates the busy
engine's model slightly higher) routes away from it only when ``pool_routing.load_aware`` is on; the
ledger row records the expected wait it charged. When the background traffic stops, the next polls
see an idle engine and the router's choice comes back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from openai import OpenAI

from thalamus.datasets.schema import RoutingDataset
from thalamus.engine_metrics import parse_load
from thalamus.gateway.app import create_app as create_gateway
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger
from thalamus.router.knn import KNNRouter
from thalamus.serving.models import make_tiny_moe

pytestmark = pytest.mark.slow
BUSY, IDLE = "engine-a", "engine-b"  # the router rates engine-a 0.02 higher on every prompt
PROMPTS = [f"Write one sentence about {w}." for w in ("rivers", "bread", "trains", "owls", "salt", "maps")]
BODY: dict[str, Any] = {"max_tokens": 2, "temperature": 0, "extra_body": {"ignore_eos": True}}
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_engine(root: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    """``thalamus serve-local`` in its own process, one tiny model, two decoding slots; its URL once up."""
    make_tiny_moe("mixtral", root / name)
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"torch_threads": 1, "max_batch_size": 2, "batch_window_ms": 1,
                                      "models": [{"name": name, "path": str(root / name)}]}))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", "from thalamus.cli import main; main()", "serve-local",
                                "--config", str(config), "--host", "127.0.0.1", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError(f"serve-local for {name} did not answer /v1/models within 120 s (config {config})")


@dataclass
class Engines:
    urls: dict[str, str]
    artifact: Path
    root: Path
    stop: threading.Event = field(default_factory=threading.Event)

    def in_flight(self, model: str) -> float:
        load = parse_load(httpx.get(f"{self.urls[model]}/metrics", timeout=10).text).get(model)
        return load.in_flight if load is not None else 0.0

    def background(self, model: str, streams: int) -> list[threading.Thread]:
        """``streams`` clients sending long generations to ``model`` until ``stop`` is set."""
        def loop() -> None:
            client = OpenAI(base_url=f"{self.urls[model]}/v1", api_key="unused", max_retries=0, timeout=300)
            while not self.stop.is_set():
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Go on."}],
                                               max_tokens=400, temperature=0, extra_body={"ignore_eos": True})
        self.stop.clear()
        threads = [threading.Thread(target=loop, daemon=True) for _ in range(streams)]
        for thread in threads:
            thread.start()
        return threads


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    root = tmp_path_factory.mktemp("load-routing")
    quality = np.array([[0.52, 0.50]] * len(PROMPTS))
    data = RoutingDataset(name="load-synthetic", prompts=pd.DataFrame({"text": PROMPTS}), models=[BUSY, IDLE],
                          quality=quality, cost=np.zeros_like(quality))
    KNNRouter(k=3, embedder="hashing").fit(data).save(root / "router")
    started = [start_engine(root, name) for name in (BUSY, IDLE)]
    try:
        yield Engines({BUSY: started[0][1], IDLE: started[1][1]}, root / "router", root)
    finally:
        for process, _ in started:
            process.terminate()
            process.wait(30)


def gateway_config(engines: Engines, load_aware: bool, name: str) -> dict[str, Any]:
    backends = [{"name": m, "model": f"openai/{m}", "api_base": f"{url}/v1", "input_per_m": 0.0,
                 "output_per_m": 0.0, "timeout": 300, "max_retries": 0} for m, url in engines.urls.items()]
    pool = {"enabled": True, "load_aware": load_aware, "per_second": 0.01, "service_s": 1.0,
            "poll_interval_s": 0.2, "poll_timeout_s": 5.0}
    return {"backends": backends, "pool_routing": pool,
            "routers": {"local": {"artifact": str(engines.artifact), "aliases": ["auto"],
                                  "knob": {"kind": "lambda", "value": 0.0}}},
            "ledger": {"url": f"sqlite:///{engines.root / f'{name}.sqlite'}", "flush_ms": 10}}


def ask(url: str, text: str) -> tuple[str, str]:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], **BODY)
    return raw.headers["x-thalamus-model"], raw.headers["x-thalamus-request-id"]


def switch_cost(engines: Engines, name: str, request_id: str) -> dict[str, Any] | None:
    ledger = Ledger(f"sqlite:///{engines.root / f'{name}.sqlite'}")
    try:
        for _ in range(500):
            rows = ledger.recent(limit=100)
            hit = rows[rows["id"] == request_id]
            if len(hit):
                value = hit.iloc[0]["switch_cost"]
                return json.loads(value) if isinstance(value, str) else None
            time.sleep(0.02)
    finally:
        ledger.close()
    raise AssertionError(f"no ledger row for {request_id} in {name}.sqlite")


def wait_until(check: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def test_the_gateway_routes_away_from_a_busy_engine_only_when_load_aware(engines: Engines) -> None:
    aware_app = create_gateway(config_from_dict(gateway_config(engines, True, "aware")))
    with ThreadedServer(aware_app) as aware, \
            ThreadedServer(create_gateway(config_from_dict(gateway_config(engines, False, "plain")))) as plain:
        assert ask(aware.url, PROMPTS[0])[0] == BUSY  # idle engines: the router's choice stands
        # 8 streams on 2 slots: the two running requests start and end together (same length), so in flight
        # dips by 2 until their clients send again; with 4 streams a poll in that dip saw 2 (a 0.02 penalty,
        # the router's whole margin) and the busy engine kept the request
        threads = engines.background(BUSY, streams=8)
        try:
            wait_until(lambda: engines.in_flight(BUSY) >= 3, f"{BUSY} to run and queue the background requests")
            wait_until(lambda: aware_app.state.pool.snapshot()[f"{engines.urls[BUSY]}/v1"]["load"].get(BUSY, 0) >= 3,
                       "the gateway's poll to see the load")
            for text in PROMPTS[1:4]:
                model, rid = ask(aware.url, text)
                assert model == IDLE
                cost = switch_cost(engines, "aware", rid)
                assert cost is not None and cost["router_choice"] == BUSY
                assert cost["penalties"][BUSY]["wait_s"] >= 3.0
                assert cost["penalties"][BUSY]["penalty"] == pytest.approx(cost["penalties"][BUSY]["wait_s"] * 0.01)
            model, rid = ask(plain.url, PROMPTS[4])  # pool routing without load_aware: no wait is charged
            assert model == BUSY and not (switch_cost(engines, "plain", rid) or {}).get("penalties")
        finally:
            engines.stop.set()
            for thread in threads:
                thread.join(300)
        wait_until(lambda: aware_app.state.pool.snapshot()[f"{engines.urls[BUSY]}/v1"]["load"].get(BUSY, 1) == 0,
                   "the gateway's poll to see the busy engine drained")
        assert ask(aware.url, PROMPTS[5])[0] == BUSY
