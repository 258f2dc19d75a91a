"""The dashboard end to end: a real gateway filled by the openai SDK, its stats API and /metrics against
SQL on the ledger file, and the page in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gwhelpers import GatewayFactory, ledger_rows
from prometheus_client.parser import text_string_to_metric_families

from thalamus.gateway.replay.threaded import ThreadedServer

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
# (model field, how many): routed, passthrough, one retried (flaky answers after one 503), one that fails
PLAN = [("auto", 14), ("weak", 6), ("mid", 4), ("flaky", 3), ("broken", 2)]


def send(url: str) -> list[tuple[str, int, str | None]]:
    """Every planned request through the openai SDK; feedback on every other answered one."""
    sent: list[tuple[str, int, str | None]] = []
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as client, \
            httpx.Client(base_url=url, timeout=30) as http:
        for model, n in PLAN:
            for i in range(n):
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model=model, messages=[{"role": "user", "content": f"Question {i}: what is {i} plus 1?"}])
                    rid = raw.headers["x-thalamus-request-id"]
                    sent.append((model, 200, rid))
                    if i % 2 == 0:
                        http.post("/v1/feedback", json={"request_id": rid, "score": (i % 4) / 3}).raise_for_status()
                except openai.APIStatusError as exc:
                    sent.append((model, exc.status_code, exc.response.headers.get("x-thalamus-request-id")))
    return sent


def sql(path: Path, query: str, *args: Any) -> Any:
    with sqlite3.connect(path) as conn:
        return conn.execute(query, args).fetchall()


@pytest.fixture(scope="module")
def filled_gateway(tmp_path_factory: pytest.TempPathFactory, replay: ThreadedServer, artifact: Path
                   ) -> Iterator[tuple[ThreadedServer, Path, list[tuple[str, int, str | None]]]]:
    from gwhelpers import base_config

    from thalamus.gateway.app import create_app
    from thalamus.gateway.config import config_from_dict

    ledger = tmp_path_factory.mktemp("dash") / "ledger.sqlite"
    raw = base_config(replay.url, artifact, ledger)
    for entry in raw["backends"]:  # the replay's fault counters are per model string and session-wide:
        if entry["name"] == "flaky":  # this module's flaky backend must not use up other modules' 503
            entry["model"] = "openai/mid-dashboard::503x1"
    with ThreadedServer(create_app(config_from_dict(raw))) as server:
        sent = send(server.url)
        ledger_rows(ledger, len(sent))
        yield server, ledger, sent


def test_stats_api_equals_sql_on_the_ledger(filled_gateway: tuple[ThreadedServer, Path, list[Any]]) -> None:
    server, ledger, sent = filled_gateway
    got = httpx.get(server.url + "/api/stats/overview").json()
    n, errors, spend, cf, fb = sql(ledger, "SELECT count(*), sum(status >= 400), sum(coalesce(cost_usd, 0)), sum("
                                   "coalesce(baseline_cost_usd, 0)), (SELECT count(*) FROM feedback) FROM requests")[0]
    assert got["requests"] == n == len(sent) and got["errors"] == errors == 2
    assert got["spend_usd"] == pytest.approx(spend) and got["counterfactual_spend_usd"] == pytest.approx(cf)
    assert got["feedback_n"] == fb == sum(math.ceil(k / 2) for m, k in PLAN if m != "broken")
    chains = sql(ledger, "SELECT count(*) FROM requests WHERE fallback_chain != '[]'")[0][0]
    assert got["fallbacks"] == chains >= 3  # flaky's first answer was retried; broken failed every attempt
    routed = httpx.get(server.url + "/api/stats/overview", params={"router": "best"}).json()
    assert routed["requests"] == 14 and routed["savings_usd"] == pytest.approx(
        sql(ledger, "SELECT sum(baseline_cost_usd - cost_usd) FROM requests WHERE router = 'best'")[0][0])
    rid = next(r for m, s, r in sent if m == "auto")
    one = httpx.get(f"{server.url}/api/requests/{rid}").json()
    assert sorted(one["candidates"]) == ["mid", "strong", "weak"] and one["baseline_model"] == "strong"
    assert httpx.get(server.url + "/api/requests/thl-none").status_code == 404
    bad = httpx.get(server.url + "/api/stats/timeseries", params={"bucket": "week"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket"
    assert httpx.get(server.url + "/api/stats/overview", params={"since": "yesterday"}).status_code == 400


def test_metrics_count_the_requests_sent(filled_gateway: tuple[ThreadedServer, Path, list[Any]]) -> None:
    server, ledger, sent = filled_gateway
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    reqs = [s for s in families["thalamus_requests"].samples if s.name == "thalamus_requests_total"]
    assert sum(s.value for s in reqs) == len(sent)
    by = {(s.labels["model"], s.labels["router"], s.labels["status"]): s.value for s in reqs}
    assert by[("weak", "none", "200")] == 6 and sum(v for k, v in by.items() if k[2] == "502") == 2
    assert sum(v for k, v in by.items() if k[1] == "best") == 14
    cost = sum(s.value for s in families["thalamus_cost_usd"].samples if s.name == "thalamus_cost_usd_total")
    assert cost == pytest.approx(sql(ledger, "SELECT sum(cost_usd) FROM requests")[0][0])
    tokens = {s.labels["kind"]: 0.0 for s in families["thalamus_tokens"].samples}
    for s in families["thalamus_tokens"].samples:
        if s.name == "thalamus_tokens_total":
            tokens[s.labels["kind"]] += s.value
    assert tokens["prompt"] == sql(ledger, "SELECT sum(prompt_tokens) FROM requests")[0][0]
    latency = [s for s in families["thalamus_request_latency_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in latency) == len(sent)
    routing = [s for s in families["thalamus_routing_latency_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in routing) == 14
    assert families["thalamus_ledger_queue_depth"].samples[0].value == 0
    chains = sql(ledger, "SELECT count(*) FROM requests WHERE fallback_chain != '[]'")[0][0]
    assert sum(s.value for s in families["thalamus_fallbacks"].samples if s.name.endswith("_total")) == chains


def test_stats_and_metrics_need_a_key_when_auth_is_on(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth={"enabled": True, "keys": [{"id": "team-a", "key": "sk-a"}], "admin_key": "sk-adm"})
    for path in ("/api/stats/overview", "/api/stats/timeseries", "/api/requests", "/metrics"):
        assert httpx.get(gw.url + path).status_code == 401, path
        ok = httpx.get(gw.url + path, headers={"authorization": "Bearer sk-adm"})
        assert ok.status_code == 200, path
        own = httpx.get(gw.url + path, headers={"authorization": "Bearer sk-a"})  # its own rows; /metrics: 403
        assert own.status_code == (403 if path == "/metrics" else 200), path
    page = httpx.get(gw.url + "/dashboard")  # the page holds no data; its script asks for a key
    assert page.status_code == 200 and 'id="f-apikey"' in page.text


def _chromium_ready() -> bool:
    return os.path.exists(CHROMIUM)


@pytest.mark.skipif(not _chromium_ready() and os.environ.get("CI", "").lower() != "true",
                    reason="no /usr/bin/chromium (apt-get install -y chromium)")
def test_dashboard_page_in_chromium(filled_gateway: tuple[ThreadedServer, Path, list[Any]]) -> None:
    from playwright.sync_api import sync_playwright

    server, ledger, sent = filled_gateway
    IMG.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
        page.goto(server.url + "/dashboard")
        page.wait_for_function("window.thalamusDashboard && window.thalamusDashboard.ready", timeout=30_000)
        check_page(page, ledger, sent)
        page.screenshot(path=str(IMG / "dashboard.png"), full_page=True)
        check_filter_and_drilldown(page, ledger)
        page.locator("#drilldown").screenshot(path=str(IMG / "dashboard-drilldown.png"))
        browser.close()
    assert problems == []


def check_page(page: Any, ledger: Path, sent: list[Any]) -> None:
    n, spend, cf = sql(ledger, "SELECT count(*), sum(coalesce(cost_usd, 0)), sum(coalesce(baseline_cost_usd, 0)) "
                       "FROM requests")[0]
    score = sql(ledger, "SELECT avg(score) FROM feedback")[0][0]
    card = lambda name: page.get_attribute(f"#card-{name}", "data-value")  # noqa: E731
    assert int(card("requests")) == n == len(sent)
    assert float(card("spend")) == pytest.approx(spend) and float(card("savings")) == pytest.approx(cf - spend)
    assert float(card("quality")) == pytest.approx(score)
    conversations = sql(ledger, "SELECT count(*) FROM requests WHERE affinity = 'new'")[0][0]
    assert conversations == 14  # every routed request starts a conversation; none continues one: no rate yet
    assert card("switch") == "" and f"{conversations} conversations" in page.text_content("#card-switch-sub")
    points = page.evaluate("window.thalamusDashboard.data.series.points.length")
    # the default range fits the data (issue 22): fresh rows -> from their first minute, in minute buckets
    first = sql(ledger, "SELECT min(created_at) FROM requests")[0][0]
    start = page.evaluate("window.thalamusDashboard.data.series.points[0].t")
    assert page.get_attribute("#f-range", "data-fitted") == "fit:minute" and start <= first < start + 60
    assert 1 <= points <= 10
    traces = lambda chart: page.evaluate(  # noqa: E731
        f"document.getElementById('{chart}').data.map(t => [t.name, t.x.length])")
    assert traces("chart-spend") == [["spend", points], ["counterfactual (baseline)", points]]
    models = sorted(m for (m,) in sql(ledger, "SELECT DISTINCT chosen_model FROM requests"))
    assert sorted(name for name, _ in traces("chart-models")) == models
    assert all(k == points for _, k in traces("chart-models"))
    stacked = page.evaluate("document.getElementById('chart-models').data.flatMap(t => t.y).reduce((a, b) => a + b)")
    assert stacked == n  # every request is in exactly one bar segment
    scored = sorted(m for (m,) in sql(ledger, "SELECT DISTINCT chosen_model FROM requests r JOIN feedback f "
                                          "ON f.request_id = r.id"))
    assert sorted(name for name, _ in traces("chart-quality")) == [f"{m} (client)" for m in scored]
    assert [name for name, _ in traces("chart-latency")] == ["total p50", "total p90", "total p99", "ttft p50"]
    assert [name for name, _ in traces("chart-rates")] == ["error rate", "fallback rate"]
    bins = sql(ledger, "SELECT count(DISTINCT CAST(predicted_quality * 10 AS INTEGER)) FROM requests r "
               "JOIN feedback f ON f.request_id = r.id WHERE predicted_quality IS NOT NULL")[0][0]
    assert traces("chart-calibration")[0][1] == bins >= 1
    assert page.locator("#table-models tbody tr").count() == len(models)
    assert page.locator("#table-requests tbody tr").count() == min(50, n)


def check_filter_and_drilldown(page: Any, ledger: Path) -> None:
    loads = page.evaluate("window.thalamusDashboard.loads")
    page.select_option("#f-model", "weak")
    page.wait_for_function(f"window.thalamusDashboard.loads > {loads}", timeout=30_000)
    n_weak, spend_weak = sql(ledger, "SELECT count(*), sum(coalesce(cost_usd, 0)) FROM requests "
                             "WHERE chosen_model = 'weak'")[0]
    assert int(page.get_attribute("#card-requests", "data-value")) == n_weak
    assert float(page.get_attribute("#card-spend", "data-value")) == pytest.approx(spend_weak)
    page.select_option("#f-model", "")
    page.wait_for_function(f"window.thalamusDashboard.loads > {loads + 1}", timeout=30_000)
    rid, candidates = sql(ledger, "SELECT id, candidates FROM requests WHERE router = 'best' "
                          "ORDER BY created_at DESC LIMIT 1")[0]
    page.click(f'#table-requests tr[data-id="{rid}"]')
    page.wait_for_selector("#table-candidates tbody tr")
    shown = page.eval_on_selector_all("#table-candidates tbody tr", "rs => rs.map(r => r.dataset.model)")
    import json

    assert sorted(shown) == sorted(json.loads(candidates)) and len(shown) == 3
    assert rid in page.inner_text("#drilldown")
    assert math.isfinite(float(page.get_attribute("#card-requests", "data-value")))


def test_standalone_dashboard_serves_a_ledger_read_only(filled_gateway: tuple[ThreadedServer, Path, list[Any]],
                                                        tmp_path: Path) -> None:
    from thalamus.errors import ConfigError
    from thalamus.gateway.http.dashboard import ReadOnlyLedger, create_dashboard_app

    server, ledger, _ = filled_gateway
    before = sql(ledger, "SELECT count(*), max(version) FROM requests, schema_version")[0]
    with ThreadedServer(create_dashboard_app(f"sqlite:///{ledger}")) as dash:
        assert httpx.get(dash.url + "/api/stats/overview").json() == httpx.get(
            server.url + "/api/stats/overview").json() | {"filters": httpx.get(dash.url + "/api/stats/overview")
                                                          .json()["filters"]}
        assert httpx.get(dash.url + "/dashboard").status_code == 200
        assert httpx.get(dash.url + "/dashboard/static/plotly.min.js").content.startswith(b"/**")
        assert httpx.get(dash.url + "/v1/models").status_code == 404  # not a gateway
    assert sql(ledger, "SELECT count(*), max(version) FROM requests, schema_version")[0] == before
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(ConfigError, match="schema version 0"):
        ReadOnlyLedger(f"sqlite:///{empty}")


@pytest.mark.skipif(not _chromium_ready() and os.environ.get("CI", "").lower() != "true",
                    reason="no /usr/bin/chromium (apt-get install -y chromium)")
def test_snapshot_is_self_contained(filled_gateway: tuple[ThreadedServer, Path, list[Any]], tmp_path: Path) -> None:
    import sqlalchemy as sa
    from playwright.sync_api import sync_playwright

    from thalamus.gateway.http.dashboard import write_snapshot

    _, ledger, sent = filled_gateway
    engine = sa.create_engine(f"sqlite:///{ledger}")
    out = write_snapshot(engine, tmp_path / "snap.html")
    engine.dispose()
    html = out.read_text()
    assert "<script src=" not in html and 'rel="stylesheet"' not in html  # everything inlined
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: problems.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(out.as_uri())
        page.wait_for_function("window.thalamusDashboard && window.thalamusDashboard.ready", timeout=30_000)
        assert int(page.get_attribute("#card-requests", "data-value")) == len(sent)
        rid = sql(ledger, "SELECT id FROM requests WHERE router = 'best' LIMIT 1")[0][0]
        page.click(f'#table-requests tr[data-id="{rid}"]')
        assert page.locator("#table-candidates tbody tr").count() == 3
        browser.close()
    assert problems == []  # no network at all


WORKER = """
import sys, time
from thalamus.ledger.row import LedgerRow
from thalamus.gateway.stats.metrics import GatewayMetrics
m = GatewayMetrics()
for i in range(int(sys.argv[1])):
    m.observe(LedgerRow(id=str(i), created_at=time.time(), chosen_model="weak", router="best", status=200,
                        cost_usd=0.25, total_ms=12.0, upstream_ms=10.0, prompt_tokens=3, completion_tokens=1))
"""


def test_metrics_sum_over_worker_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (7, 5):
        subprocess.run([sys.executable, "-c", WORKER, str(n)], env=env, check=True, timeout=120)
    scrape = subprocess.run([sys.executable, "-c", "from thalamus.gateway.stats.metrics import GatewayMetrics; "
                             "import sys; sys.stdout.write(GatewayMetrics().scrape().decode())"],
                            env=env, check=True, timeout=120, capture_output=True, text=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(scrape) for s in f.samples}
    assert samples[("thalamus_requests_total", (("model", "weak"), ("router", "best"), ("status", "200")))] == 12
    assert samples[("thalamus_cost_usd_total", (("model", "weak"), ("router", "best")))] == pytest.approx(3.0)
    assert samples[("thalamus_gateway_overhead_seconds_count", (("model", "weak"),))] == 12
    assert samples[("thalamus_gateway_overhead_seconds_sum", (("model", "weak"),))] == pytest.approx(12 * 0.002)


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    import json
    import re

    from thalamus.gateway.learning.judge import JudgeMetrics
    from thalamus.gateway.stats.metrics import GatewayMetrics
    from thalamus.ledger.row import LedgerRow

    m = GatewayMetrics()
    m.observe(LedgerRow(id="x", created_at=0, chosen_model="weak", router="r", status=200, cost_usd=0.1,
                        baseline_cost_usd=0.2, routing_ms=1, ttft_ms=2, total_ms=3, upstream_ms=1,
                        prompt_tokens=1, completion_tokens=1, fallback_chain=[{"model": "a", "error": "e"}]))
    m.observe_feedback("weak", 0.5, "judge:strong")  # the quality panels' histogram
    judge = JudgeMetrics(m.registry)  # the judge's families live in the same registry (app.py)
    judge.total.labels("strong", "scored").inc()
    judge.cost.labels("strong").inc(0.01)
    judge.tokens.labels("strong", "prompt").inc(10)
    exported = {s.name for f in text_string_to_metric_families(m.scrape().decode()) for s in f.samples}
    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "thalamus-gateway.json"
    panels = json.loads(path.read_text())["panels"]
    titles = " ".join(p["title"] for p in panels)
    assert "feedback score" in titles and "key" in titles and "Judge" in titles  # quality, keys, the judge
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"thalamus_[a-z_]+", e)}
    assert used and used <= exported, used - exported
