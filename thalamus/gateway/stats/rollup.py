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

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from thalamus.gateway.stats.sql import Filters, fell_back, floor_div, is_error, latency_bucket, no_index, total
from thalamus.ledger import feedback, requests
from thalamus.ledger.rollup import (
    FEEDBACK_COLUMNS,
    HOUR_S,
    METRICS,
    N_BUCKETS,
    SUM_COLUMNS,
    key_decode,
    key_value,
    lat_column,
    rollup_hourly,
    rollup_hourly_router,
)

c = requests.c
FLOAT_COLUMNS = frozenset({"spend_usd", "counterfactual_spend_usd", "score_sum", "score_sq", "total_ms_sum",
                           "pq_sum"})
RAW_COLUMNS: dict[str, ColumnElement[Any]] = {"model": c.chosen_model, "key": no_index(c.api_key_id)}
ROLLUP_COLUMNS = {"model": "chosen_model", "key": "api_key_id"}


_ZERO_SUMS: dict[str, float] = dict.fromkeys(SUM_COLUMNS, 0)
_FLOAT_INDEX = {name: name in FLOAT_COLUMNS for name in SUM_COLUMNS}


def _no_hist() -> dict[str, dict[int, int]]:
    return {m: {} for m in METRICS}


@dataclass
class Acc:
    """Counts and sums of one group (the rollup's columns) and its latency histograms per metric."""

    sums: dict[str, float] = field(default_factory=_ZERO_SUMS.copy)
    hist: dict[str, dict[int, int]] = field(default_factory=_no_hist)

    def add(self, name: str, value: Any) -> None:
        if value is not None:
            self.sums[name] += float(value) if _FLOAT_INDEX[name] else int(value)

    def count(self, metric: str, bucket: int, n: int) -> None:
        if n:
            counts = self.hist[metric]
            counts[bucket] = counts.get(bucket, 0) + n

    def merge(self, other: Acc) -> None:
        sums = self.sums
        for name, value in other.sums.items():
            if value:
                sums[name] += value
        for metric, counts in other.hist.items():
            mine = self.hist[metric]
            for bucket, n in counts.items():
                mine[bucket] = mine.get(bucket, 0) + n


EMPTY = Acc()  # what a group with no rows reads as; never modified


Groups = dict[tuple[Any, ...], Acc]


def acc_of(groups: Groups, key: tuple[Any, ...]) -> Acc:
    """The group's accumulator, created on first use (setdefault would build a throwaway Acc per call)."""
    acc = groups.get(key)
    if acc is None:
        acc = groups[key] = Acc()
    return acc


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
    table = rollup_hourly if f.key is not None or f.scope is not None or "key" in level.by else rollup_hourly_router
    t = table.c
    groups: list[ColumnElement[Any]] = []
    for name in level.by:
        groups.append((floor_div(t.hour, width) * width).label("ts") if name == "ts"
                      else t[ROLLUP_COLUMNS[name]].label(name))
    lat = [lat_column(m, b) for m in level.metrics for b in range(N_BUCKETS)]
    where = f.scoped(t.api_key_id, key_value) if table is rollup_hourly else []
    where += [t.hour >= hours[0]] if hours[0] is not None else []
    where += [t.hour < hours[1]] if hours[1] is not None else []
    for column, value in (("router", f.router), ("api_key_id", f.key), ("chosen_model", f.model)):
        if value is not None:
            where.append(t[column] == key_value(value))
    query = sa.select(*groups, *(sa.func.sum(t[n]).label(n) for n in (*level.columns, *lat))).where(*where)
    out: Groups = {}
    nb, ncol = len(level.by), len(level.columns)
    is_float = [_FLOAT_INDEX[n] for n in level.columns]
    # plain tuples, not mappings: this loop reads ~100 columns of up to a few thousand rows per call
    for row in conn.execute(query.group_by(*groups) if groups else query):
        acc = acc_of(out, tuple(float(row[i]) if n == "ts" else key_decode(row[i]) for i, n in enumerate(level.by)))
        sums = acc.sums
        for j, name in enumerate(level.columns):
            value = row[nb + j]
            if value is not None:
                sums[name] += float(value) if is_float[j] else int(value)
        k = nb + ncol
        for m in level.metrics:
            counts = acc.hist[m]
            for b in range(N_BUCKETS):
                n = row[k + b]
                if n:
                    counts[b] = counts.get(b, 0) + int(n)
            k += N_BUCKETS
    return out


@functools.cache
def _raw_sums() -> tuple[ColumnElement[Any], ...]:
    values = {"requests": sa.func.count(), "errors": total(is_error()), "fallbacks": total(fell_back()),
              "prompt_tokens": total(c.prompt_tokens), "completion_tokens": total(c.completion_tokens),
              "spend_usd": total(c.cost_usd), "counterfactual_spend_usd": total(c.baseline_cost_usd),
              "total_ms_n": sa.func.count(c.total_ms), "total_ms_sum": total(c.total_ms),
              "pq_n": sa.func.count(c.predicted_quality), "pq_sum": total(c.predicted_quality)}
    return tuple(v.label(k) for k, v in values.items())


@functools.cache
def _bucket(metric: str) -> ColumnElement[Any]:
    """The latency bucket of one metric (-1 for NULL): a nested CASE, built once per process."""
    column = c[f"{metric}_ms"]
    return sa.case((column.is_(None), -1), else_=latency_bucket(column)).label(f"b_{metric}")


@functools.cache
def _raw_group(name: str, width: int) -> ColumnElement[Any]:
    return (floor_div(c.created_at, width) * width).label("ts") if name == "ts" else RAW_COLUMNS[name].label(name)


def raw_ranges(ranges: Sequence[tuple[float | None, float | None]]) -> ColumnElement[bool]:
    """created_at in any of the ranges [lo, hi): one statement reads both ends of a split (an index OR)."""
    parts = []
    for lo, hi in ranges:
        bounds = ([c.created_at >= lo] if lo is not None else []) + ([c.created_at < hi] if hi is not None else [])
        parts.append(sa.and_(*bounds) if bounds else sa.true())
    return parts[0] if len(parts) == 1 else sa.or_(*parts)


def _raw(conn: Connection, f: Filters, ranges: Sequence[tuple[float | None, float | None]], by: tuple[str, ...],
         metrics: Sequence[str], width: int) -> Groups:
    """Raw rows in ``ranges`` (f's time range is ignored, its other filters apply), grouped by ``by``:
    sums, latency buckets, and feedback."""
    groups = [_raw_group(n, width) for n in by]
    buckets = [_bucket(m) for m in metrics]
    where = [*f.keep(None, None).where(), raw_ranges(ranges)]
    query = sa.select(*groups, *buckets, *_raw_sums()).where(*where).group_by(*groups, *buckets)
    out: Groups = {}
    for rec in conn.execute(query).mappings():
        acc = acc_of(out, tuple(float(rec[n]) if n == "ts" else rec[n] for n in by))
        for name in _RAW_SUM_NAMES:
            acc.add(name, rec[name])
        for m in metrics:
            if int(rec[f"b_{m}"]) >= 0:
                acc.count(m, int(rec[f"b_{m}"]), int(rec["requests"]))
    base = [*f.keep(None, None).where()]
    # the feedback join one range at a time: with an OR of ranges SQLite's planner scans all of feedback
    # and looks each request up (1.2 s at 200,000 feedback rows) instead of starting from the time index
    for one in ranges:
        fb = sa.select(*groups, sa.func.count(feedback.c.score).label("feedback_n"),
                       total(feedback.c.score).label("score_sum"),
                       total(feedback.c.score * feedback.c.score).label("score_sq")).select_from(
            feedback.join(requests, requests.c.id == feedback.c.request_id)).where(*base, raw_ranges([one]))
        for rec in conn.execute(fb.group_by(*groups) if groups else fb).mappings():
            acc = acc_of(out, tuple(float(rec[n]) if n == "ts" else rec[n] for n in by))
            for name in FEEDBACK_COLUMNS:
                acc.add(name, rec[name])
    return out


_RAW_SUM_NAMES = tuple(name for name in SUM_COLUMNS if name not in FEEDBACK_COLUMNS)


def _project(fine: Groups, fine_by: tuple[str, ...], by: tuple[str, ...]) -> Groups:
    if by == fine_by:
        return fine
    index = [fine_by.index(n) for n in by]
    out: Groups = {}
    for key, acc in fine.items():
        acc_of(out, tuple(key[i] for i in index)).merge(acc)
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
    if not parts.raw:
        return out
    fine = levels[0].by
    metrics = sorted({m for level in levels for m in level.metrics}, key=METRICS.index)
    raw = _raw(conn, f, parts.raw, fine, metrics, width)
    for i, level in enumerate(levels):
        for key, acc in _project(raw, fine, level.by).items():
            acc_of(out[i], key).merge(acc)
    return out
