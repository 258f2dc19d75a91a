"""The dashboard's numbers: aggregates over the ledger, computed in SQL (SQLAlchemy Core).

Every function takes an ``Engine`` and ``Filters`` and returns plain JSON data. The database does the
summing and counting (no rows are pulled into Python to aggregate), with the same statements on SQLite
and PostgreSQL (``stats_sql`` hides the two places they differ). Spend is ``cost_usd``; the
counterfactual is ``baseline_cost_usd``, priced per row at write time (``counterfactual``); quality is the
feedback score, joined by request id, counted once per feedback entry.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from thalamus.gateway.ledger import feedback, requests
from thalamus.gateway.stats_sql import (
    PERCENTILES,
    Filters,
    fell_back,
    floor_div,
    is_error,
    latency_bucket,
    percentile,
    total,
)

Bucket = Literal["minute", "hour", "day"]
BUCKET_SECONDS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
MAX_POINTS = 2000  # a series longer than this is refused: pick a coarser bucket or a shorter range
LATENCIES = ("routing_ms", "ttft_ms", "total_ms")
c = requests.c


def _sums() -> list[ColumnElement[Any]]:
    return [sa.func.count().label("requests"), total(is_error()).label("errors"),
            total(fell_back()).label("fallbacks"), total(c.prompt_tokens).label("prompt_tokens"),
            total(c.completion_tokens).label("completion_tokens"), total(c.cost_usd).label("spend_usd"),
            total(c.baseline_cost_usd).label("counterfactual_spend_usd")]


def _shape(rec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": int(rec.requests), "errors": int(rec.errors), "fallbacks": int(rec.fallbacks),
           "prompt_tokens": int(rec.prompt_tokens), "completion_tokens": int(rec.completion_tokens),
           "spend_usd": float(rec.spend_usd), "counterfactual_spend_usd": float(rec.counterfactual_spend_usd)}
    out["savings_usd"] = out["counterfactual_spend_usd"] - out["spend_usd"]
    n = out["requests"]
    out["error_rate"] = out["errors"] / n if n else None
    out["fallback_rate"] = out["fallbacks"] / n if n else None
    return out


def _feedback_cols() -> list[ColumnElement[Any]]:
    return [sa.func.count(feedback.c.score).label("feedback_n"),
            total(feedback.c.score).label("score_sum"),
            total(feedback.c.score * feedback.c.score).label("score_sq")]


def _score(n: int, s: float, sq: float) -> dict[str, Any]:
    """Mean feedback score and its standard error (None when undefined)."""
    if n == 0:
        return {"feedback_n": 0, "score_mean": None, "score_se": None}
    mean = s / n
    var = max(sq / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else None
    return {"feedback_n": n, "score_mean": mean, "score_se": math.sqrt(var / n) if var is not None else None}


def _joined(f: Filters) -> sa.Select[Any]:
    return sa.select(*_feedback_cols()).select_from(
        feedback.join(requests, requests.c.id == feedback.c.request_id)).where(*f.where())


def latency_histogram(conn: Connection, f: Filters, column: str) -> dict[int, int]:
    col = c[column]
    bucket = latency_bucket(col).label("b")
    query = sa.select(bucket, sa.func.count()).where(*f.where(), col.is_not(None)).group_by(bucket)
    return {int(b): int(n) for b, n in conn.execute(query)}


def _percentiles(counts: dict[int, int]) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": percentile(counts, q) for q in PERCENTILES}


def overview(engine: Engine, f: Filters) -> dict[str, Any]:
    """Totals for the filtered requests, feedback, and latency percentiles (ms)."""
    with engine.connect() as conn:
        out = _shape(conn.execute(sa.select(*_sums()).where(*f.where())).one())
        fb = conn.execute(_joined(f)).one()
        out |= _score(int(fb.feedback_n), float(fb.score_sum), float(fb.score_sq))
        out["latency_ms"] = {name.removesuffix("_ms"): _percentiles(latency_histogram(conn, f, name))
                             for name in LATENCIES}
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


def timeseries(engine: Engine, f: Filters, bucket: str = "hour", now: float | None = None) -> dict[str, Any]:
    """Per bucket: the overview's sums, latency percentiles, feedback; per bucket and model: requests,
    their share, spend and feedback score. Dense: empty buckets are zeros."""
    first, end, width = series_range(f, bucket, now)
    fr = Filters(first if f.since is None else f.since, end, f.router, f.key, f.model)
    t = (floor_div(c.created_at, width) * width).label("ts")
    starts = [first + i * width for i in range(math.ceil((end - first) / width) or 1)]
    with engine.connect() as conn:
        sums = {float(r[0]): r for r in conn.execute(sa.select(t, *_sums()).where(*fr.where()).group_by(t))}
        fbt = (floor_div(requests.c.created_at, width) * width).label("ts")
        fbq = sa.select(fbt, c.chosen_model, *_feedback_cols()).select_from(
            feedback.join(requests, requests.c.id == feedback.c.request_id)).where(*fr.where()).group_by(
            fbt, c.chosen_model)
        scores = list(conn.execute(fbq))
        per_model = list(conn.execute(sa.select(t, c.chosen_model, sa.func.count().label("n"),
                                                total(c.cost_usd).label("spend")).where(*fr.where())
                                      .group_by(t, c.chosen_model)))
        lat = {name: _series_histogram(conn, fr, name, width) for name in ("total_ms", "ttft_ms")}
    return {"bucket": bucket, "width_s": width, "filters": fr.as_dict(),
            "points": [_point(s, sums.get(s), lat, scores) for s in starts],
            "models": _model_series(starts, per_model, scores)}


def _series_histogram(conn: Connection, f: Filters, column: str, width: int) -> dict[float, dict[int, int]]:
    col = c[column]
    t = (floor_div(c.created_at, width) * width).label("ts")
    b = latency_bucket(col).label("b")
    out: dict[float, dict[int, int]] = {}
    for tv, bv, n in conn.execute(sa.select(t, b, sa.func.count()).where(*f.where(), col.is_not(None))
                                  .group_by(t, b)):
        out.setdefault(float(tv), {})[int(bv)] = int(n)
    return out


def _point(start: float, rec: Any, lat: dict[str, dict[float, dict[int, int]]], scores: list[Any]) -> dict[str, Any]:
    zero = {"requests": 0, "errors": 0, "fallbacks": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "spend_usd": 0.0, "counterfactual_spend_usd": 0.0}
    out: dict[str, Any] = {"t": start} | _shape(rec if rec is not None else _Rec(zero))
    mine = [s for s in scores if float(s.ts) == start]
    out |= _score(sum(int(s.feedback_n) for s in mine), sum(float(s.score_sum) for s in mine),
                  sum(float(s.score_sq) for s in mine))
    for name, hist in lat.items():
        out[name.removesuffix("_ms") + "_ms"] = _percentiles(hist.get(start, {}))
    return out


class _Rec:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _model_series(starts: list[float], per_model: list[Any], scores: list[Any]) -> dict[str, Any]:
    totals: dict[float, int] = {}
    for r in per_model:
        totals[float(r.ts)] = totals.get(float(r.ts), 0) + int(r.n)
    names = sorted({str(r.chosen_model) for r in per_model if r.chosen_model is not None})
    out: dict[str, Any] = {}
    for name in names:
        counts = {float(r.ts): r for r in per_model if r.chosen_model == name}
        fb = {float(s.ts): s for s in scores if s.chosen_model == name}
        points = []
        for s in starts:
            r, q = counts.get(s), fb.get(s)
            n = int(r.n) if r is not None else 0
            point = {"t": s, "requests": n, "share": n / totals[s] if totals.get(s) else 0.0,
                     "spend_usd": float(r.spend) if r is not None else 0.0}
            points.append(point | (_score(int(q.feedback_n), float(q.score_sum), float(q.score_sq))
                                   if q is not None else _score(0, 0.0, 0.0)))
        out[name] = points
    return out


def grouped(engine: Engine, f: Filters, by: Literal["model", "key"]) -> list[dict[str, Any]]:
    """Per model (the one that answered) or per API key: sums, latency mean, feedback; by spend."""
    col = c.chosen_model if by == "model" else c.api_key_id
    extra = [sa.func.avg(c.total_ms).label("mean_total_ms"), sa.func.avg(c.predicted_quality).label("mean_pq")]
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(col.label("name"), *_sums(), *extra).where(*f.where()).group_by(col)))
        fbq = sa.select(col.label("name"), *_feedback_cols()).select_from(
            feedback.join(requests, requests.c.id == feedback.c.request_id)).where(*f.where()).group_by(col)
        fb = {r.name: r for r in conn.execute(fbq)}
    n_all = sum(int(r.requests) for r in rows)
    out = []
    for r in rows:
        item = {by: r.name} | _shape(r) | {"share": int(r.requests) / n_all if n_all else 0.0,
                                           "mean_total_ms": _num(r.mean_total_ms),
                                           "mean_predicted_quality": _num(r.mean_pq)}
        q = fb.get(r.name)
        item |= _score(int(q.feedback_n), float(q.score_sum), float(q.score_sq)) if q else _score(0, 0.0, 0.0)
        out.append(item)
    return sorted(out, key=lambda x: (-x["spend_usd"], -x["requests"], str(x[by])))


def calibration(engine: Engine, f: Filters, bins: int = 10) -> list[dict[str, Any]]:
    """Predicted quality of the answering model vs the feedback it got, in equal-width bins of [0, 1]."""
    pq = c.predicted_quality
    b = sa.case((pq >= 1.0, bins - 1), else_=floor_div(pq, 1.0 / bins)).label("bin")
    query = (sa.select(b, sa.func.count().label("n"), sa.func.avg(pq).label("predicted"),
                       sa.func.avg(feedback.c.score).label("observed"))
             .select_from(feedback.join(requests, requests.c.id == feedback.c.request_id))
             .where(*f.where(), pq.is_not(None), pq >= 0, pq <= 1).group_by(b).order_by(b))
    with engine.connect() as conn:
        return [{"bin": int(r.bin), "lo": int(r.bin) / bins, "hi": (int(r.bin) + 1) / bins, "n": int(r.n),
                 "predicted": float(r.predicted), "observed": float(r.observed)} for r in conn.execute(query)]


def filter_options(engine: Engine, f: Filters) -> dict[str, list[str]]:
    """The routers, keys and models present in the time range (for the page's filter menus)."""
    window = Filters(f.since, f.until)
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for name, col in (("routers", c.router), ("keys", c.api_key_id), ("models", c.chosen_model)):
            query = sa.select(col).where(*window.where(), col.is_not(None)).distinct().order_by(col).limit(500)
            out[name] = [str(v) for v in conn.execute(query).scalars()]
    return out


def _num(value: Any) -> float | None:
    return float(value) if value is not None else None
