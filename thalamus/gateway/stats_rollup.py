"""Reading the hourly rollups: whole hours from the rollup tables, the partial hours at a range's two ends
from raw rows, added into the numbers a scan of the raw rows gives.

A range [since, until) is split at hour boundaries (``split``): the hours lying wholly inside it are read
from ``rollup_hourly_router`` (no key filter, no grouping by key) or ``rollup_hourly``, the rest from
``requests``. Counts, token sums and latency histogram buckets are then identical to a raw scan, so the
percentiles are too; float sums (spend, scores) equal it up to summation order (SQL leaves that open
anyway). Raw ends are read in one grouped statement per range (sums and latency buckets together) plus
one for the feedback, at the finest grouping asked for, then projected onto each coarser one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from thalamus.gateway.ledger import feedback, requests
from thalamus.gateway.ledger_rollup import (
    FEEDBACK_COLUMNS,
    HOUR_S,
    LAT_COLUMNS,
    METRICS,
    SUM_COLUMNS,
    key_decode,
    key_value,
    lat_column,
    rollup_hourly,
    rollup_hourly_router,
)
from thalamus.gateway.stats_sql import Filters, fell_back, floor_div, is_error, latency_bucket, total

c = requests.c
FLOAT_COLUMNS = frozenset({"spend_usd", "counterfactual_spend_usd", "score_sum", "score_sq", "total_ms_sum",
                           "pq_sum"})
RAW_COLUMNS = {"model": c.chosen_model, "key": c.api_key_id}
ROLLUP_COLUMNS = {"model": "chosen_model", "key": "api_key_id"}


@dataclass
class Acc:
    """Counts and sums of one group (the rollup's columns) and its latency histograms per metric."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUM_COLUMNS, 0))
    hist: dict[str, dict[int, int]] = field(default_factory=lambda: {m: {} for m in METRICS})

    def add(self, name: str, value: Any) -> None:
        if value is not None:
            self.sums[name] += float(value) if name in FLOAT_COLUMNS else int(value)

    def count(self, metric: str, bucket: int, n: int) -> None:
        if n:
            self.hist[metric][bucket] = self.hist[metric].get(bucket, 0) + n

    def merge(self, other: Acc) -> None:
        for name, value in other.sums.items():
            self.sums[name] += value
        for metric, counts in other.hist.items():
            for bucket, n in counts.items():
                self.count(metric, bucket, n)


Groups = dict[tuple[Any, ...], Acc]


@dataclass(frozen=True)
class Level:
    """One grouping asked for: ``by`` of "ts", "model", "key"; the rollup columns and metrics it needs."""

    by: tuple[str, ...]
    columns: tuple[str, ...] = SUM_COLUMNS
    metrics: tuple[str, ...] = METRICS


@dataclass(frozen=True)
class Split:
    hours: tuple[int | None, int | None] | None  # [first, end) of the whole hours read from the rollup
    raw: tuple[tuple[float | None, float | None], ...]  # the ranges read from raw rows


def split(since: float | None, until: float | None, use_rollup: bool = True) -> Split:
    """The whole hours inside [since, until) and the partial ranges at its ends."""
    if not use_rollup:
        return Split(None, ((since, until),))
    lo = None if since is None else math.ceil(since / HOUR_S) * HOUR_S
    hi = None if until is None else math.floor(until / HOUR_S) * HOUR_S
    while since is not None and lo is not None and lo < since:  # never below since, whatever the rounding
        lo += HOUR_S
    while until is not None and hi is not None and hi > until:
        hi -= HOUR_S
    if lo is not None and hi is not None and lo >= hi:
        return Split(None, ((since, until),))
    raw = []
    if since is not None and lo is not None and since < lo:
        raw.append((since, float(lo)))
    if until is not None and hi is not None and hi < until:
        raw.append((float(hi), until))
    return Split((lo, hi), tuple(raw))


def _rollup_level(conn: Connection, f: Filters, hours: tuple[int | None, int | None], level: Level,
                  width: int) -> Groups:
    table = rollup_hourly if f.key is not None or "key" in level.by else rollup_hourly_router
    t = table.c
    groups: list[ColumnElement[Any]] = []
    for name in level.by:
        groups.append((floor_div(t.hour, width) * width).label("ts") if name == "ts"
                      else t[ROLLUP_COLUMNS[name]].label(name))
    lat = [lat_column(m, b) for m in level.metrics for b in range(len(LAT_COLUMNS) // len(METRICS))]
    where = [t.hour >= hours[0]] if hours[0] is not None else []
    where += [t.hour < hours[1]] if hours[1] is not None else []
    for column, value in (("router", f.router), ("api_key_id", f.key), ("chosen_model", f.model)):
        if value is not None:
            where.append(t[column] == key_value(value))
    query = sa.select(*groups, *(sa.func.sum(t[n]).label(n) for n in (*level.columns, *lat))).where(*where)
    out: Groups = {}
    for rec in conn.execute(query.group_by(*groups) if groups else query).mappings():
        key = tuple(float(rec["ts"]) if n == "ts" else key_decode(rec[n]) for n in level.by)
        acc = out.setdefault(key, Acc())
        for name in level.columns:
            acc.add(name, rec[name])
        for m in level.metrics:
            for b in range(len(LAT_COLUMNS) // len(METRICS)):
                acc.count(m, b, int(rec[lat_column(m, b)] or 0))
    return out


def _raw_sums() -> list[ColumnElement[Any]]:
    values = {"requests": sa.func.count(), "errors": total(is_error()), "fallbacks": total(fell_back()),
              "prompt_tokens": total(c.prompt_tokens), "completion_tokens": total(c.completion_tokens),
              "spend_usd": total(c.cost_usd), "counterfactual_spend_usd": total(c.baseline_cost_usd),
              "total_ms_n": sa.func.count(c.total_ms), "total_ms_sum": total(c.total_ms),
              "pq_n": sa.func.count(c.predicted_quality), "pq_sum": total(c.predicted_quality)}
    return [v.label(k) for k, v in values.items()]


def _raw_groups(by: Sequence[str], width: int) -> list[ColumnElement[Any]]:
    return [(floor_div(c.created_at, width) * width).label("ts") if n == "ts" else RAW_COLUMNS[n].label(n)
            for n in by]


def _raw(conn: Connection, fr: Filters, by: tuple[str, ...], metrics: Sequence[str], width: int) -> Groups:
    """One range of raw rows, grouped by ``by``: sums, latency buckets, and feedback."""
    groups = _raw_groups(by, width)
    buckets = [sa.case((c[f"{m}_ms"].is_(None), -1), else_=latency_bucket(c[f"{m}_ms"])).label(f"b_{m}")
               for m in metrics]
    query = sa.select(*groups, *buckets, *_raw_sums()).where(*fr.where()).group_by(*groups, *buckets)
    out: Groups = {}
    for rec in conn.execute(query).mappings():
        acc = out.setdefault(tuple(float(rec[n]) if n == "ts" else rec[n] for n in by), Acc())
        for name in SUM_COLUMNS:
            if name not in FEEDBACK_COLUMNS:
                acc.add(name, rec[name])
        for m in metrics:
            if int(rec[f"b_{m}"]) >= 0:
                acc.count(m, int(rec[f"b_{m}"]), int(rec["requests"]))
    fb = sa.select(*groups, sa.func.count(feedback.c.score).label("feedback_n"),
                   total(feedback.c.score).label("score_sum"),
                   total(feedback.c.score * feedback.c.score).label("score_sq")).select_from(
        feedback.join(requests, requests.c.id == feedback.c.request_id)).where(*fr.where())
    for rec in conn.execute(fb.group_by(*groups) if groups else fb).mappings():
        acc = out.setdefault(tuple(float(rec[n]) if n == "ts" else rec[n] for n in by), Acc())
        for name in FEEDBACK_COLUMNS:
            acc.add(name, rec[name])
    return out


def _project(fine: Groups, fine_by: tuple[str, ...], by: tuple[str, ...]) -> Groups:
    index = [fine_by.index(n) for n in by]
    out: Groups = {}
    for key, acc in fine.items():
        out.setdefault(tuple(key[i] for i in index), Acc()).merge(acc)
    return out


def collect(conn: Connection, f: Filters, levels: Sequence[Level], width: int = HOUR_S,
            use_rollup: bool = True) -> list[Groups]:
    """Each level's groups over f's range: whole hours from a rollup, the ends from raw rows. ``width``
    is the "ts" bucket (a multiple of an hour unless use_rollup is False); the first level is the finest."""
    parts = split(f.since, f.until, use_rollup)
    out: list[Groups] = [{} for _ in levels]
    for i, level in enumerate(levels):
        if parts.hours is not None:
            out[i] = _rollup_level(conn, f, parts.hours, level, width)
    fine = levels[0].by
    metrics = sorted({m for level in levels for m in level.metrics}, key=METRICS.index)
    for lo, hi in parts.raw:
        raw = _raw(conn, Filters(lo, hi, f.router, f.key, f.model), fine, metrics, width)
        for i, level in enumerate(levels):
            for key, acc in _project(raw, fine, level.by).items():
                out[i].setdefault(key, Acc()).merge(acc)
    return out
