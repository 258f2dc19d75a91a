"""The dashboard's router panels end to end: realized cost/quality per knob value over the artifact's
offline curve, and serving vs candidate while a rollout runs in shadow then canary mode. A real gateway,
the stats API checked against SQL on its ledger file, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gwhelpers import base_config, ledger_rows
from test_dashboard import CHROMIUM, FLAGS, IMG, _chromium_ready

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.base import Router
from thalamus.router.baselines import BestSingleRouter
from thalamus.training.pareto import CURVE_FILE, offline_curve, read_curve, write_curve

ADMIN = {"Authorization": "Bearer admin-secret"}
N_PLAIN, N_LAMBDA, N_SHADOW, N_CANARY = 6, 4, 5, 40


def sql(path: Path, query: str, *args: Any) -> Any:
    with sqlite3.connect(path) as conn:
        return conn.execute(query, args).fetchall()


def _ask(http: httpx.Client, text: str, score: float | None, routing: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    if routing is not None:
        body["routing"] = routing
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if score is not None:
        http.post("/v1/feedback", json={"request_id": r.headers["x-thalamus-request-id"], "score": score}
                  ).raise_for_status()
    return r.headers["x-thalamus-model"]


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory, replay: ThreadedServer, artifact: Path,
           dataset: RoutingDataset) -> Iterator[tuple[ThreadedServer, Path, dict[str, Any], dict[str, Any]]]:
    """A gateway whose artifact has a curve, fed plain, other-knob, shadow and canary traffic."""
    from thalamus.gateway.app import create_app
    from thalamus.gateway.config import config_from_dict

    root = tmp_path_factory.mktemp("dashrouter")
    served = root / "served"
    shutil.copytree(artifact, served)
    curve = offline_curve(Router.load(served), dataset, "test")
    write_curve(served, curve)
    cheap = root / "weak-best"  # a candidate that always picks weak
    quality = np.zeros_like(dataset.quality)
    quality[:, dataset.models.index("weak")] = 1.0
    BestSingleRouter().fit(replace(dataset, quality=quality)).save(cheap)
    ledger = root / "ledger.sqlite"
    raw = base_config(replay.url, served, ledger, admin={"enabled": True, "key": "admin-secret"})
    with ThreadedServer(create_app(config_from_dict(raw))) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        text = dataset.texts[3]
        for i in range(N_PLAIN):
            _ask(http, text, (i % 3) / 2)
        for i in range(N_LAMBDA):
            _ask(http, text, 1.0 if i % 2 else None, {"lambda": 0.5})
        admin = lambda body: http.post("/admin/routers/best/candidate", json=body, headers=ADMIN)  # noqa: E731
        assert admin({"artifact": str(cheap), "mode": "shadow"}).status_code == 200
        for i in range(N_SHADOW):  # allowed [weak] twice: both artifacts pick weak, the shadow agrees
            assert _ask(http, text, None, {"allowed": ["weak"]} if i < 2 else None) == ("weak" if i < 2 else "strong")
        assert admin({"artifact": str(cheap), "mode": "canary", "share": 0.5}).status_code == 200
        for i in range(N_CANARY):
            _ask(http, text, 0.25 if i % 2 else 0.75)
        ledger_rows(ledger, N_PLAIN + N_LAMBDA + N_SHADOW + N_CANARY)
        yield server, ledger, curve, {"cheap": cheap}


def test_router_points_per_knob_equal_sql_and_carry_the_curve(rolled: Any) -> None:
    server, ledger, curve, _ = rolled
    (best,) = httpx.get(server.url + "/api/stats/routers").json()["data"]
    assert best["router"] == "best" and best["curve"]["frontier"] == curve["frontier"]
    assert best["curve"]["split"] == "test" and best["curve_note"] is None
    expected = sql(ledger, "SELECT json_extract(knob, '$.value'), count(*), avg(cost_usd) FROM requests "
                   "GROUP BY 1 ORDER BY 1")
    assert [(k["kind"], k["value"], k["requests"]) for k in best["knobs"]] == [
        ("lambda", v, n) for v, n, _ in expected] and len(expected) == 2
    for k, (_, _, cost) in zip(best["knobs"], expected, strict=True):
        assert k["mean_cost_usd"] == pytest.approx(cost)
        score, n_fb = sql(ledger, "SELECT avg(f.score), count(*) FROM feedback f JOIN requests r ON r.id = "
                          "f.request_id WHERE json_extract(r.knob, '$.value') = ?", k["value"])[0]
        assert k["feedback_n"] == n_fb and k["score_mean"] == pytest.approx(score)
    assert best["all"]["requests"] == N_PLAIN + N_LAMBDA + N_SHADOW + N_CANARY


def test_rollout_compare_equals_sql(rolled: Any) -> None:
    server, ledger, _, _ = rolled
    (best,) = httpx.get(server.url + "/api/stats/rollout").json()["data"]
    assert best["live"]["mode"] == "canary" and best["live"]["share"] == 0.5
    (shadow,) = best["shadow"]
    n, agree = sql(ledger, "SELECT count(*), sum(shadow_model = chosen_model) FROM requests "
                   "WHERE shadow_version IS NOT NULL")[0]
    assert shadow["requests"] == n == N_SHADOW and shadow["agree"] == agree == 2 and shadow["agreement"] == 2 / 5
    rows = sql(ledger, "SELECT candidates, chosen_model, shadow_model FROM requests WHERE shadow_version IS NOT NULL")
    picks = [(json.loads(c)[chosen], json.loads(c)[sh]) for c, chosen, sh in rows]
    assert shadow["serving_predicted_quality"] == pytest.approx(np.mean([a["quality"] for a, _ in picks]))
    assert shadow["candidate_predicted_cost"] == pytest.approx(np.mean([b["cost"] for _, b in picks]))
    for arm in ("canary", "serving"):
        (got,) = best["canary"][arm]
        count, cost, version = sql(ledger, "SELECT count(*), avg(cost_usd), max(artifact_version) FROM requests "
                                   "WHERE rollout = ? AND shadow_version IS NULL", arm)[0]
        score = sql(ledger, "SELECT avg(f.score) FROM feedback f JOIN requests r ON r.id = f.request_id "
                    "WHERE r.rollout = ? AND r.shadow_version IS NULL", arm)[0][0]
        assert got["requests"] == count >= 5 and got["version"] == version  # binomial(40, .5) >= 5: p > 0.9999
        assert got["mean_cost_usd"] == pytest.approx(cost) and got["score_mean"] == pytest.approx(score)
    assert best["canary"]["canary"][0]["version"] == best["live"]["version"]
    assert sum(a["requests"] for a in best["canary"].values() for a in a) == N_CANARY


@pytest.mark.skipif(not _chromium_ready() and os.environ.get("CI", "").lower() != "true",
                    reason="no /usr/bin/chromium (apt-get install -y chromium)")  # in CI a missing browser fails
def test_router_panels_in_chromium(rolled: Any) -> None:
    from playwright.sync_api import sync_playwright

    server, ledger, curve, _ = rolled
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
        page.goto(server.url + "/dashboard")
        page.wait_for_function("window.thalamusDashboard && window.thalamusDashboard.ready", timeout=30_000)
        traces = page.evaluate("document.getElementById('chart-router').data.map(t => [t.name, t.x.length])")
        assert traces == [["best: offline (test, synthetic)", len(curve["frontier"]["cost"])], ["best: realized", 2]]
        lines = page.eval_on_selector_all("#table-rollout tbody tr", "rs => rs.map(r => [r.dataset.kind, "
                                          "Number(r.dataset.n), r.dataset.agreement && Number(r.dataset.agreement)])")
        canary = sql(ledger, "SELECT count(*) FROM requests WHERE rollout = 'canary'")[0][0]
        agree = sql(ledger, "SELECT avg(shadow_model = chosen_model) FROM requests "
                    "WHERE shadow_model IS NOT NULL")[0][0]
        assert lines == [["shadow", N_SHADOW, pytest.approx(agree)], ["canary", canary, None],
                         ["serving", N_CANARY - canary, None]]
        assert page.is_visible("#rollout")
        page.locator("#chart-router").screenshot(path=str(IMG / "dashboard-router.png"))
        page.locator("#rollout").screenshot(path=str(IMG / "dashboard-rollout.png"))
        browser.close()
    assert problems == []


def test_curve_is_hidden_once_another_artifact_serves(rolled: Any) -> None:
    server, _, _, _ = rolled
    r = httpx.post(server.url + "/admin/routers/best/promote", headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    (best,) = httpx.get(server.url + "/api/stats/routers").json()["data"]
    assert best["curve"] is None and "is not the configured" in best["curve_note"]
    (state,) = httpx.get(server.url + "/api/stats/rollout").json()["data"]
    assert state["live"] is None and state["shadow"][0]["requests"] == N_SHADOW  # history stays


def test_damaged_curve_file_is_named(tmp_path: Path) -> None:
    (tmp_path / CURVE_FILE).write_text('{"format": 1, "frontier": {"cost": [1], "quality": [0.5, 0.6]}}')
    with pytest.raises(DataError, match=r"pareto\.json.*1 costs and 2 qualities"):
        read_curve(tmp_path)
    (tmp_path / CURVE_FILE).write_text("{")
    with pytest.raises(DataError, match=r"pareto\.json: not a router curve file"):
        read_curve(tmp_path)
    assert read_curve(tmp_path / "nowhere") is None
