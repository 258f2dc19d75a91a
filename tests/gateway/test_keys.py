"""Virtual keys: made by the admin API and the CLI, stored hashed, scoped, limited to the request that crosses."""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from gwhelpers import MODELS, GatewayFactory, backend, row_for
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer

ADMIN = "sk-admin-test"
AUTH = {"enabled": True, "keys": [{"id": "static", "key": "sk-static"}], "admin_key": ADMIN, "sync_ms": 50}
ADMIN_H = {"authorization": f"Bearer {ADMIN}"}


def client(gw: ThreadedServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)


def make_key(gw: ThreadedServer, **fields: Any) -> str:
    r = httpx.post(gw.url + "/admin/keys", headers=ADMIN_H, json=fields, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def ask(gw: ThreadedServer, key: str, model: str = "mid", text: str = "How far is the moon?") -> Any:
    return client(gw, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}])


def fresh_minute(margin_s: float = 30) -> None:
    """Start a rate-limit test early in a UTC minute: the counters start over at each minute."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.05)


def test_admin_api_creates_lists_and_revokes_hashed_keys(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=AUTH)
    assert httpx.post(gw.url + "/admin/keys", json={}).status_code == 401
    assert httpx.post(gw.url + "/admin/keys", headers={"authorization": "Bearer sk-static"}).status_code == 401
    made = httpx.post(gw.url + "/admin/keys", headers=ADMIN_H, json={"id": "team-a", "team": "search",
                                                                     "owner": "ana", "metadata": {"cc": 7}}).json()
    secret = made["key"]
    assert secret.startswith("sk-thl-") and made["team"] == "search" and made["metadata"] == {"cc": 7}
    answer = ask(gw, secret)
    assert answer.http_response.status_code == 200
    assert row_for(gw.ledger_path, answer.headers["x-thalamus-request-id"])["api_key_id"] == "team-a"
    assert ask(gw, "sk-static").http_response.status_code == 200  # static YAML keys keep working
    listed = httpx.get(gw.url + "/admin/keys", headers=ADMIN_H).json()["data"]
    assert [k["id"] for k in listed] == ["team-a"] and "key" not in listed[0] and "key_hash" not in listed[0]
    engine = sa.create_engine(f"sqlite:///{gw.ledger_path}")  # type: ignore[attr-defined]
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM api_keys")).mappings().one()
    engine.dispose()
    assert secret not in str(dict(stored)) and len(stored["key_hash"]) == 64  # only the hash is stored
    dup = httpx.post(gw.url + "/admin/keys", headers=ADMIN_H, json={"id": "team-a"})
    assert dup.status_code == 400 and "already exists" in dup.json()["error"]["message"]
    bad = httpx.post(gw.url + "/admin/keys", headers=ADMIN_H, json={"rpm": -1})
    assert bad.status_code == 400 and "'rpm'" in bad.json()["error"]["message"]
    assert httpx.delete(gw.url + "/admin/keys/team-a", headers=ADMIN_H).json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        ask(gw, secret)
    assert httpx.delete(gw.url + "/admin/keys/team-a", headers=ADMIN_H).status_code == 404


def test_cli_keys_reach_a_running_gateway(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(auth=AUTH)
    url = f"sqlite:///{gw.ledger_path}"  # type: ignore[attr-defined]
    runner = CliRunner()
    made = runner.invoke(build_app(), ["keys", "create", "--ledger", url, "--config", str(tmp_path / "none.yaml"),
                                       "--id", "cli-key", "--rpm", "5", "--team", "ops"])
    assert made.exit_code == 0, made.output
    secret = json.loads(made.output)["key"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the gateway loads new keys every sync_ms
        try:
            assert ask(gw, secret).http_response.status_code == 200
            break
        except openai.AuthenticationError:
            time.sleep(0.05)
    else:
        raise AssertionError("the gateway never accepted the CLI's key")
    listed = runner.invoke(build_app(), ["keys", "list", "--ledger", url, "--json"])
    assert '"cli-key"' in listed.output and secret not in listed.output
    assert runner.invoke(build_app(), ["keys", "revoke", "cli-key", "--ledger", url]).exit_code == 0
    time.sleep(0.3)
    with pytest.raises(openai.AuthenticationError):
        ask(gw, secret)


def test_scope_limits_models_and_routers(make_gateway: GatewayFactory, dataset: RoutingDataset) -> None:
    gw = make_gateway(auth=AUTH)
    secret = make_key(gw, id="mid-only", models=["mid", "weak"], routers=["best"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ask(gw, secret, model="strong")
    assert "may not use model 'strong'" in str(denied.value)
    rid = denied.value.response.headers["x-thalamus-request-id"]
    assert row_for(gw.ledger_path, rid)["status"] == 403  # a refused request still has its row
    routed = ask(gw, secret, model="auto", text=dataset.texts[0])  # best-single routes to 'strong' otherwise
    assert routed.headers["x-thalamus-model"] in {"mid", "weak"}
    other = make_key(gw, id="no-router", routers=[])
    with pytest.raises(openai.PermissionDeniedError):
        ask(gw, other, model="auto")
    assert ask(gw, other, model="strong").http_response.status_code == 200


def test_rpm_and_tpm_refuse_the_request_that_crosses(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=AUTH)
    fresh_minute()
    rpm = make_key(gw, id="rpm3", rpm=3)
    for _ in range(3):
        assert ask(gw, rpm).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as limited:
        ask(gw, rpm)
    headers = limited.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60 and "limit 3, used 3" in str(limited.value)
    assert row_for(gw.ledger_path, headers["x-thalamus-request-id"])["status"] == 429
    tokens = ask(gw, "sk-static").parse().usage.total_tokens  # the same prompt, the same count
    fresh_minute()
    tpm = make_key(gw, id="tpm", tpm=2 * tokens)
    # 0 used: admitted whatever its estimate (prompt + auth.reserve_completion_tokens: no answers yet)
    assert ask(gw, tpm).http_response.status_code == 200
    # `tokens` used; this one reserves its prompt + the key's last completion = `tokens`: it fits exactly
    assert ask(gw, tpm).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as over:
        ask(gw, tpm)
    assert f"limit {2 * tokens}, used {2 * tokens}, this request ~{tokens}" in str(over.value)


def _cost(usage: Any) -> float:
    return (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6  # 'mid' prices per 1M tokens


def test_budgets_refuse_the_request_that_would_exceed(make_gateway: GatewayFactory) -> None:
    probe = make_gateway(auth=AUTH)
    usage = ask(probe, "sk-static").parse().usage
    # without max_tokens a request reserves its prompt + reserve_completion_tokens (no answers yet), then the
    # key's largest recent completion: here both are this prompt's answer, so the estimate is one request's cost
    gw = make_gateway(auth={**AUTH, "reserve_completion_tokens": usage.completion_tokens})
    cost = _cost(usage)
    for field, label in (("budget_day_usd", "daily"), ("budget_month_usd", "monthly")):
        secret = make_key(gw, id=f"b-{label}", **{field: 2 * cost + 1e-12})  # the 2nd fits exactly
        for _ in range(2):  # spent 0 and 1 request's cost: each still fits with its estimate (one more)
            assert ask(gw, secret).http_response.status_code == 200
        with pytest.raises(openai.RateLimitError) as refused:
            ask(gw, secret)
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "budget_exceeded" and error["param"] == field
        assert f"{label} budget of key 'b-{label}' would be exceeded" in error["message"]
        assert refused.value.response.headers["x-should-retry"] == "false"
        rid = refused.value.response.headers["x-thalamus-request-id"]
        assert row_for(gw.ledger_path, rid)["status"] == 429


def test_spend_api_shows_own_spend_and_admins_all(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=AUTH)
    a, b = make_key(gw, id="a", budget_day_usd=1.0), make_key(gw, id="b")
    for key, n in ((a, 2), (b, 1)):
        for _ in range(n):
            ask(gw, key)
    time.sleep(0.3)  # the ledger writer batches every 20 ms
    own = httpx.get(gw.url + "/api/spend", headers={"authorization": f"Bearer {a}"}).json()
    assert [(d["key"], d["requests"]) for d in own["data"]] == [("a", 2)] and own["data"][0]["spend_usd"] > 0
    assert own["data"][0]["budget_day_usd"] == 1.0
    assert abs(own["data"][0]["spent_today_usd"] - own["data"][0]["spend_usd"]) < 1e-12
    peek = httpx.get(gw.url + "/api/spend", params={"key": "b"}, headers={"authorization": f"Bearer {a}"})
    assert peek.status_code == 403
    everyone = httpx.get(gw.url + "/api/spend", headers=ADMIN_H).json()["data"]
    assert {d["key"]: d["requests"] for d in everyone} == {"a": 2, "b": 1}
    later = httpx.get(gw.url + "/api/spend", params={"since": time.time() + 60}, headers=ADMIN_H).json()
    assert later["data"] == []
    assert httpx.get(gw.url + "/api/spend").status_code == 401


def test_limits_hold_across_two_replicas_on_postgres(make_gateway: GatewayFactory, pg_url: str,
                                                     tmp_path: Path) -> None:
    auth = {**AUTH, "reserve_completion_tokens": 0}  # estimates without max_tokens: the prompt alone, as below
    replicas = [make_gateway(auth=auth, ledger={"url": pg_url, "flush_ms": 20,
                                                "journal_path": str(tmp_path / f"j{i}.jsonl")}) for i in range(2)]
    fresh_minute()
    rpm = make_key(replicas[0], id="shared-rpm", rpm=4)
    static_usage = ask(replicas[0], "sk-static").parse().usage
    cost, estimate = _cost(static_usage), static_usage.prompt_tokens / 1e6
    budget = make_key(replicas[1], id="shared-budget", budget_day_usd=cost + estimate / 2)  # room for one
    time.sleep(0.3)  # both replicas have loaded both keys
    for i in range(4):  # alternate replicas, each request synced before the next
        assert ask(replicas[i % 2], rpm).http_response.status_code == 200
        time.sleep(0.2)
    for gw in replicas:  # both know the key's 4 requests
        with pytest.raises(openai.RateLimitError):
            ask(gw, rpm)
    assert ask(replicas[0], budget).http_response.status_code == 200
    time.sleep(0.2)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(replicas[1], budget)  # the other replica saw the first one's spend
    assert "daily budget" in str(refused.value)


def test_limits_hold_while_the_database_is_away_and_counts_reach_it_after(make_gateway: GatewayFactory,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    gw = make_gateway(auth=AUTH, ledger={"url": f"sqlite:///{path}", "flush_ms": 20, "busy_timeout_ms": 50,
                                         "journal_path": str(tmp_path / "j.jsonl")})
    fresh_minute()
    secret = make_key(gw, id="offline", rpm=3)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # every sync (and ledger write) fails while this is held
    try:
        time.sleep(0.2)
        for _ in range(3):
            assert ask(gw, secret).http_response.status_code == 200
        with pytest.raises(openai.RateLimitError):
            ask(gw, secret)  # enforced on what this replica knows
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    engine = sa.create_engine(f"sqlite:///{path}")
    deadline, counted = time.monotonic() + 10, None
    while time.monotonic() < deadline and counted != 3:
        time.sleep(0.1)
        with engine.connect() as conn:
            counted = conn.execute(sa.text("SELECT requests FROM key_usage WHERE key_id = 'offline' "
                                           "AND period LIKE 'min:%'")).scalar()
    engine.dispose()
    assert counted == 3  # the additions kept through the failed syncs reached the database


def test_concurrent_requests_see_each_others_reserved_cost(make_gateway: GatewayFactory,
                                                           dataset: RoutingDataset) -> None:
    with ThreadedServer(create_replay_app(dataset, delay_ms=1000), log_level="critical") as slow:
        gw = make_gateway(auth=AUTH, backends=[backend(m, m, slow.url + "/v1") for m in MODELS])
        _burst(gw)


def _burst(gw: ThreadedServer) -> None:
    usage = ask(gw, "sk-static").parse().usage
    estimate = (usage.prompt_tokens * 1.0 + 50 * 2.0) / 1e6  # the prompt + max_tokens=50 at 'mid' prices
    secret = make_key(gw, id="burst", budget_day_usd=3 * estimate + 1e-12)

    def one(_: int) -> int:
        try:
            client(gw, secret).chat.completions.create(
                model="mid", max_tokens=50, messages=[{"role": "user", "content": "How far is the moon?"}])
            return 200
        except openai.RateLimitError:
            return 429

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(one, range(8)))
    # all 8 in flight at once (the upstream takes 1 s): each sees the others' reserved estimates
    assert statuses == [200] * 3 + [429] * 5
