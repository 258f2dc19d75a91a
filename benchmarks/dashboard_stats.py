"""Dashboard stats on a large ledger: overview and the hourly series over 7 days, SQLite and PostgreSQL.

Builds a ledger of ``--rows`` request rows (default 1,000,000, all inside the last 7 days: the window the
page shows holds every row, the hardest case) plus feedback on 20 % of them, then times the stats
functions themselves (``thalamus.gateway.stats.aggregates.overview`` and ``timeseries(bucket="hour")``, the SQL the
API runs, without HTTP) and reports the p50 / min over ``--reps`` calls. PostgreSQL runs on a private
server started like the tests' (initdb + pg_ctl in a temp dir, 127.0.0.1), loaded with COPY. Rows are
loaded in time order by default, as a gateway appends them (``--order random`` scatters each hour's rows
over the whole table, the order of the runs before 2026-12-02: every raw read then is a random page read).

    .venv/bin/python benchmarks/dashboard_stats.py [--rows 1000000] [--reps 5] [--skip-postgres] [--order time]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gateway"))

from thalamus.gateway.stats import aggregates as stats
from thalamus.gateway.stats import router as stats_router
from thalamus.gateway.stats.sql import Filters
from thalamus.ledger import Ledger, feedback, requests
from thalamus.ledger.schema import REQUEST_COLUMNS

COLUMNS = ["id", "created_at", "finished_at", "api_key_id", "requested_model", "router", "candidates",
           "chosen_model", "probability", "fallback_chain", "status", "stream", "routing_ms", "ttft_ms", "total_ms",
           "prompt_tokens", "completion_tokens", "cost_usd", "cost_estimated", "baseline_model", "baseline_cost_usd",
           "predicted_quality"]
MODELS = [f"model-{i}" for i in range(11)]
OUT = Path(__file__).resolve().parent / "results"


def make_rows(n: int, now: float, seed: int = 0) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    created = now - rng.uniform(0, 7 * 86400, n)
    model = rng.integers(0, len(MODELS), n)
    router = rng.choice(["knn", "mf", ""], n)
    status = rng.choice([200] * 48 + [502, 429], n)
    cost = np.where(status == 200, rng.uniform(1e-5, 1e-2, n), np.nan)
    total = rng.lognormal(6, 1, n)
    chain = np.where(rng.uniform(size=n) < 0.05, '[{"model": "model-3", "attempt": 1, "status": 503}]', "[]")
    rows = []
    for i in range(n):
        routed = router[i] != ""
        c = None if np.isnan(cost[i]) else float(cost[i])
        rows.append((f"b{i:08d}", float(created[i]), float(created[i] + total[i] / 1000), f"key-{i % 20}",
                     "auto" if routed else MODELS[model[i]], router[i] or None,
                     '{"model-0": {"quality": 0.8, "cost": 0.01}, "model-5": {"quality": 0.6, "cost": 0.001}}'
                     if routed else None, MODELS[model[i]], 1.0 if routed else None, chain[i], int(status[i]), False,
                     float(rng.uniform(0.1, 2)) if routed else None, float(total[i] * 0.4), float(total[i]),
                     int(rng.integers(10, 2000)), int(rng.integers(1, 800)), c, False,
                     "model-0" if routed else MODELS[model[i]], None if c is None else (0.01 if routed else c),
                     0.7 if routed else None))
    return rows


def load_sqlite(ledger: Ledger, rows: list[tuple[Any, ...]], fb: list[tuple[Any, ...]]) -> None:
    raw = ledger.engine.raw_connection()
    try:
        cur = raw.cursor()
        marks = ", ".join("?" for _ in COLUMNS)
        cur.executemany(f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({marks})", rows)
        cur.executemany("INSERT INTO feedback (request_id, created_at, score) VALUES (?, ?, ?)", fb)
        raw.commit()
    finally:
        raw.close()


def load_postgres(ledger: Ledger, rows: list[tuple[Any, ...]], fb: list[tuple[Any, ...]]) -> None:
    raw = ledger.engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY requests ({', '.join(COLUMNS)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)
        with cur.copy("COPY feedback (request_id, created_at, score) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in fb:
                copy.write_row(row)
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()


def timed(fn: Any, reps: int) -> dict[str, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def insert_cost(url: str, upto: int, n: int = 10_000, batch: int = 50) -> dict[str, float]:
    """The writer's normal path (``Ledger.insert_stored``, batches of 50) into a fresh ledger at schema
    ``upto`` (4: no rollup triggers, 5: with them), then ``add_feedback`` one at a time."""
    ledger = Ledger(url, upto=upto)
    # every column, as LedgerRow.storable() gives them (the benchmark rows already hold encoded JSON)
    stored = [dict.fromkeys(REQUEST_COLUMNS) | dict(zip(COLUMNS, r, strict=True))
              for r in make_rows(n, time.time(), seed=upto)]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        ledger.insert_stored(stored[i:i + batch])
    rows_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in stored[:n // 10]:
        ledger.add_feedback(r["id"], 0.5, None, "bench", None)
    fb_s = time.perf_counter() - t0
    ledger.close()
    return {"rows": n, "batch": batch, "insert_s": rows_s, "us_per_row": rows_s / n * 1e6,
            "feedback": n // 10, "us_per_feedback": fb_s / (n // 10) * 1e6}


def bench(url: str, name: str, rows: list[tuple[Any, ...]], fb: list[tuple[Any, ...]], now: float,
          reps: int, fresh: Any) -> dict[str, Any]:
    ledger = Ledger(url, upto=4)  # bulk load without the rollup triggers, then migration 5 backfills
    t0 = time.perf_counter()
    (load_postgres if name == "postgresql" else load_sqlite)(ledger, rows, fb)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert ledger.migrate(5) == 5
    backfill_s = time.perf_counter() - t0
    ledger.migrate()  # the later migrations only add columns and tables
    if name == "postgresql":
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    f = Filters(since=now - 7 * 86400, until=now + 1)
    check = stats.overview(ledger.engine, f)
    assert check["requests"] == len(rows), check["requests"]
    result = {"load_s": load_s, "migration_5_backfill_s": backfill_s,
              "overview": timed(lambda: stats.overview(ledger.engine, f), reps),
              "timeseries_hour_7d": timed(lambda: stats.timeseries(ledger.engine, f, "hour"), reps),
              "overview_one_router": timed(lambda: stats.overview(ledger.engine, Filters(f.since, f.until, "knn")),
                                           reps),
              "overview_one_key": timed(lambda: stats.overview(ledger.engine, Filters(f.since, f.until, key="key-3")),
                                        reps),
              "timeseries_day_7d": timed(lambda: stats.timeseries(ledger.engine, f, "day"), reps),
              "models_7d": timed(lambda: stats.grouped(ledger.engine, f, "model"), reps),
              "keys_7d": timed(lambda: stats.grouped(ledger.engine, f, "key"), reps),
              "calibration_7d": timed(lambda: stats.calibration(ledger.engine, f), reps),
              "filter_menus_7d": timed(lambda: stats.filter_options(ledger.engine, f), reps),
              "router_points_7d": timed(lambda: stats_router.router_points(ledger.engine, f), reps)}
    with ledger.engine.connect() as conn:
        result["rows"] = conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar()
        result["feedback_rows"] = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar()
        result["rollup_rows"] = conn.exec_driver_sql("SELECT count(*) FROM rollup_hourly").scalar()
        result["rollup_router_rows"] = conn.exec_driver_sql("SELECT count(*) FROM rollup_hourly_router").scalar()
    ledger.close()
    result["insert_without_triggers"] = insert_cost(fresh(), 4)
    result["insert_with_triggers"] = insert_cost(fresh(), 5)
    print(name, json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--order", choices=("time", "random"), default="time",
                    help="row order of the bulk load: time (as a gateway appends) or random (scattered hours)")
    args = ap.parse_args()
    now = time.time()
    rows = make_rows(args.rows, now)
    if args.order == "time":  # a gateway appends rows as requests finish: one hour's rows sit together
        rows.sort(key=lambda r: r[1])
    fb = [(r[0], r[1] + 5, float(i % 3) / 2) for i, r in enumerate(rows) if i % 5 == 0]
    results: dict[str, Any] = {"command": " ".join(["benchmarks/dashboard_stats.py", *sys.argv[1:]]),
                               "order": args.order, "load_average_start": os.getloadavg(),
                               "rows": args.rows, "reps": args.reps,
                               "what": "thalamus.gateway.stats.aggregates functions"}
    with tempfile.TemporaryDirectory() as tmp:
        n = iter(range(100))
        results["sqlite"] = bench(f"sqlite:///{tmp}/bench.sqlite", "sqlite", rows, fb, now, args.reps,
                                  lambda: f"sqlite:///{tmp}/insert{next(n)}.sqlite")
    if not args.skip_postgres:
        from pgserver import PgServer, new_database, pg_bindir

        bindir = pg_bindir()
        assert bindir is not None, "no initdb/pg_ctl: install postgresql or pass --skip-postgres"
        server = PgServer(bindir)
        server.start()
        try:
            results["postgresql"] = bench(new_database(server.url), "postgresql", rows, fb, now, args.reps,
                                          lambda: new_database(server.url))
        finally:
            server.stop()
            server.cleanup()
    results["load_average_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "dashboard_stats.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
