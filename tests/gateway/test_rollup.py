"""The hourly rollups (migration 5) against raw scans: random rows, replays, late and early feedback,
random ranges and filters, on SQLite and PostgreSQL; the backfill; concurrent writers; the frozen DDL."""

from __future__ import annotations

import hashlib
import math
import threading
from typing import Any

import numpy as np
import pytest
from pgserver import db_url, pg_admin_url, pg_url  # noqa: F401  (PostgreSQL fixtures)

from thalamus.gateway.core.counterfactual import annotate
from thalamus.gateway.stats import aggregates as stats
from thalamus.gateway.stats.sql import LATENCY_BOUNDS_MS, Filters
from thalamus.ledger import Ledger
from thalamus.ledger.rollup import LATENCY_BOUNDS_V5, ROLLUP_V5
from thalamus.ledger.row import LedgerRow

T0 = 1_760_000_400.0  # 400 s after an hour boundary
SPAN = 3 * 86400
ROUTERS, KEYS, MODELS = ["knn", "mf", "", None], ["k1", "k2", "", None], ["a", "b", "c", None]
EXACT = ("requests", "errors", "fallbacks", "prompt_tokens", "completion_tokens", "feedback_n", "p50", "p90", "p99")


def _time(rng: np.random.Generator) -> float:
    """Mostly uniform, some exactly on an hour and the doubles just around one (where a floor could slip)."""
    t = T0 + float(rng.uniform(0, SPAN))
    kind = rng.integers(0, 6)
    if kind == 0:
        return math.floor(t / 3600) * 3600.0
    if kind == 1:
        return math.nextafter(math.floor(t / 3600) * 3600.0, 0.0)
    return t


def rows(n: int, seed: int) -> list[LedgerRow]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pick = lambda xs: xs[int(rng.integers(0, len(xs)))]  # noqa: E731
        lat = lambda mu: None if rng.uniform() < 0.15 else float(rng.lognormal(mu, 2))  # noqa: E731
        row = LedgerRow(id=f"s{seed}-{i}", created_at=_time(rng), router=pick(ROUTERS), api_key_id=pick(KEYS),
                        chosen_model=pick(MODELS), status=int(pick([200, 200, 200, 502, 429, 400])),
                        routing_ms=lat(0), ttft_ms=lat(4), total_ms=lat(6), predicted_quality=lat(-1))
        if row.status == 200:
            row.prompt_tokens, row.completion_tokens = int(rng.integers(1, 900)), int(rng.integers(1, 400))
            row.cost_usd = float(rng.uniform(1e-5, 1e-2))
        if row.router:
            row.candidates = {"a": {"quality": 0.9, "cost": 0.01}, "b": {"quality": 0.5, "cost": 0.001}}
        row.fallback_chain = [{"model": "x", "attempt": 1, "status": 503}] if rng.uniform() < 0.2 else []
        annotate(row, "a" if row.router else None)
        out.append(row)
    return out


def fill(ledger: Ledger, seed: int = 1, n: int = 600) -> None:
    """Batches of 50 as the writer sends them, one batch replayed twice, feedback after its request (and,
    on SQLite, which does not enforce the foreign key, some feedback before its request arrives)."""
    rng = np.random.default_rng(seed)
    all_rows = rows(n, seed)
    early = all_rows[-40:] if ledger.engine.dialect.name == "sqlite" else []
    for r in early[::3]:
        ledger.add_feedback(r.id, float(rng.choice([0.0, 0.25, 1.0])), None, "early", None)
    for i in range(0, len(all_rows), 50):
        ledger.insert_rows(all_rows[i:i + 50])
    ledger.insert_rows(all_rows[100:150] + all_rows[:10])  # a journal replay: already stored, counted once
    for r in all_rows[:-40:3]:
        for _ in range(int(rng.integers(1, 3))):
            ledger.add_feedback(r.id, float(rng.uniform()), None, "late", None)


def same(got: Any, want: Any, path: str = "") -> None:
    """Equal: exactly for counts and percentiles, to rounding for float sums (SQL sums in any order)."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), path
        for k in want:
            same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and path.rsplit(".", 1)[-1] not in EXACT:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), path
    else:
        assert got == want, path


def random_filters(rng: np.random.Generator) -> Filters:
    def bound() -> float | None:
        roll = rng.integers(0, 5)
        if roll == 0:
            return None
        t = T0 - 3600 + float(rng.uniform(0, SPAN + 7200))
        return math.floor(t / 3600) * 3600.0 if roll == 1 else t

    since, until = sorted((bound() or -1.0, bound() or 1e12))
    pick = lambda xs: None if rng.uniform() < 0.6 else xs[int(rng.integers(0, len(xs) - 1))]  # noqa: E731
    return Filters(None if since == -1.0 else since, None if until == 1e12 else until, pick(ROUTERS), pick(KEYS),
                   pick(MODELS))


def test_rollups_answer_what_raw_rows_answer(db_url: str) -> None:  # noqa: F811
    ledger = Ledger(db_url)
    fill(ledger)
    rng = np.random.default_rng(11)
    assert stats.overview(ledger.engine, Filters())["requests"] == 600
    for _ in range(16):
        f = random_filters(rng)
        same(stats.overview(ledger.engine, f), stats.overview(ledger.engine, f, use_rollup=False), str(f))
        for bucket in ("hour", "day"):
            since = f.since if f.since is not None else T0 - 3600
            g = Filters(since, f.until if f.until is not None else T0 + SPAN + 1, f.router, f.key, f.model)
            same(stats.timeseries(ledger.engine, g, bucket), stats.timeseries(ledger.engine, g, bucket,
                                                                              use_rollup=False), f"{bucket} {g}")
        for by in ("model", "key"):
            got, want = stats.grouped(ledger.engine, f, by), stats.grouped(ledger.engine, f, by, use_rollup=False)
            same(sorted(got, key=lambda x: str(x[by])), sorted(want, key=lambda x: str(x[by])), f"{by} {f}")
        menus = stats.filter_options(ledger.engine, f)  # the menus: rollup key columns + raw ends
        assert menus == stats.filter_options(ledger.engine, f, use_rollup=False), str(f)
    full = stats.filter_options(ledger.engine, Filters())
    assert full["routers"] and full["keys"] and len(full["models"]) > 1
    ledger.close()


def test_backfill_of_an_existing_ledger_matches_the_triggers(db_url: str) -> None:  # noqa: F811
    old = Ledger(db_url, upto=4)  # a ledger from before the rollups, with rows and feedback
    fill(old, seed=2, n=250)
    old.close()
    ledger = Ledger(db_url)
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT SUM(requests) FROM rollup_hourly").scalar() == 250
    f = Filters(T0 + 1234.5, T0 + 2 * 86400 + 77.25)
    same(stats.overview(ledger.engine, f), stats.overview(ledger.engine, f, use_rollup=False))
    same(stats.timeseries(ledger.engine, f, "hour"), stats.timeseries(ledger.engine, f, "hour", use_rollup=False))
    ledger.close()


def test_concurrent_writers_neither_deadlock_nor_lose_counts(pg_url: str) -> None:  # noqa: F811
    """Four replicas write overlapping keys and hours at once (PostgreSQL: the rollup's row locks)."""
    ledgers = [Ledger(pg_url) for _ in range(4)]
    batches = [rows(400, 10 + w) for w in range(4)]
    errors: list[BaseException] = []

    def write(ledger: Ledger, mine: list[LedgerRow]) -> None:
        try:
            for i in range(0, len(mine), 25):
                ledger.insert_rows(mine[i:i + 25][::-1] if i % 50 else mine[i:i + 25])
                ledger.add_feedback(mine[i].id, 0.5, None, None, None)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(led, b)) for led, b in zip(ledgers, batches, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    got = stats.overview(ledgers[0].engine, Filters())
    same(got, stats.overview(ledgers[0].engine, Filters(), use_rollup=False))
    assert got["requests"] == 1600 and got["feedback_n"] == 64
    for led in ledgers:
        led.close()


def test_migration_5_is_frozen() -> None:
    """The rollup DDL is generated: this pins what it generates. A change needs a new migration."""
    digest = {d: hashlib.sha256("\n".join(sql).encode()).hexdigest()[:16] for d, sql in ROLLUP_V5.items()}
    assert digest == {"sqlite": "8ba50680737318ec", "postgresql": "34aa0c643c8fa137"}
    assert LATENCY_BOUNDS_MS == LATENCY_BOUNDS_V5  # new bounds need new rollup columns: a new migration
