"""Keys over their life: updated in place, rotated with a grace period for the old secret, expired; teams
as records whose limits hold over all their keys; a virtual team admin reads its team's spend."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from gwhelpers import GatewayFactory
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.gateway.replay.threaded import ThreadedServer

ADMIN = "sk-admin-life"
ADMIN_H = {"authorization": f"Bearer {ADMIN}"}
AUTH = {"enabled": True, "admin_key": ADMIN, "sync_ms": 50}


def make_key(gw: ThreadedServer, **fields: Any) -> str:
    r = httpx.post(gw.url + "/admin/keys", headers=ADMIN_H, json=fields, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def call(gw: ThreadedServer, secret: str, model: str = "mid") -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {secret}"}, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "How far is the moon?"}]})


def fresh_minute(margin_s: float = 20) -> None:
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.05)


def test_update_changes_scope_and_limits_and_keeps_the_secret(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=AUTH)
    secret = make_key(gw, id="u", models=["mid"])
    assert call(gw, secret, "strong").status_code == 403
    patched = httpx.patch(gw.url + "/admin/keys/u", headers=ADMIN_H, json={"models": None, "rpm": 50}, timeout=10)
    assert patched.status_code == 200 and patched.json()["models"] is None and patched.json()["rpm"] == 50
    assert call(gw, secret, "strong").status_code == 200  # the same secret, the new scope at once
    bad = httpx.patch(gw.url + "/admin/keys/u", headers=ADMIN_H, json={"key_hash": "x"}, timeout=10)
    assert bad.status_code == 400 and "cannot be updated" in bad.json()["error"]["message"]
    missing = httpx.patch(gw.url + "/admin/keys/nope", headers=ADMIN_H, json={"rpm": 1})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"
    assert httpx.patch(gw.url + "/admin/keys/u", json={"rpm": 1}).status_code == 401


def test_rotation_keeps_the_old_secret_for_the_grace_period(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=AUTH)
    old = make_key(gw, id="r")
    rotated = httpx.post(gw.url + "/admin/keys/r/rotate", headers=ADMIN_H, json={"grace_s": 1.5}, timeout=10)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["key"]
    assert new != old and call(gw, new).status_code == 200 and call(gw, old).status_code == 200
    time.sleep(1.8)  # the grace period is over; the next sync (50 ms) drops the old secret
    assert call(gw, old).status_code == 401 and call(gw, new).status_code == 200
    now = httpx.post(gw.url + "/admin/keys/r/rotate", headers=ADMIN_H, json={}, timeout=10).json()["key"]
    assert call(gw, new).status_code == 401 and call(gw, now).status_code == 200  # no grace: at once


def test_a_key_stops_at_its_expiry(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=AUTH)
    secret = make_key(gw, id="e", expires_at=time.time() + 1.0)
    assert call(gw, secret).status_code == 200
    time.sleep(1.1)
    assert call(gw, secret).status_code == 401  # checked on every lookup, not only at the next sync


def test_team_limits_hold_over_all_its_keys(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(auth=AUTH)
    url = f"sqlite:///{gw.ledger_path}"  # type: ignore[attr-defined]
    fresh_minute()
    made = CliRunner().invoke(build_app(), ["teams", "set", "red", "--rpm", "3", "--ledger", url,
                                            "--config", str(tmp_path / "none.yaml")])
    assert made.exit_code == 0 and json.loads(made.output)["rpm"] == 3, made.output
    a, b = make_key(gw, id="red-a", team="red"), make_key(gw, id="red-b", team="red", rpm=100)
    other = make_key(gw, id="blue-a", team="blue")
    time.sleep(0.2)  # the CLI wrote the team to the database: the gateway reads it at its next sync
    statuses = [call(gw, s).status_code for s in (a, b, a, b)]
    assert statuses == [200, 200, 200, 429]
    refused = call(gw, a)
    assert refused.status_code == 429 and "team 'red'" in refused.json()["error"]["message"]
    assert call(gw, other).status_code == 200  # another team is not counted
    listed = httpx.get(gw.url + "/admin/teams", headers=ADMIN_H).json()["data"]
    assert [(t["id"], t["rpm"]) for t in listed] == [("red", 3)]
    budget = httpx.post(gw.url + "/admin/teams", headers=ADMIN_H, json={"id": "blue", "budget_day_usd": 0})
    assert budget.status_code == 200
    over = call(gw, other)
    assert over.status_code == 429 and over.json()["error"]["code"] == "budget_exceeded"


def test_a_virtual_team_admin_reads_its_teams_spend(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=AUTH)
    lead = make_key(gw, id="lead", team="red", role="team_admin")
    mate, stranger = make_key(gw, id="mate", team="red"), make_key(gw, id="stranger", team="blue")
    for secret in (lead, mate, stranger):
        assert call(gw, secret).status_code == 200
    bad = httpx.post(gw.url + "/admin/keys", headers=ADMIN_H, json={"role": "team_admin"}, timeout=10)
    assert bad.status_code == 400 and "needs a 'team'" in bad.json()["error"]["message"]
    deadline = time.monotonic() + 10
    seen: set[str] = set()
    while time.monotonic() < deadline and seen != {"lead", "mate"}:
        data = httpx.get(gw.url + "/api/spend", headers={"authorization": f"Bearer {lead}"}).json()["data"]
        seen = {d["key"] for d in data}
        time.sleep(0.05)
    assert seen == {"lead", "mate"}


def test_cli_updates_and_rotates_keys(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(auth=AUTH)
    url = f"sqlite:///{gw.ledger_path}"  # type: ignore[attr-defined]
    runner, none = CliRunner(), ["--ledger", url, "--config", str(tmp_path / "none.yaml")]
    old = make_key(gw, id="c", rpm=5, models=["mid"])
    updated = runner.invoke(build_app(), ["keys", "update", "c", "--rpm", "-1", "--models", "*", "--role",
                                          "team_admin", "--team", "ops", "--expires-at", "2099-01-01", *none])
    assert updated.exit_code == 0, updated.output
    record = json.loads(updated.output)
    assert record["rpm"] is None and record["models"] is None and record["role"] == "team_admin"
    assert record["expires_at"] == 4070908800.0
    rotated = runner.invoke(build_app(), ["keys", "rotate", "c", "--grace", "0", *none])
    assert rotated.exit_code == 0, rotated.output
    new = json.loads(rotated.output)["key"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and call(gw, old).status_code != 401:  # the gateway syncs every 50 ms
        time.sleep(0.05)
    assert call(gw, old).status_code == 401 and call(gw, new, "strong").status_code == 200
    missing = runner.invoke(build_app(), ["keys", "update", "nope", "--rpm", "1", *none])
    assert missing.exit_code != 0 and "no active virtual key 'nope'" in str(missing.output) + str(missing.exception)
