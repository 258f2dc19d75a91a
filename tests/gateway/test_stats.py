"""The stats API's numbers, on SQLite and PostgreSQL, against a hand computation over rows we insert."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pgserver import db_url, pg_admin_url, pg_url  # noqa: F401  (PostgreSQL fixtures)

from thalamus.gateway.core.counterfactual import annotate, baseline_for
from thalamus.gateway.stats import aggregates as stats
from thalamus.gateway.stats import rows as stats_rows
from thalamus.gateway.stats.sql import LATENCY_BOUNDS_MS, Filters, bucket_edges
from thalamus.ledger import Ledger
from thalamus.ledger.row import LedgerRow

T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600)  # an hour boundary
MODELS = {"strong": 0.02, "mid": 0.004, "weak": 0.0005}  # expected cost per request


def make_rows(n: int = 400, seed: int = 3) -> list[LedgerRow]:
    """Rows over 5 hours: two routers and passthrough, three keys, errors, fallbacks, latencies."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        router = ["best", "cheap", None][i % 3]
        model = str(rng.choice(list(MODELS)))
        status = int(rng.choice([200] * 8 + [502, 400]))
        row = LedgerRow(id=f"r{i:04d}", created_at=T0 + float(rng.uniform(0, 5 * 3600)), api_key_id=f"k{i % 3}",
                        requested_model="auto" if router else model, router=router, chosen_model=model,
                        status=status, routing_ms=float(rng.uniform(0.2, 3)) if router else None,
                        ttft_ms=float(rng.lognormal(4, 1)), total_ms=float(rng.lognormal(5, 1)))
        if router:
            row.candidates = {m: {"quality": float(rng.uniform()), "cost": c} for m, c in MODELS.items()}
            row.probability = float(rng.uniform(0.5, 1))
        if status == 200:
            row.prompt_tokens, row.completion_tokens = int(rng.integers(5, 500)), int(rng.integers(1, 300))
            row.cost_usd = MODELS[model] * float(rng.uniform(0.5, 1.5))
        if rng.uniform() < 0.2:
            row.fallback_chain = [{"model": "broken", "attempt": 1, "status": 503, "error": "upstream_unavailable"}]
        annotate(row, "strong" if router == "best" else None)
        rows.append(row)
    return rows


@pytest.fixture
def filled(db_url: str) -> Iterator[tuple[Ledger, list[LedgerRow], list[tuple[str, float]]]]:  # noqa: F811
    ledger = Ledger(db_url)
    rows = make_rows()
    ledger.insert_rows(rows)
    rng = np.random.default_rng(7)
    scored = []
    for row in rows[::4]:
        for _ in range(1 + int(rng.integers(0, 2))):
            score = float(rng.choice([0.0, 0.5, 1.0]))
            ledger.add_feedback(row.id, score, None, "test", None)
            scored.append((row.id, score))
    yield ledger, rows, scored
    ledger.close()


def truth(rows: list[LedgerRow], scored: list[tuple[str, float]], keep: Any = lambda r: True) -> dict[str, Any]:
    mine = [r for r in rows if keep(r)]
    ids = {r.id for r in mine}
    scores = [s for rid, s in scored if rid in ids]
    spend = sum(r.cost_usd or 0.0 for r in mine)
    cf = sum(r.baseline_cost_usd or 0.0 for r in mine)
    return {"requests": len(mine), "errors": sum(r.status >= 400 for r in mine),
            "fallbacks": sum(bool(r.fallback_chain) for r in mine),
            "prompt_tokens": sum(r.prompt_tokens or 0 for r in mine),
            "completion_tokens": sum(r.completion_tokens or 0 for r in mine), "spend_usd": spend,
            "counterfactual_spend_usd": cf, "savings_usd": cf - spend, "feedback_n": len(scores),
            "score_mean": float(np.mean(scores)) if scores else None}


def check(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key, value in want.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_overview_matches_hand_computation(filled: tuple[Ledger, list[LedgerRow], list[tuple[str, float]]]) -> None:
    ledger, rows, scored = filled
    got = stats.overview(ledger.engine, Filters())
    want = truth(rows, scored)
    check(got, want)
    assert want["savings_usd"] > 0 and want["errors"] > 0 and want["fallbacks"] > 0  # the data exercises them
    for name in ("ttft_ms", "total_ms", "routing_ms"):
        values = np.array([getattr(r, name) for r in rows if getattr(r, name) is not None])
        for q in (50, 90, 99):
            lo, hi = bucket_edges(float(np.quantile(values, q / 100)))
            assert lo <= got["latency_ms"][name.removesuffix("_ms")][f"p{q}"] <= hi, (name, q)


@pytest.mark.parametrize("field, value", [("router", "best"), ("key", "k1"), ("model", "mid"), ("router", "none")])
def test_each_filter_restricts_every_number(filled: tuple[Ledger, list[LedgerRow], list[tuple[str, float]]],
                                           field: str, value: str) -> None:
    ledger, rows, scored = filled
    attr = {"router": "router", "key": "api_key_id", "model": "chosen_model"}[field]
    got = stats.overview(ledger.engine, Filters(**{field: value}))
    check(got, truth(rows, scored, lambda r: getattr(r, attr) == value))


def test_time_window_is_half_open(filled: tuple[Ledger, list[LedgerRow], list[tuple[str, float]]]) -> None:
    ledger, rows, scored = filled
    since, until = T0 + 3600, T0 + 2.5 * 3600
    got = stats.overview(ledger.engine, Filters(since=since, until=until, router="cheap"))
    check(got, truth(rows, scored, lambda r: since <= r.created_at < until and r.router == "cheap"))


def test_timeseries_is_dense_and_sums_per_bucket(filled: tuple[Ledger, list[LedgerRow], list[tuple[str, float]]]
                                                 ) -> None:
    ledger, rows, scored = filled
    got = stats.timeseries(ledger.engine, Filters(since=T0, until=T0 + 6 * 3600), "hour")
    assert [p["t"] for p in got["points"]] == [T0 + h * 3600 for h in range(6)]
    for p in got["points"]:
        check(p, truth(rows, scored, lambda r, t=p["t"]: t <= r.created_at < t + 3600))
    assert got["points"][5]["requests"] == 0 and got["points"][5]["score_mean"] is None  # an empty bucket
    assert sorted(got["models"]) == sorted(MODELS)
    for h in range(5):
        shares = [got["models"][m][h]["share"] for m in MODELS]
        assert sum(shares) == pytest.approx(1.0)
        start = T0 + h * 3600
        for m in MODELS:
            point = got["models"][m][h]
            want = truth(rows, scored, lambda r, m=m, t=start: r.chosen_model == m and t <= r.created_at < t + 3600)
            assert point["requests"] == want["requests"] and point["feedback_n"] == want["feedback_n"]
            if want["feedback_n"] > 1:
                ids = {r.id for r in rows if r.chosen_model == m and start <= r.created_at < start + 3600}
                s = np.array([v for rid, v in scored if rid in ids])
                assert point["score_se"] == pytest.approx(s.std(ddof=1) / math.sqrt(len(s)))


def test_minute_and_day_buckets_and_limits(filled: tuple[Ledger, list[LedgerRow], list[tuple[str, float]]]) -> None:
    ledger, rows, _ = filled
    minute = stats.timeseries(ledger.engine, Filters(since=T0 + 90, until=T0 + 3600), "minute")
    assert len(minute["points"]) == 59 and minute["points"][0]["t"] == T0 + 60  # aligned down to the minute
    assert sum(p["requests"] for p in minute["points"]) == sum(T0 + 90 <= r.created_at < T0 + 3600 for r in rows)
    day = stats.timeseries(ledger.engine, Filters(), "day", now=T0 + 5 * 3600)
    assert sum(p["requests"] for p in day["points"]) == len(rows)
    with pytest.raises(ValueError, match="bucket"):
        stats.timeseries(ledger.engine, Filters(since=T0 - 30 * 86400, until=T0), "minute")
    with pytest.raises(ValueError, match="bucket"):
        stats.timeseries(ledger.engine, Filters(), "week")


def test_models_keys_and_calibration(filled: tuple[Ledger, list[LedgerRow], list[tuple[str, float]]]) -> None:
    ledger, rows, scored = filled
    by_model = stats.grouped(ledger.engine, Filters(), "model")
    assert [m["model"] for m in by_model] == sorted(MODELS, key=lambda m: -truth(rows, scored, lambda r, m=m:
                                                                                   r.chosen_model == m)["spend_usd"])
    for item in by_model:
        check(item, truth(rows, scored, lambda r, m=item["model"]: r.chosen_model == m))
    keys = stats.grouped(ledger.engine, Filters(router="best"), "key")
    for item in keys:
        check(item, truth(rows, scored, lambda r, k=item["key"]: r.api_key_id == k and r.router == "best"))
    assert [k["spend_usd"] for k in keys] == sorted((k["spend_usd"] for k in keys), reverse=True)
    cal = stats.calibration(ledger.engine, Filters(), bins=5)
    pq = {r.id: r.predicted_quality for r in rows}
    pairs = [(pq[rid], s) for rid, s in scored if pq[rid] is not None]
    assert sum(b["n"] for b in cal) == len(pairs)
    for b in cal:
        inside = [(p, s) for p, s in pairs if min(int(p * 5), 4) == b["bin"]]
        assert b["n"] == len(inside) and b["lo"] <= b["predicted"] <= b["hi"]
        assert b["observed"] == pytest.approx(np.mean([s for _, s in inside]))
    # bounded: the feedback of the newest scored requests only, at most `limit` entries
    created = {r.id: r.created_at for r in rows}
    newest = sorted([(rid, s) for rid, s in scored if pq[rid] is not None],
                    key=lambda x: -created[x[0]])
    edge = created[newest[len(newest) // 3][0]]  # cut between requests, not inside one's feedback entries
    limit = sum(1 for rid, _ in newest if created[rid] > edge)
    cut = stats.calibration(ledger.engine, Filters(), bins=5, limit=limit)
    assert sum(b["n"] for b in cut) == limit
    assert sum(b["n"] * b["observed"] for b in cut) == pytest.approx(sum(s for _, s in newest[:limit]))


def test_recent_and_one_request_carry_the_decision(filled: tuple[Ledger, list[LedgerRow], list[tuple[str, float]]]
                                                   ) -> None:
    ledger, rows, scored = filled
    recent = stats_rows.recent(ledger.engine, Filters(router="best"), limit=7)
    want = sorted((r for r in rows if r.router == "best"), key=lambda r: -r.created_at)[:7]
    assert [r["id"] for r in recent] == [r.id for r in want]
    page2 = stats_rows.recent(ledger.engine, Filters(router="best"), limit=7, before=recent[-1]["created_at"])
    assert page2[0]["id"] == sorted((r for r in rows if r.router == "best"), key=lambda r: -r.created_at)[7].id
    one = stats_rows.one(ledger.engine, want[0].id)
    assert one is not None and one["candidates"] == want[0].candidates and "prompt_text" not in one
    assert one["baseline_model"] == want[0].baseline_model
    assert [f["score"] for f in one["feedback"]] == [s for rid, s in scored if rid == want[0].id]
    assert stats_rows.one(ledger.engine, "nope") is None


def test_baseline_for_rules() -> None:
    cands = {"strong": {"quality": 0.9, "cost": 0.02}, "weak": {"quality": 0.5, "cost": 0.001}}
    routed = LedgerRow(id="a", created_at=0, router="r", candidates=cands, chosen_model="weak", cost_usd=0.0012)
    assert baseline_for(routed, "strong") == ("strong", 0.02)            # expected cost from the decision
    assert baseline_for(routed, None) == ("strong", 0.02)                # default: the priciest candidate
    answered = LedgerRow(id="b", created_at=0, router="r", candidates=cands, chosen_model="strong", cost_usd=0.03)
    assert baseline_for(answered, "strong") == ("strong", 0.03)          # the baseline answered: its actual cost
    passthrough = LedgerRow(id="c", created_at=0, chosen_model="weak", cost_usd=0.004)
    assert baseline_for(passthrough, "strong") == ("weak", 0.004)        # no routing, no saving
    failed = LedgerRow(id="d", created_at=0, router="r", candidates=cands, chosen_model="weak", status=502)
    assert baseline_for(failed, "strong") == ("strong", None)            # not answered: no counterfactual
    assert baseline_for(routed, "absent") == ("weak", 0.0012)            # unknown baseline: priced at its own cost
    nan = LedgerRow(id="e", created_at=0, router="r", candidates={"x": {"quality": 1, "cost": float("nan")}},
                    chosen_model="x", cost_usd=0.5)
    assert baseline_for(nan, None) == ("x", 0.5)


def test_an_old_ledger_gets_the_dashboard_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    ledger = Ledger(url)
    row = LedgerRow(id="x", created_at=time.time(), chosen_model="weak", cost_usd=0.5, status=200)
    annotate(row, None)
    ledger.insert_rows([row])
    got = stats.overview(ledger.engine, Filters())
    assert got["counterfactual_spend_usd"] == got["spend_usd"] == 0.5 and got["savings_usd"] == 0
    assert tuple(sorted(LATENCY_BOUNDS_MS)) == LATENCY_BOUNDS_MS
    ledger.close()
