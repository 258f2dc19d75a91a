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
from sqlalchemy.engine import Engine

from thalamus.gateway.ledger import feedback, requests
from thalamus.gateway.ledger_rollup import FEEDBACK_COLUMNS, HOUR_S, METRICS, SUM_COLUMNS
from thalamus.gateway.stats_rollup import Acc, Groups, Level, collect
from thalamus.gateway.stats_sql import PERCENTILES, Filters, floor_div, percentile

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


def _score(n: int, s: float, sq: float) -> dict[str, Any]:
    """Mean feedback score and its standard error (None when undefined)."""
    if n == 0:
        return {"feedback_n": 0, "score_mean": None, "score_se": None}
    mean = s / n
    var = max(sq / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else None
    return {"feedback_n": n, "score_mean": mean, "score_se": math.sqrt(var / n) if var is not None else None}


def _acc_score(acc: Acc) -> dict[str, Any]:
    return _score(int(acc.sums["feedback_n"]), float(acc.sums["score_sum"]), float(acc.sums["score_sq"]))


def _percentiles(counts: dict[int, int]) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": percentile(counts, q) for q in PERCENTILES}


def overview(engine: Engine, f: Filters, use_rollup: bool = True) -> dict[str, Any]:
    """Totals for the filtered requests, feedback, and latency percentiles (ms). ``use_rollup=False``
    reads raw rows only (the reference the rollup-backed answer is tested against)."""
    with engine.connect() as conn:
        (groups,) = collect(conn, f, [Level(())], use_rollup=use_rollup)
    acc = groups.get((), Acc())
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
    fr = Filters(first if f.since is None else f.since, end, f.router, f.key, f.model)
    starts = [first + i * width for i in range(math.ceil((end - first) / width) or 1)]
    with engine.connect() as conn:
        per_model, per_ts = collect(conn, fr, SERIES_LEVELS, width, use_rollup and width % HOUR_S == 0)
    return {"bucket": bucket, "width_s": width, "filters": fr.as_dict(),
            "points": [_point(s, per_ts.get((float(s),), Acc())) for s in starts],
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
            acc = per_model.get((float(s), name), Acc())
            n = int(acc.sums["requests"])
            points.append({"t": s, "requests": n, "share": n / totals[s] if totals.get(s) else 0.0,
                           "spend_usd": float(acc.sums["spend_usd"])} | _acc_score(acc))
        out[name] = points
    return out


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
        item = {by: name} | _shape(s) | {"share": int(s["requests"]) / n_all if n_all else 0.0,
                                         "mean_total_ms": s["total_ms_sum"] / s["total_ms_n"] if s["total_ms_n"]
                                         else None,
                                         "mean_predicted_quality": s["pq_sum"] / s["pq_n"] if s["pq_n"] else None}
        out.append(item | _acc_score(acc))
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
