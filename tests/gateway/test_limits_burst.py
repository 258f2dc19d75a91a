"""Limits under bursts: rpm, tpm and budgets with every request in flight at once (the upstream answers
after 1 s), on one gateway and on two gateways sharing one PostgreSQL database. Admission reserves each
request's estimate before the call, so concurrent requests see each other; the numbers asserted are the
ledger's (what was answered and spent), not the gateway's own counters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from gwhelpers import MODELS, GatewayFactory, backend

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer

ADMIN = "sk-admin-burst"
ADMIN_H = {"authorization": f"Bearer {ADMIN}"}
PROMPT = [{"role": "user", "content": "How far is the moon?"}]


@pytest.fixture(scope="module")
def slow(dataset: RoutingDataset) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_replay_app(dataset, delay_ms=1000), log_level="critical") as server:
        yield server


def gateways(make_gateway: GatewayFactory, slow: ThreadedServer, n: int, ledger: dict[str, Any] | None = None,
             strict: bool = False) -> list[ThreadedServer]:
    auth = {"enabled": True, "admin_key": ADMIN, "sync_ms": 50, "strict_limits": strict}
    extra = {"ledger": ledger} if ledger is not None else {}
    return [make_gateway(auth=auth, backends=[backend(m, m, slow.url + "/v1") for m in MODELS], **extra)
            for _ in range(n)]


def make_key(gw: ThreadedServer, **fields: Any) -> str:
    r = httpx.post(gw.url + "/admin/keys", headers=ADMIN_H, json=fields, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def fire(urls: list[str], secret: str, n: int, **body: Any) -> list[int]:
    """``n`` requests at once, spread over ``urls``; their statuses."""
    def one(i: int) -> int:
        r = httpx.post(urls[i % len(urls)] + "/v1/chat/completions", timeout=120,
                       headers={"authorization": f"Bearer {secret}"},
                       json={"model": "mid", "messages": PROMPT, **body})
        assert r.status_code in (200, 429), r.text
        return r.status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def answered(url: str, key_id: str, n: int) -> tuple[int, int, float]:
    """(answered requests, their tokens, the key's spend) from the ledger, once ``n`` rows are in."""
    engine = sa.create_engine(url)
    query = sa.text("SELECT count(*), sum(CASE WHEN status = 200 THEN 1 ELSE 0 END), "
                    "coalesce(sum(CASE WHEN status = 200 THEN prompt_tokens + completion_tokens END), 0), "
                    "coalesce(sum(cost_usd), 0) FROM requests WHERE api_key_id = :k")
    deadline = time.monotonic() + 20
    try:
        while True:
            with engine.connect() as conn:
                rows, ok, tokens, spend = conn.execute(query, {"k": key_id}).one()
            if rows >= n:
                return int(ok or 0), int(tokens), float(spend)
            # a missing row would make the ceilings below (tokens, spend) easier to meet: fail instead
            assert time.monotonic() < deadline, f"{rows} of {n} rows of key {key_id!r} in the ledger after 20 s"
            time.sleep(0.05)
    finally:
        engine.dispose()


def fresh_minute(margin_s: float = 20) -> None:
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.05)


def ledger_url(gw: ThreadedServer) -> str:
    return f"sqlite:///{gw.ledger_path}"  # type: ignore[attr-defined]


def test_rpm_tpm_and_budget_hold_under_a_burst_on_one_gateway(make_gateway: GatewayFactory,
                                                              slow: ThreadedServer) -> None:
    (gw,) = gateways(make_gateway, slow, 1)
    fresh_minute()
    rpm = make_key(gw, id="rpm", rpm=10)
    assert fire([gw.url], rpm, 40).count(200) == 10
    tpm = make_key(gw, id="tpm", tpm=300)
    statuses = fire([gw.url], tpm, 60, max_tokens=40)
    ok, tokens, _ = answered(ledger_url(gw), "tpm", 60)
    assert ok == statuses.count(200) and ok >= 1 and tokens <= 300, (ok, tokens)  # was 60 admitted, 3,840 tokens
    budget = 0.001  # no max_tokens: the first burst reserves 256 completion tokens, the second the real size
    spend_key = make_key(gw, id="budget", budget_day_usd=budget)
    first = fire([gw.url], spend_key, 30).count(200)
    second = fire([gw.url], spend_key, 30).count(200)
    ok, _, spend = answered(ledger_url(gw), "budget", 60)
    assert first >= 1 and second >= 1 and ok == first + second
    assert spend <= budget, (spend, budget)  # was 112% of the budget


@pytest.mark.slow
def test_limits_across_two_gateways_on_one_postgres(make_gateway: GatewayFactory, slow: ThreadedServer,
                                                    pg_url: str, tmp_path: Any) -> None:
    """Each gateway sees the other's admissions within one ``auth.sync_ms``: a burst landing on both at the
    same instant can pass each one's limit once (the documented bound: replicas x limit); one sync later
    the totals hold."""
    pair = gateways(make_gateway, slow, 2, {"url": pg_url, "flush_ms": 20,
                                            "journal_path": str(tmp_path / "j.jsonl")})
    urls = [g.url for g in pair]
    fresh_minute()
    rpm = make_key(pair[0], id="rpm2", rpm=10)
    tpm = make_key(pair[0], id="tpm2", tpm=300)
    time.sleep(0.3)  # both replicas loaded both keys
    burst = fire(urls, rpm, 40).count(200)
    assert 10 <= burst <= 20
    time.sleep(0.3)
    assert fire(urls, rpm, 10).count(200) == 0  # the totals are shared: nothing left this minute
    statuses = fire(urls, tpm, 60, max_tokens=40)
    ok, tokens, _ = answered(pg_url, "tpm2", 60)
    assert ok == statuses.count(200) and ok >= 1 and tokens <= 2 * 300, (ok, tokens)


@pytest.mark.slow
def test_strict_limits_are_exact_across_two_gateways(make_gateway: GatewayFactory, slow: ThreadedServer,
                                                     pg_url: str, tmp_path: Any) -> None:
    """``auth.strict_limits``: each limited request claims its counts in the database (conditional
    increments in one transaction), so a burst over both gateways admits exactly the limit."""
    pair = gateways(make_gateway, slow, 2, {"url": pg_url, "flush_ms": 20,
                                            "journal_path": str(tmp_path / "j.jsonl")}, strict=True)
    urls = [g.url for g in pair]
    fresh_minute()
    rpm = make_key(pair[0], id="rpm-s", rpm=10)
    tpm = make_key(pair[0], id="tpm-s", tpm=300)
    budget = make_key(pair[0], id="budget-s", budget_day_usd=0.001)
    time.sleep(0.3)
    assert fire(urls, rpm, 40).count(200) == 10
    statuses = fire(urls, tpm, 60, max_tokens=40)
    ok, tokens, _ = answered(pg_url, "tpm-s", 60)
    assert ok == statuses.count(200) and ok >= 1 and tokens <= 300, (ok, tokens)
    first = fire(urls, budget, 30).count(200)
    second = fire(urls, budget, 30).count(200)
    ok, _, spend = answered(pg_url, "budget-s", 60)
    assert first >= 1 and second >= 1 and ok == first + second and spend <= 0.001, (first, second, spend)
