"""Tenants kept apart on every read endpoint: the admin key reads everything, a team admin its team's keys,
any other key its own rows and spend. One gateway on loopback, filled by four keys of two teams through the
real SDK; every read endpoint x the three roles, over the rollup path (no time range) and the raw-row path
(a range that starts mid-hour)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gwhelpers import base_config

from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger

ADMIN = "sk-admin-roles"
AUTH = {"enabled": True, "admin_key": ADMIN, "sync_ms": 50,
        "keys": [{"id": "red-lead", "key": "sk-red-lead", "team": "red", "role": "team_admin"},
                 {"id": "loner", "key": "sk-loner"}]}
SENT = {"red-1": 3, "red-2": 2, "blue-1": 2, "loner": 1, "red-lead": 1}
TEAM = {"red-1", "red-2", "red-lead"}
STATS = ("overview", "keys", "models", "timeseries", "filters", "calibration", "routers", "rollout")


def h(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def tenants(replay: ThreadedServer, artifact: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[ThreadedServer, dict[str, str], dict[str, list[str]]]]:
    """A gateway with secrets per key id and the request ids each key made (routed, with feedback)."""
    ledger = tmp_path_factory.mktemp("roles") / "ledger.sqlite"
    config = config_from_dict(base_config(replay.url, artifact, ledger, auth=AUTH))
    with ThreadedServer(create_app(config)) as gw:
        secrets = {"red-lead": "sk-red-lead", "loner": "sk-loner"}
        for key_id, fields in (("red-1", {"team": "red"}), ("red-2", {"team": "red"}),
                               ("blue-1", {"team": "blue", "models": ["mid", "weak"]})):
            made = httpx.post(gw.url + "/admin/keys", headers=h(ADMIN), json={"id": key_id, **fields}, timeout=10)
            assert made.status_code == 200, made.text
            secrets[key_id] = made.json()["key"]
        ids: dict[str, list[str]] = {}
        for key_id, n in SENT.items():
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=secrets[key_id], max_retries=0, timeout=30)
            for i in range(n):
                r = sdk.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": f"Question {i}: what is {i} plus 1?"}])
                rid = r.headers["x-thalamus-request-id"]
                ids.setdefault(key_id, []).append(rid)
                fb = httpx.post(gw.url + "/v1/feedback", headers=h(secrets[key_id]),
                                json={"request_id": rid, "score": 0.5}, timeout=10)
                assert fb.status_code == 200, fb.text
        deadline = time.monotonic() + 15
        while Ledger(f"sqlite:///{ledger}").count() < sum(SENT.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        secrets["admin"] = ADMIN
        yield gw, secrets, ids


def visible(role: str) -> set[str]:
    return {"admin": set(SENT), "team_admin": TEAM, "key": {"red-1"}}[role]


CALLER = {"admin": "admin", "team_admin": "red-lead", "key": "red-1"}


def requests_of(payload: dict[str, Any], endpoint: str) -> int:
    """The request count an endpoint's answer reports, summed over its groups."""
    if endpoint == "overview":
        return int(payload["requests"])
    if endpoint == "timeseries":
        return sum(int(p["requests"]) for p in payload["points"])
    if endpoint in ("keys", "models"):
        return sum(int(r["requests"]) for r in payload["data"])
    if endpoint == "calibration":
        return sum(int(b["n"]) for b in payload["data"])  # one feedback entry per request here
    if endpoint == "routers":
        return sum(int(r["all"]["requests"]) for r in payload["data"] if r["all"])
    raise AssertionError(endpoint)


@pytest.mark.parametrize("ranged", [False, True], ids=["rollup", "raw"])
@pytest.mark.parametrize("role", ["admin", "team_admin", "key"])
def test_every_stats_endpoint_shows_a_role_only_its_rows(
        tenants: tuple[ThreadedServer, dict[str, str], dict[str, list[str]]], role: str, ranged: bool) -> None:
    gw, secrets, ids = tenants
    auth = h(secrets[CALLER[role]])
    expected = sum(SENT[k] for k in visible(role))
    params = {"since": time.time() - 1800.5, "until": time.time() + 60} if ranged else {}
    for endpoint in STATS:
        r = httpx.get(f"{gw.url}/api/stats/{endpoint}", headers=auth, params=params, timeout=30)
        assert r.status_code == 200, (endpoint, r.text)
        payload = r.json()
        if endpoint == "filters":
            assert set(payload["keys"]) == visible(role), endpoint
        elif endpoint == "rollout":
            assert payload["data"] == []  # no shadow or canary rows anywhere
        else:
            assert requests_of(payload, endpoint) == expected, (endpoint, role, payload)
        if endpoint == "keys":
            assert {row["key"] for row in payload["data"]} == visible(role)
    rows = httpx.get(gw.url + "/api/requests", headers=auth, params={**params, "limit": 500}, timeout=30).json()
    assert {row["id"] for row in rows["data"]} == {i for k in visible(role) for i in ids[k]}
    for key_id, made in ids.items():
        one = httpx.get(f"{gw.url}/api/requests/{made[0]}", headers=auth, timeout=30)
        assert one.status_code == (200 if key_id in visible(role) else 404), (key_id, role)
    spend = httpx.get(gw.url + "/api/spend", headers=auth, timeout=30).json()["data"]
    assert {d["key"]: d["requests"] for d in spend} == {k: SENT[k] for k in visible(role)}


@pytest.mark.parametrize("role", ["admin", "team_admin", "key"])
def test_a_key_filter_outside_the_role_is_refused(
        tenants: tuple[ThreadedServer, dict[str, str], dict[str, list[str]]], role: str) -> None:
    gw, secrets, _ = tenants
    auth = h(secrets[CALLER[role]])
    for path in [f"/api/stats/{e}" for e in STATS] + ["/api/requests", "/api/spend"]:
        for key_id in SENT:
            r = httpx.get(gw.url + path, headers=auth, params={"key": key_id}, timeout=30)
            if key_id in visible(role):
                assert r.status_code == 200, (path, key_id, r.text)
            else:
                assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_key", (path, key_id)


@pytest.mark.parametrize("role", ["admin", "team_admin", "key"])
def test_operator_wide_state_needs_the_admin_key(
        tenants: tuple[ThreadedServer, dict[str, str], dict[str, list[str]]], role: str) -> None:
    gw, secrets, _ = tenants
    for path in ("/metrics", "/api/judge", "/api/controller"):
        r = httpx.get(gw.url + path, headers=h(secrets[CALLER[role]]), timeout=30)
        assert r.status_code == (200 if role == "admin" else 403), (path, role)
        assert httpx.get(gw.url + path, timeout=30).status_code == 401
    if role == "admin":
        assert "thalamus_requests" in httpx.get(gw.url + "/metrics", headers=h(ADMIN), timeout=30).text


def test_models_list_what_a_key_may_call(tenants: tuple[ThreadedServer, dict[str, str], dict[str, list[str]]]
                                         ) -> None:
    gw, secrets, _ = tenants
    every = {m["id"] for m in httpx.get(gw.url + "/v1/models", headers=h(secrets["red-1"])).json()["data"]}
    assert {"strong", "mid", "weak", "router:best", "auto"} <= every
    scoped = httpx.get(gw.url + "/v1/models", headers=h(secrets["blue-1"])).json()["data"]
    assert {m["id"] for m in scoped} == {"mid", "weak", "router:best", "auto"}
    router = next(m for m in scoped if m["id"] == "router:best")
    assert set(router["models"]) == {"mid", "weak"}
    assert httpx.get(gw.url + "/v1/models/strong", headers=h(secrets["blue-1"])).status_code == 404


def test_a_key_scoped_to_an_alias_may_call_it(make_gateway: Any) -> None:
    """``thalamus keys create --routers auto``: the alias names its router in the scope check."""
    gw = make_gateway(auth=AUTH)
    for routers, model, status in ((["auto"], "auto", 200), (["auto"], "router:best", 200),
                                   (["router:best"], "auto", 200), (["best"], "auto", 200),
                                   (["other"], "auto", 403)):
        made = httpx.post(gw.url + "/admin/keys", headers=h(ADMIN), json={"routers": routers}, timeout=10).json()
        r = httpx.post(gw.url + "/v1/chat/completions", headers=h(made["key"]), timeout=30,
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == status, (routers, model, r.text)
    listed = httpx.get(gw.url + "/v1/models", headers=h(made["key"])).json()["data"]
    assert not any(m["owned_by"] == "thalamus:router" for m in listed)
