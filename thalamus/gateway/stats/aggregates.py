"""The dashboard's numbers: aggregates over the ledger, computed in SQL (SQLAlchemy Core).

Every function takes an ``Engine`` and ``Filters`` and returns plain JSON data. The database does the
summing and counting (no rows are pulled into Python to aggregate), with the same statements on SQLite
and PostgreSQL (``stats.sql`` hides the two places they differ). Spend is ``cost_usd``; the
counterfactual is ``baseline_cost_usd``, priced per row at write time (``counterfactual``); quality is the
feedback score, joined by request id, counted once per feedback entry.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from thalamus.gateway.stats.rollup import EMPTY, Acc, Groups, Level, collect, raw_ranges, split
from thalamus.gateway.stats.sql import PERCENTILES, Filters, floor_div, percentile
from thalamus.ledger import feedback, requests
from thalamus.ledger.rollup import (
    FEEDBACK_COLUMNS,
    HOUR_S,
    METRICS,
    SUM_COLUMNS,
    key_decode,
    key_value,
    rollup_hourly,
    rollup_hourly_router,
)

Bucket = Literal["minute", "hour", "day"]
BUCKET_SECONDS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
MAX_POINTS = 2000  # a series longer than this is refused: pick a coarser bucket or a shorter range
c = requests.c


def _shape(sums: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {name: int(sums[name]) for name in ("requests", "errors", "fallbacks", "prompt_tokens",
                                                               "completion_tokens")}
    out |= {name: float(sums[name]) for name in ("spend_usd", "counterfactual_spend_usd")}
    out["savings_usd"] = out["counterfactual_spend_usd"] - out["spend_usd"]
    n = out["requests"]
    out["error_rate"] = out["errors"] / n if n else None
    out["fallback_rate"] = out["fallbacks"] / n if n else None
    return out


def score_summary(n: int, s: float, sq: float) -> dict[str, Any]:
    """Mean feedback score and its standard error (None when undefined)."""
    if n == 0:
        return {"feedback_n": 0, "score_mean": None, "score_se": None}
    mean = s / n
    var = max(sq / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else None
    return {"feedback_n": n, "score_mean": mean, "score_se": math.sqrt(var / n) if var is not None else None}


def _acc_score(acc: Acc) -> dict[str, Any]:
    return score_summary(int(acc.sums["feedback_n"]), float(acc.sums["score_sum"]), float(acc.sums["score_sq"]))


def _percentiles(counts: dict[int, int]) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": percentile(counts, q) for q in PERCENTILES}


def overview(engine: Engine, f: Filters, use_rollup: bool = True) -> dict[str, Any]:
    """Totals for the filtered requests, feedback, and latency percentiles (ms). ``use_rollup=False``
    reads raw rows only (the reference the rollup-backed answer is tested against)."""
    with engine.connect() as conn:
        (groups,) = collect(conn, f, [Level(())], use_rollup=use_rollup)
    acc = groups.get((), EMPTY)
    out = _shape(acc.sums) | _acc_score(acc)
    out["latency_ms"] = {m: _percentiles(acc.hist[m]) for m in METRICS}
    out["filters"] = f.as_dict()
    return out


def series_range(f: Filters, bucket: str, now: float | None = None) -> tuple[float, float, int]:
    """(first bucket start, end, bucket width) of a dense series; ValueError names the field at fault."""
    if bucket not in BUCKET_SECONDS:
        raise ValueError(f"bucket: {bucket!r} is not one of {sorted(BUCKET_SECONDS)}")
    width = BUCKET_SECONDS[bucket]
    end = f.until if f.until is not None else (now if now is not None else time.time())
    start = f.since if f.since is not None else end - width * {"minute": 180, "hour": 168, "day": 90}[bucket]
    first = math.floor(start / width) * width
    if (end - first) / width > MAX_POINTS:
        raise ValueError(f"bucket: {bucket!r} over this range gives more than {MAX_POINTS} points; "
                         "use a coarser bucket or a later 'since'")
    return first, end, width


SERIES_LEVELS = [Level(("ts", "model"), ("requests", "spend_usd", *FEEDBACK_COLUMNS), ()),
                 Level(("ts",), SUM_COLUMNS, ("ttft", "total"))]


def timeseries(engine: Engine, f: Filters, bucket: str = "hour", now: float | None = None,
               use_rollup: bool = True) -> dict[str, Any]:
    """Per bucket: the overview's sums, latency percentiles, feedback; per bucket and model: requests,
    their share, spend and feedback score. Dense: empty buckets are zeros. Minute buckets read raw rows."""
    first, end, width = series_range(f, bucket, now)
    fr = f.keep(first if f.since is None else f.since, end)
    starts = [first + i * width for i in range(math.ceil((end - first) / width) or 1)]
    with engine.connect() as conn:
        per_model, per_ts = collect(conn, fr, SERIES_LEVELS, width, use_rollup and width % HOUR_S == 0)
    return {"bucket": bucket, "width_s": width, "filters": fr.as_dict(),
            "points": [_point(s, per_ts.get((float(s),), EMPTY)) for s in starts],
            "models": _model_series(starts, per_model)}


def _point(start: float, acc: Acc) -> dict[str, Any]:
    out: dict[str, Any] = {"t": start} | _shape(acc.sums) | _acc_score(acc)
    for m in ("total", "ttft"):
        out[m + "_ms"] = _percentiles(acc.hist[m])
    return out


def _model_series(starts: list[float], per_model: Groups) -> dict[str, Any]:
    totals: dict[float, int] = {}
    for (ts, _), acc in per_model.items():
        totals[ts] = totals.get(ts, 0) + int(acc.sums["requests"])
    names = sorted({str(m) for _, m in per_model if m is not None})
    out: dict[str, Any] = {}
    for name in names:
        points = []
        for s in starts:
            acc = per_model.get((float(s), name), EMPTY)
            n = int(acc.sums["requests"])
            points.append({"t": s, "requests": n, "share": n / totals[s] if totals.get(s) else 0.0,
                           "spend_usd": float(acc.sums["spend_usd"])} | _acc_score(acc))
        out[name] = points
    return out


# a group without a name: requests refused before a model was chosen (400, 404, 413, 429...); no key (auth off)
NO_NAME = {"model": "(refused: no model chosen)", "key": "(no key)"}


def grouped(engine: Engine, f: Filters, by: Literal["model", "key"], use_rollup: bool = True
            ) -> list[dict[str, Any]]:
    """Per model (the one that answered) or per API key: sums, latency mean, feedback; by spend."""
    with engine.connect() as conn:
        (groups,) = collect(conn, f, [Level((by,), SUM_COLUMNS, ())], use_rollup=use_rollup)
    rows = {k: a for k, a in groups.items() if a.sums["requests"]}  # feedback alone cannot make a group
    n_all = sum(int(a.sums["requests"]) for a in rows.values())
    out = []
    for (name,), acc in rows.items():
        s = acc.sums
        label = name if name is not None else NO_NAME[by]
        item = {by: name, "label": label} | _shape(s) | {"share": int(s["requests"]) / n_all if n_all else 0.0,
                                         "mean_total_ms": s["total_ms_sum"] / s["total_ms_n"] if s["total_ms_n"]
                                         else None,
                                         "mean_predicted_quality": s["pq_sum"] / s["pq_n"] if s["pq_n"] else None}
        out.append(item | _acc_score(acc))
    return sorted(out, key=lambda x: (-x["spend_usd"], -x["requests"], str(x[by])))


CALIBRATION_FEEDBACK = 5_000  # feedback entries a calibration reads: ten bins need hundreds each, not millions


def calibration(engine: Engine, f: Filters, bins: int = 10, limit: int = CALIBRATION_FEEDBACK
                ) -> list[dict[str, Any]]:
    """Predicted quality of the answering model vs the feedback it got, in equal-width bins of [0, 1],
    over the feedback of the newest scored requests of the range, at most ``limit`` entries: a bounded
    read (newest first by ``ix_requests_created_at``, stopping at the limit) where all of them would
    join every scored row of the range."""
    pq = c.predicted_quality
    newest = (sa.select(pq.label("pq"), feedback.c.score.label("score"))
              .select_from(feedback.join(requests, requests.c.id == feedback.c.request_id))
              .where(*f.where(), pq.is_not(None), pq >= 0, pq <= 1)
              .order_by(c.created_at.desc()).limit(limit).subquery())
    b = sa.case((newest.c.pq >= 1.0, bins - 1), else_=floor_div(newest.c.pq, 1.0 / bins)).label("bin")
    query = (sa.select(b, sa.func.count().label("n"), sa.func.avg(newest.c.pq).label("predicted"),
                       sa.func.avg(newest.c.score).label("observed")).group_by(b).order_by(b))
    with engine.connect() as conn:
        return [{"bin": int(r.bin), "lo": int(r.bin) / bins, "hi": (int(r.bin) + 1) / bins, "n": int(r.n),
                 "predicted": float(r.predicted), "observed": float(r.observed)} for r in conn.execute(query)]


MENU_LIMIT = 500
_MENUS = (("routers", "router", c.router), ("keys", "api_key_id", c.api_key_id), ("models", "chosen_model",
                                                                                   c.chosen_model))


def filter_options(engine: Engine, f: Filters, use_rollup: bool = True) -> dict[str, list[str]]:
    """The routers, keys and models present in the time range (for the page's filter menus): whole hours
    from the rollups' key columns, the partial hours at the ends from raw rows (as ``collect`` splits)."""
    parts = split(f.since, f.until, use_rollup)
    found: dict[str, set[str]] = {name: set() for name, _, _ in _MENUS}
    with engine.connect() as conn:
        for name, column, raw_col in _MENUS:
            if parts.hours is not None:
                table = rollup_hourly if column == "api_key_id" or f.scope is not None else rollup_hourly_router
                t = table.c
                lo, hi = parts.hours
                where = [t[column] != key_value(None), *f.scoped(t.api_key_id, key_value)] if (
                    table is rollup_hourly) else [t[column] != key_value(None)]
                where += ([t.hour >= lo] if lo is not None else []) + ([t.hour < hi] if hi is not None else [])
                query = sa.select(t[column]).where(*where).distinct().limit(MENU_LIMIT)
                found[name] |= {str(key_decode(v)) for v in conn.execute(query).scalars()}
            if parts.raw:
                query = (sa.select(raw_col).where(raw_ranges(parts.raw), raw_col.is_not(None),
                                                  *f.scoped(c.api_key_id)).distinct()
                         .limit(MENU_LIMIT))
                found[name] |= {str(v) for v in conn.execute(query).scalars()}
    return {name: sorted(values)[:MENU_LIMIT] for name, values in found.items()}


def _num(value: Any) -> float | None:
    return float(value) if value is not None else None
