"""Migration 5: hourly rollups of the ledger, kept by the database itself, and the tables that read them.

The dashboard's overview and series over days of traffic would otherwise scan every raw row per page
load. Two rollup tables hold, per hour, the counts and sums the stats need (requests, errors, fallbacks,
tokens, spend, counterfactual spend, feedback n / sum / sum of squares, latency histogram bucket counts):
``rollup_hourly`` per (hour, router, api_key_id, chosen_model), and ``rollup_hourly_router`` per (hour,
router, chosen_model), a coarser copy that answers the queries without a key filter from ~20x fewer rows.

They are kept by AFTER INSERT triggers on ``requests`` and ``feedback``, so every writer (each gateway
replica, a journal replay, a hand-run INSERT) keeps them right, and a row skipped by ``ON CONFLICT DO
NOTHING`` (a replay) fires nothing: it is counted once. SQLite: row triggers (one writer at a time).
PostgreSQL: statement triggers with transition tables that upsert one row per key group, in key order,
first into ``rollup_hourly`` then into ``rollup_hourly_router``: two writers of one-statement
transactions take their row locks in the same order and cannot deadlock. A request inserted after its
feedback (possible on SQLite, which does not enforce the foreign key) brings that feedback along.

Key columns are NOT NULL so that the upsert's conflict target matches (a UNIQUE key treats NULLs as
distinct): NULL is stored as ``''`` and a value ``v`` as ``'=' || v`` (``key_value``). The hour is
``floor(created_at / 3600) * 3600`` (UTC epoch seconds). For a double ``t >= 0`` and an integer width w in
{60, 3600, 86400} that floor is exact (``h*w <= t < (h+1)*w``), so rollup hours and raw time comparisons
split rows the same way. The DDL is generated from the frozen constants below and pinned by a hash in
the tests: never edit it; a change is a new migration.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

# frozen copies (migration 5): gateway.stats.sql.LATENCY_BOUNDS_MS must stay equal to these (tested)
LATENCY_BOUNDS_V5: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000)
METRICS = ("routing", "ttft", "total")
HOUR_S = 3600
ROLLUPS: dict[str, tuple[str, ...]] = {"rollup_hourly": ("router", "api_key_id", "chosen_model"),
                                       "rollup_hourly_router": ("router", "chosen_model")}
# (column, type, per-row value over the source row aliased "s"; fb_* come from its feedback). Sums are
# clamped to +-CLAMP per row: a garbage value (a token count near 2**63, a cost of 1e308) must never make
# the trigger overflow and refuse the request row; real values are far inside the bound.
CLAMP = 1e12
_VALUES: tuple[tuple[str, str, str, bool], ...] = (
    ("requests", "BIGINT", "1", False),
    ("errors", "BIGINT", "CASE WHEN s.status >= 400 THEN 1 ELSE 0 END", False),
    ("fallbacks", "BIGINT", "CASE WHEN s.fallback_chain IS NOT NULL AND s.fallback_chain <> '[]' THEN 1 ELSE 0 END",
     False),
    ("prompt_tokens", "BIGINT", "COALESCE(s.prompt_tokens, 0)", True),
    ("completion_tokens", "BIGINT", "COALESCE(s.completion_tokens, 0)", True),
    ("spend_usd", "FLOAT", "COALESCE(s.cost_usd, 0.0)", True),
    ("counterfactual_spend_usd", "FLOAT", "COALESCE(s.baseline_cost_usd, 0.0)", True),
    ("feedback_n", "BIGINT", "COALESCE(fb.n, 0)", False),
    ("score_sum", "FLOAT", "COALESCE(fb.s, 0.0)", False),
    ("score_sq", "FLOAT", "COALESCE(fb.sq, 0.0)", False),
    ("total_ms_n", "BIGINT", "CASE WHEN s.total_ms IS NULL THEN 0 ELSE 1 END", False),
    ("total_ms_sum", "FLOAT", "COALESCE(s.total_ms, 0.0)", True),
    ("pq_n", "BIGINT", "CASE WHEN s.predicted_quality IS NULL THEN 0 ELSE 1 END", False),
    ("pq_sum", "FLOAT", "COALESCE(s.predicted_quality, 0.0)", True),
)
FEEDBACK_COLUMNS = ("feedback_n", "score_sum", "score_sq")
N_BUCKETS = len(LATENCY_BOUNDS_V5) + 1


def lat_column(metric: str, bucket: int) -> str:
    return f"lat_{metric}_{bucket:02d}"


LAT_COLUMNS = tuple(lat_column(m, b) for m in METRICS for b in range(N_BUCKETS))
SUM_COLUMNS = tuple(name for name, _, _, _ in _VALUES)


def key_value(value: str | None) -> str:
    """How a router / key / model value is stored in a rollup key column."""
    return "" if value is None else "=" + value


def key_decode(stored: str) -> str | None:
    return None if stored == "" else stored[1:]


def _rollup_table(metadata: sa.MetaData, name: str, keys: tuple[str, ...]) -> sa.Table:
    cols: list[sa.Column[Any]] = [sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False)]
    cols += [sa.Column(k, sa.Text, primary_key=True) for k in keys]
    cols += [sa.Column(n, sa.Float if t == "FLOAT" else sa.BigInteger, nullable=False) for n, t, _, _ in _VALUES]
    cols += [sa.Column(n, sa.BigInteger, nullable=False) for n in LAT_COLUMNS]
    return sa.Table(name, metadata, *cols)


rollup_metadata = sa.MetaData()
rollup_hourly = _rollup_table(rollup_metadata, "rollup_hourly", ROLLUPS["rollup_hourly"])
rollup_hourly_router = _rollup_table(rollup_metadata, "rollup_hourly_router", ROLLUPS["rollup_hourly_router"])


# -- frozen DDL generation (migration 5) --------------------------------------------------------------
def _bucket_sql(x: str, lo: int = 0, hi: int = len(LATENCY_BOUNDS_V5)) -> str:
    """Index k of the bucket holding x (bounds[k-1] <= x < bounds[k]): the same search as latency_bucket."""
    if lo == hi:
        return str(lo)
    mid = (lo + hi) // 2
    return f"CASE WHEN {x} < {LATENCY_BOUNDS_V5[mid]!r} THEN {_bucket_sql(x, lo, mid)} " \
           f"ELSE {_bucket_sql(x, mid + 1, hi)} END"


def _clamp(dialect: str, expr: str, bound: float, low: float | None = None) -> str:
    lo = -bound if low is None else low
    if dialect == "sqlite":  # SQLite's two-argument MIN/MAX are scalar functions
        return f"MIN(MAX({expr}, {lo!r}), {bound!r})"
    return f"LEAST(GREATEST({expr}, {lo!r}), {bound!r})"


def _hour_sql(dialect: str, col: str) -> str:
    """The hour of created_at; a time outside [0, 1e12) s (never a real one) goes to the nearest edge
    rather than overflow the cast and refuse the row."""
    t = _clamp(dialect, col, CLAMP, 0.0)
    if dialect == "sqlite":  # SQLite's CAST truncates: floor for t >= 0
        return f"CAST({t} / {HOUR_S} AS INTEGER) * {HOUR_S}"
    return f"CAST(floor({t} / {HOUR_S}) AS BIGINT) * {HOUR_S}"


def _per_row(dialect: str, keys: tuple[str, ...]) -> str:
    """hour, keys, every value and the three latency buckets of source row s (with its feedback fb)."""
    parts = [f"{_hour_sql(dialect, 's.created_at')} AS hour"]
    parts += [f"COALESCE('=' || s.{k}, '') AS {k}" for k in keys]
    parts += [f"{_clamp(dialect, expr, CLAMP) if clamp else expr} AS {name}" for name, _, expr, clamp in _VALUES]
    parts += [f"CASE WHEN s.{m}_ms IS NULL THEN NULL ELSE {_bucket_sql(f's.{m}_ms')} END AS b_{m}" for m in METRICS]
    return ", ".join(parts)


def _aggregate(table: str, keys: tuple[str, ...], inner: str) -> str:
    """INSERT one row per key group of ``inner`` (in key order), adding to the row already there."""
    key_list = ", ".join(("hour", *keys))
    sums = [f"SUM({name})" for name in SUM_COLUMNS]
    sums += [f"COUNT(*) FILTER (WHERE b_{m} = {b})" for m in METRICS for b in range(N_BUCKETS)]
    targets = ", ".join((*SUM_COLUMNS, *LAT_COLUMNS))
    update = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in (*SUM_COLUMNS, *LAT_COLUMNS))
    return (f"INSERT INTO {table} ({key_list}, {targets}) SELECT {key_list}, {', '.join(sums)} "
            f"FROM ({inner}) AS v WHERE true GROUP BY {key_list} ORDER BY {key_list} "
            f"ON CONFLICT ({key_list}) DO UPDATE SET {update}")


def _feedback_upsert(table: str, keys: tuple[str, ...], inner: str) -> str:
    key_list = ", ".join(("hour", *keys))
    cols = ", ".join(FEEDBACK_COLUMNS)
    update = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in FEEDBACK_COLUMNS)
    return (f"INSERT INTO {table} ({key_list}, {cols}) SELECT {key_list}, SUM(n), SUM(s), SUM(sq) "
            f"FROM ({inner}) AS v WHERE true GROUP BY {key_list} ORDER BY {key_list} "
            f"ON CONFLICT ({key_list}) DO UPDATE SET {update}")


def _create_table(table: str, keys: tuple[str, ...]) -> str:
    cols = ["hour BIGINT NOT NULL", *(f"{k} TEXT NOT NULL" for k in keys)]
    cols += [f"{name} {kind} NOT NULL DEFAULT 0" for name, kind, _, _ in _VALUES]
    cols += [f"{c} BIGINT NOT NULL DEFAULT 0" for c in LAT_COLUMNS]
    return f"CREATE TABLE {table} ({', '.join(cols)}, PRIMARY KEY (hour, {', '.join(keys)}))"


def _requests_source(dialect: str, keys: tuple[str, ...], rows: str, fb_where: str) -> str:
    """Per-row values of the request rows ``rows`` joined with the feedback already stored for them."""
    score = _clamp(dialect, "score", CLAMP)
    fb = (f"SELECT request_id, COUNT(*) AS n, SUM({score}) AS s, SUM({score} * {score}) AS sq FROM feedback "
          f"{fb_where} GROUP BY request_id")
    return f"SELECT {_per_row(dialect, keys)} FROM {rows} AS s LEFT JOIN ({fb}) AS fb ON fb.request_id = s.id"


def _feedback_source(dialect: str, keys: tuple[str, ...], rows: str) -> str:
    """The keys of the requests that the feedback rows ``rows`` score, with each score."""
    key_cols = ", ".join(f"COALESCE('=' || s.{k}, '') AS {k}" for k in keys)
    score = _clamp(dialect, "f.score", CLAMP)
    return (f"SELECT {_hour_sql(dialect, 's.created_at')} AS hour, {key_cols}, 1 AS n, {score} AS s, "
            f"{score} * {score} AS sq FROM {rows} AS f JOIN requests AS s ON s.id = f.request_id")


_REQUEST_INPUTS = ("id", "created_at", "router", "api_key_id", "chosen_model", "status", "fallback_chain",
                   "prompt_tokens", "completion_tokens", "cost_usd", "baseline_cost_usd", "total_ms",
                   "predicted_quality", "routing_ms", "ttft_ms")
_NEW_REQUEST = "(SELECT " + ", ".join(f"NEW.{c} AS {c}" for c in _REQUEST_INPUTS) + ")"
_NEW_FEEDBACK = "(SELECT NEW.request_id AS request_id, NEW.score AS score)"


def _sqlite_v5() -> tuple[str, ...]:
    tables = [_create_table(t, k) + " WITHOUT ROWID" for t, k in ROLLUPS.items()]
    backfill = [_aggregate(t, k, _requests_source("sqlite", k, "requests", "")) for t, k in ROLLUPS.items()]
    on_request = "; ".join(_aggregate(t, k, _requests_source("sqlite", k, _NEW_REQUEST, "WHERE request_id = NEW.id"))
                           for t, k in ROLLUPS.items())
    on_feedback = "; ".join(_feedback_upsert(t, k, _feedback_source("sqlite", k, _NEW_FEEDBACK))
                            for t, k in ROLLUPS.items())
    triggers = [f"CREATE TRIGGER rollup_on_request AFTER INSERT ON requests FOR EACH ROW BEGIN {on_request}; END",
                f"CREATE TRIGGER rollup_on_feedback AFTER INSERT ON feedback FOR EACH ROW BEGIN {on_feedback}; END"]
    return (*tables, *backfill, *triggers)


def _pg_v5() -> tuple[str, ...]:
    # no INSERT may commit between the backfill's snapshot and the triggers: hold both tables until commit
    lock = "LOCK TABLE requests, feedback IN SHARE ROW EXCLUSIVE MODE"
    tables = [_create_table(t, k) for t, k in ROLLUPS.items()]
    on_request = "; ".join(_aggregate(t, k, _requests_source(
        "postgresql", k, "new_rows", "WHERE request_id IN (SELECT id FROM new_rows)")) for t, k in ROLLUPS.items())
    on_feedback = "; ".join(_feedback_upsert(t, k, _feedback_source("postgresql", k, "new_feedback"))
                            for t, k in ROLLUPS.items())
    functions = [f"CREATE FUNCTION rollup_on_request() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {on_request}; "
                 "RETURN NULL; END $$",
                 f"CREATE FUNCTION rollup_on_feedback() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {on_feedback}; "
                 "RETURN NULL; END $$"]
    triggers = ["CREATE TRIGGER rollup_on_request AFTER INSERT ON requests REFERENCING NEW TABLE AS new_rows "
                "FOR EACH STATEMENT EXECUTE FUNCTION rollup_on_request()",
                "CREATE TRIGGER rollup_on_feedback AFTER INSERT ON feedback REFERENCING NEW TABLE AS new_feedback "
                "FOR EACH STATEMENT EXECUTE FUNCTION rollup_on_feedback()"]
    backfill = [_aggregate(t, k, _requests_source("postgresql", k, "requests", "")) for t, k in ROLLUPS.items()]
    return (lock, *tables, *functions, *triggers, *backfill)


ROLLUP_V5: dict[str, tuple[str, ...]] = {"sqlite": _sqlite_v5(), "postgresql": _pg_v5()}
