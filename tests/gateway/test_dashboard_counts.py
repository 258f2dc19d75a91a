"""The dashboard counts right (issue 22): each defect is injected through the real gateway and checked in the
stats API, /metrics and the page in headless Chromium at 1280 and 1920 px.

Injected: client 400s from an upstream (no fallback), a retried 503 and a backend that always answers 503
(fallbacks; error classes from the status), refused requests (no model chosen), client and judge feedback on
the same requests (counted apart), fresh data (the default range fits it), 50+ rows (the drill-down opens in
view), and tables at two page widths (no column runs past its box)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gwhelpers import base_config, ledger_rows
from prometheus_client.parser import text_string_to_metric_families

from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
# (model field, how many, expected status)
PLAN = [("weak", 40, 200), ("auto", 6, 200), ("rejecting", 3, 400), ("flaky", 1, 200), ("broken", 2, 502),
        ("no-such-model", 2, 404)]
N = sum(n for _, n, _ in PLAN)


def sql(path: Path, query: str) -> Any:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture(scope="module")
def counted(replay: ThreadedServer, artifact: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[ThreadedServer, Path, dict[str, list[str]]]]:
    ledger = tmp_path_factory.mktemp("counts") / "ledger.sqlite"
    raw = base_config(replay.url, artifact, ledger)
    for entry in raw["backends"]:  # the replay's fault counters are per model string and session-wide
        if entry["name"] == "flaky":
            entry["model"] = "openai/mid-counts::503x1"
    ids: dict[str, list[str]] = {}
    with ThreadedServer(create_app(config_from_dict(raw))) as server, httpx.Client(base_url=server.url,
                                                                                    timeout=30) as http:
        for model, n, status in PLAN:
            for i in range(n):
                r = http.post("/v1/chat/completions", json={"model": model, "messages": [
                    {"role": "user", "content": f"Question {i}: what is {i} plus 2?"}]})
                assert r.status_code == status, (model, r.text)
                ids.setdefault(model, []).append(r.headers["x-thalamus-request-id"])
        for rid in ids["auto"]:  # the client scores every routed answer; the judge scores them too
            for source, score in (("app", 1.0), ("judge:strong", 0.5)):
                http.post("/v1/feedback", json={"request_id": rid, "score": score, "source": source}
                          ).raise_for_status()
        ledger_rows(ledger, N)
        yield server, ledger, ids


def test_client_400s_are_not_fallbacks(counted: tuple[ThreadedServer, Path, dict[str, list[str]]]) -> None:
    server, ledger, ids = counted
    chains = dict(sql(ledger, "SELECT id, fallback_chain FROM requests"))
    assert all(chains[rid] == "[]" for rid in ids["rejecting"])  # the upstream's 400 went back as it was
    overview = httpx.get(server.url + "/api/stats/overview").json()
    assert overview["requests"] == N and overview["fallbacks"] == 3  # flaky retried once; broken retried, failed
    assert overview["fallback_rate"] == pytest.approx(3 / N)
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert sum(s.value for s in families["thalamus_fallbacks"].samples if s.name.endswith("_total")) == 3
    failures = {s.labels["model"]: s.value for s in families["thalamus_upstream_failures"].samples
                if s.name.endswith("_total")}
    assert failures == {"flaky": 1, "broken": 4}  # two tries of each broken request; a client 400 is none


def test_error_classes_come_from_the_status(counted: tuple[ThreadedServer, Path, dict[str, list[str]]]) -> None:
    server, _, ids = counted
    errors = httpx.get(server.url + "/api/stats/breakdown").json()["errors"]
    by_status = {e["status"]: e for e in errors}
    # the code is the upstream's (litellm names its exception class; issue 22b passes the upstream's code)
    assert (by_status[400]["class"], by_status[400]["requests"], by_status[400]["refused"]) == ("bad_request", 3, 0)
    assert by_status[502]["class"] == "bad_gateway" and by_status[502]["requests"] == 2
    assert by_status[404] == {"status": 404, "class": "not_found", "code": "model_not_found", "requests": 2,
                              "refused": 2}
    one = httpx.get(f"{server.url}/api/requests/{ids['broken'][0]}").json()
    assert [(c["status"], c["class"]) for c in one["fallback_chain"]] == [(503, "service_unavailable")] * 2


def test_refused_requests_are_labelled(counted: tuple[ThreadedServer, Path, dict[str, list[str]]]) -> None:
    server, _, _ = counted
    models = httpx.get(server.url + "/api/stats/models").json()["data"]
    refused = [m for m in models if m["model"] is None]
    assert [(m["label"], m["requests"]) for m in refused] == [("(refused: no model chosen)", 2)]
    assert all(m["label"] for m in models)


def test_feedback_is_counted_per_source(counted: tuple[ThreadedServer, Path, dict[str, list[str]]]) -> None:
    server, ledger, _ = counted
    fb = httpx.get(server.url + "/api/stats/breakdown").json()["feedback"]
    assert fb["client"] == {"feedback_n": 6, "requests_scored": 6, "score_mean": 1.0, "score_se": 0.0}
    assert fb["judge"]["feedback_n"] == 6 and fb["judge"]["score_mean"] == pytest.approx(0.5)
    assert sql(ledger, "SELECT count(*) FROM feedback")[0][0] == 12  # summed, they would read as 12 of 6
    series = httpx.get(server.url + "/api/stats/breakdown", params={"bucket": "hour"}).json()["feedback_series"]
    assert {(r["model"], r["source"]): r["feedback_n"] for r in series} == {("strong", "client"): 6,
                                                                            ("strong", "judge"): 6}
    assert httpx.get(server.url + "/api/stats/breakdown", params={"bucket": "week"}).status_code == 400
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    counts = {s.labels["source"]: s.value for s in families["thalamus_feedback_score"].samples
              if s.name.endswith("_count")}
    assert counts == {"client": 6, "judge": 6}


def _chromium() -> bool:
    return os.path.exists(CHROMIUM)


@pytest.mark.skipif(not _chromium() and os.environ.get("CI", "").lower() != "true",
                    reason="no /usr/bin/chromium (apt-get install -y chromium)")
@pytest.mark.parametrize("width", [1280, 1920])
def test_page_counts_and_layout_in_chromium(counted: tuple[ThreadedServer, Path, dict[str, list[str]]],
                                            width: int) -> None:
    from playwright.sync_api import sync_playwright

    server, ledger, ids = counted
    IMG.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
        page.goto(server.url + "/dashboard")
        page.wait_for_function("window.thalamusDashboard && window.thalamusDashboard.ready", timeout=30_000)
        check_counts(page, ledger)
        check_layout(page, width)
        page.screenshot(path=str(IMG / f"dashboard-{width}.png"), full_page=True)
        check_drilldown_in_view(page, ids["broken"][0])
        browser.close()
    assert problems == []


def check_counts(page: Any, ledger: Path) -> None:
    # fresh data: from its first minute in minute buckets (the 24 h default drew one spike at the right edge)
    assert page.get_attribute("#f-range", "data-fitted") == "fit:minute"
    series = page.evaluate("window.thalamusDashboard.data.series")
    first = sql(ledger, "SELECT min(created_at) FROM requests")[0][0]
    assert series["bucket"] == "minute" and series["points"][0]["t"] <= first < series["points"][0]["t"] + 60
    assert len(series["points"]) <= 5 and sum(p["requests"] for p in series["points"]) == N
    labels = page.eval_on_selector_all("#table-models tbody tr td:first-child", "cs => cs.map(c => c.textContent)")
    assert "(refused: no model chosen)" in labels and "" not in labels
    strong = page.locator('#table-models tr[data-model="strong"] td')
    assert [strong.nth(i).inner_text() for i in (6, 7, 8, 9)] == ["6", "1.000", "6", "0.500"]  # not 12 of 6
    assert page.get_attribute("#card-quality", "data-value") == "1"  # the client's score, not a blend
    quality = page.evaluate("document.getElementById('chart-quality').data"
                            ".map(t => [t.name, t.y.filter(v => v != null)])")
    assert quality == [["strong (client)", [1]], ["strong (judge)", [0.5]]]  # two lines, not one blend of 0.75
    sub = page.locator("#card-quality-sub")
    assert (sub.get_attribute("data-client"), sub.get_attribute("data-judge")) == ("6", "6")
    assert "client 1.000 on 6 req" in sub.inner_text() and "judge 0.500 on 6 req" in sub.inner_text()
    assert f"fallbacks {100 * 3 / N:.1f}%" in page.inner_text("#card-requests-sub")
    classes = page.eval_on_selector_all("#table-errors tbody tr", "rs => rs.map(r => r.dataset.class)")
    assert sorted(classes) == ["bad_gateway", "bad_request", "not_found"]
    assert page.locator("#table-requests tbody tr").count() == 50
    # auth off: everyone is the admin, so the view across teams shows, every request in "(no team)"
    page.wait_for_selector("#teams:not([hidden])")
    teams = page.eval_on_selector_all("#table-teams tbody tr",
                                      "rs => rs.map(r => [r.dataset.team, r.dataset.requests])")
    assert teams == [["(no team)", str(N)]]


def check_layout(page: Any, width: int) -> None:
    """No page-wide horizontal scroll, and every table fits the box it sits in (nothing clipped)."""
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    overflow = page.evaluate("""() => [...document.querySelectorAll('.scroll')].filter(b => b.offsetParent)
        .map(b => [b.querySelector('table').id, b.scrollWidth - b.clientWidth])""")
    assert overflow and all(extra <= 0 for _, extra in overflow), overflow
    for chart in page.eval_on_selector_all(".chart", "cs => cs.map(c => c.getBoundingClientRect().right)"):
        assert chart <= width


def check_drilldown_in_view(page: Any, broken: str) -> None:
    """The drill-down of a row far down a 50-row table opens where the reader is, above the table; a failed
    attempt shows the class of its status."""
    row = page.locator("#table-requests tbody tr").nth(44)
    rid = row.get_attribute("data-id")
    row.scroll_into_view_if_needed()
    row.click()
    page.wait_for_function(f"document.getElementById('drilldown').innerText.includes('{rid}')")
    box = page.evaluate("""() => { const r = document.getElementById('drilldown').getBoundingClientRect();
        const t = document.getElementById('table-requests').getBoundingClientRect();
        const before = document.getElementById('drilldown').compareDocumentPosition(
            document.getElementById('table-requests')) & Node.DOCUMENT_POSITION_FOLLOWING;
        return {top: r.top, bottom: r.bottom, height: innerHeight, before: before > 0, tableTop: t.top}; }""")
    assert 0 <= box["top"] < box["height"] and box["bottom"] <= box["height"] + 1, box
    assert box["before"] and box["tableTop"] < 0  # above the table (sticky), the table scrolled far down
    page.click(f'#table-requests tr[data-id="{broken}"]')
    page.wait_for_function(f"document.getElementById('drilldown').innerText.includes('{broken}')")
    assert page.inner_text("#drilldown").count("503 service_unavailable") == 2


ADMIN = "sk-admin-teams"
TEAM_AUTH = {"enabled": True, "admin_key": ADMIN, "sync_ms": 50,
             "keys": [{"id": "red-1", "key": "sk-red-1", "team": "red"}, {"id": "plain", "key": "sk-plain"},
                      {"id": "red-lead", "key": "sk-red-lead", "team": "red", "role": "team_admin"}]}
TEAM_SENT = {"red-1": 3, "blue-1": 2, "plain": 1}  # blue-1: a virtual key of team blue


@pytest.fixture(scope="module")
def two_teams(replay: ThreadedServer, artifact: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[ThreadedServer, dict[str, str]]]:
    """A gateway with auth: red (a static key), blue (a virtual key), a plain key without a team."""
    ledger = tmp_path_factory.mktemp("teams") / "ledger.sqlite"
    config = config_from_dict(base_config(replay.url, artifact, ledger, auth=TEAM_AUTH))
    secrets = {"red-1": "sk-red-1", "plain": "sk-plain", "red-lead": "sk-red-lead", "admin": ADMIN}
    with ThreadedServer(create_app(config)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        made = http.post("/admin/keys", headers={"authorization": f"Bearer {ADMIN}"},
                         json={"id": "blue-1", "team": "blue"})
        assert made.status_code == 200, made.text
        secrets["blue-1"] = made.json()["key"]
        for key_id, n in TEAM_SENT.items():
            for i in range(n):
                r = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {secrets[key_id]}"},
                              json={"model": "weak", "messages": [{"role": "user", "content": f"Team {i}?"}]})
                assert r.status_code == 200, r.text
                if i == 0 and key_id != "plain":  # a client's score for red, the judge's for blue
                    source, score = ("app", 0.8) if key_id == "red-1" else ("judge:strong", 0.4)
                    http.post("/v1/feedback", headers={"authorization": f"Bearer {secrets[key_id]}"},
                              json={"request_id": r.headers["x-thalamus-request-id"], "score": score,
                                    "source": source}).raise_for_status()
        ledger_rows(ledger, sum(TEAM_SENT.values()))
        yield server, secrets


def test_teams_api_is_admin_only(two_teams: tuple[ThreadedServer, dict[str, str]]) -> None:
    server, secrets = two_teams
    got = httpx.get(server.url + "/api/stats/teams", headers={"authorization": f"Bearer {ADMIN}"})
    assert got.status_code == 200
    rows = {t["label"]: t for t in got.json()["data"]}
    assert {k: (t["requests"], t["keys"]) for k, t in rows.items()} == {"red": (3, 1), "blue": (2, 1),
                                                                         "(no team)": (1, 1)}
    assert all(t["spend_usd"] > 0 and t["tokens"] > 0 and t["errors"] == 0 for t in rows.values())
    assert (rows["red"]["score_mean"], rows["red"]["score_source"]) == (0.8, "client")
    assert (rows["blue"]["score_mean"], rows["blue"]["score_source"]) == (0.4, "judge")
    for who in ("plain", "red-lead", "blue-1"):  # a key, a team admin, a virtual key: operator-wide data
        r = httpx.get(server.url + "/api/stats/teams", headers={"authorization": f"Bearer {secrets[who]}"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "admin_only"), who
    assert httpx.get(server.url + "/api/stats/teams").status_code == 401


def _open_as(browser: Any, url: str, secret: str, width: int) -> tuple[Any, list[str]]:
    """The dashboard with ``secret`` in the page's key field (as a reader who typed it), loaded."""
    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status}: {r.url.split('?')[0]}") if r.status >= 400 else None)
    page.add_init_script(f"sessionStorage.setItem('thalamus-key', {secret!r})")
    page.goto(url + "/dashboard")
    page.wait_for_function("window.thalamusDashboard && window.thalamusDashboard.ready", timeout=30_000)
    return page, problems


@pytest.mark.skipif(not _chromium() and os.environ.get("CI", "").lower() != "true",
                    reason="no /usr/bin/chromium (apt-get install -y chromium)")
def test_admin_view_across_teams_in_chromium(two_teams: tuple[ThreadedServer, dict[str, str]]) -> None:
    from playwright.sync_api import sync_playwright

    server, secrets = two_teams
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page, problems = _open_as(browser, server.url, ADMIN, 1280)
        page.wait_for_selector("#teams:not([hidden])", timeout=10_000)
        rows = page.eval_on_selector_all("#table-teams tbody tr", "rs => rs.map(r => [r.dataset.team, "
                                         "r.dataset.requests, r.cells[1].textContent])")
        assert sorted(rows) == [["(no team)", "1", "1"], ["blue", "2", "1"], ["red", "3", "1"]]
        scores = page.eval_on_selector_all("#table-teams tbody tr", "rs => rs.map(r => r.cells[8].textContent)")
        assert sorted(scores) == ["0.400 judge", "0.800 client", "–"]
        check_layout(page, 1280)
        page.screenshot(path=str(IMG / "dashboard-teams.png"), full_page=True)
        assert problems == []
        page.close()
        # a plain key reads its own rows; the page asks once, gets 403 and keeps the section hidden
        page, problems = _open_as(browser, server.url, secrets["plain"], 1280)
        page.wait_for_function("window.thalamusDashboard.teamsRefused === 'sk-plain'", timeout=10_000)
        assert page.locator("#teams").is_hidden()
        assert page.locator("#table-teams tbody tr").count() == 0
        assert page.inner_text("#card-requests") == "1"
        assert problems == [f"403: {server.url}/api/stats/teams"]
        browser.close()
