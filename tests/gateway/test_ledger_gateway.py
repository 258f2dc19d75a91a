"""The ledger through the real gateway: bad input values, a locked database, a Postgres outage under
load, two gateway processes on one Postgres. Rows == requests every time, and /readyz follows the
writer's live state (503 while rows wait in the journal, 200 again by itself)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from gwhelpers import GatewayFactory, base_config
from pgserver import PgServer, free_port

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger

RAW_BAD_MODELS = [b'"\\ud800"', b'"' + b"x" * 300 + b'\\u0000"', b'"a\\u0000b"']


def _ledger_cfg(url: str, journal: Path, **extra: Any) -> dict[str, Any]:
    return {"url": url, "store_prompts": True, "flush_ms": 20, "journal_path": str(journal)} | extra


def _wait_ready(url: str, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.get(url + "/readyz", timeout=10)
        if resp.status_code == 200 or time.monotonic() > deadline:
            return resp
        time.sleep(0.1)


def test_bad_values_in_requests_leave_rows(make_gateway: GatewayFactory, db_url: str, tmp_path: Path) -> None:
    gw = make_gateway(ledger=_ledger_cfg(db_url, tmp_path / "j.jsonl"))
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        statuses = [client.post("/v1/chat/completions", headers={"content-type": "application/json"},
                                content=b'{"model": ' + model + b', "messages": [{"role": "user", "content": "hi"}]}'
                                ).status_code for model in RAW_BAD_MODELS]
        for i in range(5):
            ok = client.post("/v1/chat/completions", json={"model": "weak", "messages": [
                {"role": "user", "content": f"question {i}"}]})
            assert ok.status_code == 200
        assert client.get("/readyz").status_code == 200
    assert all(400 <= s < 500 for s in statuses), statuses
    gw.stop()
    ledger = Ledger(db_url)
    rows = ledger.recent(limit=100)
    assert len(rows) == len(RAW_BAD_MODELS) + 5
    models = set(rows["requested_model"])
    assert {"x" * 256, "ab", "weak"} <= models  # cut to the column, NUL removed
    # a lone surrogate is refused at parse time (400 invalid_unicode), before the model is read: its row says so
    assert (rows["error_type"] == "invalid_unicode").sum() == 1
    ledger.close()


def test_readyz_degraded_while_the_database_is_locked_then_back(make_gateway: GatewayFactory,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    gw = make_gateway(ledger=_ledger_cfg(f"sqlite:///{path}", tmp_path / "j.jsonl", busy_timeout_ms=50))
    locker = sqlite3.connect(path, isolation_level=None)
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        locker.execute("BEGIN EXCLUSIVE")
        for i in range(10):
            resp = client.post("/v1/chat/completions", json={"model": "weak", "messages": [
                {"role": "user", "content": f"locked {i}"}]})
            assert resp.status_code == 200
        deadline = time.monotonic() + 20
        while (ready := client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "ledger degraded"
        assert ready.json()["ledger"]["alive"] is True
        litellm_shape = client.get("/health/readiness")  # the same state, in LiteLLM's shape
        assert litellm_shape.status_code == 503 and litellm_shape.json()["status"] == "unhealthy"
        assert litellm_shape.json()["db"] == "degraded"
        locker.execute("ROLLBACK")
        assert _wait_ready(gw.url).status_code == 200
    locker.close()
    gw.stop()
    ledger = Ledger(f"sqlite:///{path}")
    assert ledger.count() == 10
    ledger.close()


async def _load(url: str, stop: threading.Event, concurrency: int, texts: list[str],
                limit: int = 10**9) -> tuple[list[str], int]:
    """Requests until ``stop`` is set or ``limit`` were sent: the ids answered 200, and how many were sent."""
    ids: list[str] = []
    sent = 0
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        async def worker(k: int) -> None:
            nonlocal sent
            i = 0
            while not stop.is_set() and sent < limit:
                sent += 1
                raw = await client.chat.completions.with_raw_response.create(
                    model="weak", messages=[{"role": "user", "content": texts[(k + i) % len(texts)]}])
                ids.append(raw.headers["x-thalamus-request-id"])
                i += 1
                await asyncio.sleep(0.005)

        await asyncio.gather(*[worker(k) for k in range(concurrency)])
    return ids, sent


def test_a_5_second_postgres_outage_under_load(make_gateway: GatewayFactory, own_pg_server: PgServer,
                                               dataset: RoutingDataset, tmp_path: Path) -> None:
    gw = make_gateway(ledger=_ledger_cfg(own_pg_server.url, tmp_path / "j.jsonl"))
    stop = threading.Event()
    during: list[dict[str, Any]] = []

    def outage() -> None:
        time.sleep(1.0)
        own_pg_server.stop()
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            resp = httpx.get(gw.url + "/readyz", timeout=10)
            during.append({"code": resp.status_code} | resp.json())
            time.sleep(0.25)
        own_pg_server.start()
        time.sleep(1.0)
        stop.set()

    thread = threading.Thread(target=outage)
    thread.start()
    ids, sent = asyncio.run(_load(gw.url, stop, 8, dataset.texts))
    thread.join()
    assert len(ids) == sent and sent > 20
    assert during and all(r["code"] == 503 for r in during[2:])  # not ready while the database is down
    back = _wait_ready(gw.url)
    assert back.status_code == 200
    gw.stop()
    ledger = Ledger(own_pg_server.url)
    assert ledger.ids() == set(ids)
    ledger.close()


def _serve(config: dict[str, Any], path: Path) -> subprocess.Popen[bytes]:
    path.write_text(yaml.safe_dump(config))
    code = "import sys; from thalamus.cli import build_app; build_app()(sys.argv[1:], prog_name='thalamus')"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-c", code, "serve", "--config", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_two_gateway_processes_share_one_postgres(replay: ThreadedServer, artifact: Path, pg_url: str,
                                                  dataset: RoutingDataset, tmp_path: Path) -> None:
    procs, urls = [], []
    for k in range(2):
        port = free_port()
        config = base_config(replay.url, artifact, tmp_path / "unused.sqlite",
                             ledger=_ledger_cfg(pg_url, tmp_path / f"j{k}.jsonl"),
                             server={"host": "127.0.0.1", "port": port})
        procs.append(_serve(config, tmp_path / f"gw{k}.yaml"))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"gateway {url} did not start"
                time.sleep(0.2)

        async def both() -> list[tuple[list[str], int]]:
            never = threading.Event()  # a fixed count, not a duration: the machine may be slow
            return list(await asyncio.gather(*[_load(url, never, 4, dataset.texts, limit=80) for url in urls]))

        results = asyncio.run(both())
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # a graceful stop drains the writer
        for proc in procs:
            proc.wait(timeout=60)
    ids = [i for got, _ in results for i in got]
    assert [(len(got), sent) for got, sent in results] == [(80, 80), (80, 80)]
    ledger = Ledger(pg_url)
    assert ledger.ids() == set(ids) and ledger.count() == len(ids)
    ledger.close()
