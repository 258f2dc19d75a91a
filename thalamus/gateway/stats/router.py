"""Per-router numbers for the dashboard's router panels: realized cost/quality points, serving vs candidate.

``router_points``: per router, and per knob value it ran with, the mean cost of an answered request and
the mean feedback score of its feedback (over the newest ``POINTS_ROWS`` routed requests of the range),
to plot against the artifact's offline curve
(``thalamus.training.pareto``). ``rollout_compare``: while a candidate artifact is in shadow or canary
mode (``gateway/learning/rollout.py``), how often the shadow agrees with the serving choice, what each side's pick
was predicted to be worth, and what canary and serving traffic realized.

Counts and sums are SQL aggregates (portable, as in ``stats``). Predicted costs live only in the
``candidates`` JSON, which SQLite and PostgreSQL parse differently: those means come from Python over
the newest ``SAMPLE`` rows of each side, and say how many rows they used. The serving artifact's
predictions are the only ones logged for shadow rows, so both sides' picks are priced by them.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from thalamus.gateway.stats.aggregates import score_summary
from thalamus.gateway.stats.sql import Filters, total
from thalamus.ledger import feedback, requests

c = requests.c
SAMPLE = 5000  # rows per side read for the predicted-cost means
POINTS_ROWS = 50_000  # newest routed requests the router points read: a page refreshing every 30 s
MAX_GROUPS = 500  # distinct (router, knob) texts read per call: a knob with free-form lists can vary a lot


def _sums(src: Any) -> list[ColumnElement[Any]]:
    values = {"requests": sa.func.count(), "errors": total(sa.case((src.status >= 400, 1), else_=0)),
              "answered": sa.func.count(src.cost_usd), "spend": total(src.cost_usd),
              "pq_n": sa.func.count(src.predicted_quality), "pq_sum": total(src.predicted_quality),
              "ms_n": sa.func.count(src.total_ms), "ms_sum": total(src.total_ms)}
    return [v.label(k) for k, v in values.items()]


def _grouped(conn: Connection, groups: list[ColumnElement[Any]], where: list[ColumnElement[bool]],
             src: Any = None) -> dict[tuple[Any, ...], dict[str, float]]:
    """Request sums and feedback sums per group (feedback counted once per entry). ``src``: a subquery of
    request rows to read instead of ``requests`` (its columns named as the table's; ``where`` then
    applies to it)."""
    src = requests if src is None else src
    names = [str(g.key) for g in groups]
    out: dict[tuple[Any, ...], dict[str, float]] = {}
    query = sa.select(*groups, *_sums(src.c)).select_from(src).where(*where).group_by(*groups).limit(MAX_GROUPS)
    for rec in conn.execute(query).mappings():
        out[tuple(rec[n] for n in names)] = {k: float(rec[k] or 0) for k in rec if k not in names} | {
            "fb_n": 0.0, "fb_sum": 0.0, "fb_sq": 0.0}
    fb = (sa.select(*groups, sa.func.count(feedback.c.score).label("fb_n"), total(feedback.c.score).label("fb_sum"),
                    total(feedback.c.score * feedback.c.score).label("fb_sq"))
          .select_from(feedback.join(src, src.c.id == feedback.c.request_id))
          .where(*where).group_by(*groups).limit(MAX_GROUPS))
    for rec in conn.execute(fb).mappings():
        key = tuple(rec[n] for n in names)
        if key in out:
            out[key] |= {k: float(rec[k] or 0) for k in ("fb_n", "fb_sum", "fb_sq")}
    return out


def _merge(into: dict[str, float], other: dict[str, float]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0.0) + v


def _point(s: dict[str, float]) -> dict[str, Any]:
    """Realized numbers of one group: mean cost per answered request, mean feedback score."""
    return {"requests": int(s["requests"]), "errors": int(s["errors"]), "answered": int(s["answered"]),
            "spend_usd": s["spend"], "mean_cost_usd": s["spend"] / s["answered"] if s["answered"] else None,
            "mean_predicted_quality": s["pq_sum"] / s["pq_n"] if s["pq_n"] else None,
            "mean_total_ms": s["ms_sum"] / s["ms_n"] if s["ms_n"] else None} | score_summary(
        int(s["fb_n"]), s["fb_sum"], s["fb_sq"])


def knob_key(raw: str | None) -> tuple[str | None, float | None]:
    """(kind, value) of a logged knob (``decisions.knob_dict`` JSON); (None, None) when unreadable."""
    try:
        knob = json.loads(raw) if raw else None
    except ValueError:
        return None, None
    if not isinstance(knob, dict):
        return None, None
    value = knob.get("value")
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return (str(knob["kind"]) if knob.get("kind") is not None else None), number


def router_points(engine: Engine, f: Filters, limit: int = POINTS_ROWS) -> list[dict[str, Any]]:
    """Per router: its realized point and one per knob value, over the newest ``limit`` routed requests
    of the range (``limit`` in the answer): a bounded read, newest first by the time index."""
    newest = (sa.select(c.id, c.router, c.knob, c.status, c.cost_usd, c.predicted_quality, c.total_ms)
              .where(*f.where(), c.router.is_not(None)).order_by(c.created_at.desc()).limit(limit).subquery())
    with engine.connect() as conn:
        groups = _grouped(conn, [newest.c.router.label("router"), newest.c.knob.label("knob")], [], newest)
    per: dict[str, dict[tuple[str | None, float | None], dict[str, float]]] = {}
    for (router, knob), sums in groups.items():
        _merge(per.setdefault(str(router), {}).setdefault(knob_key(knob), {}), sums)
    out = []
    for router in sorted(per):
        everything: dict[str, float] = {}
        knobs = []
        for (kind, value), sums in sorted(per[router].items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0.0)):
            _merge(everything, sums)
            knobs.append({"kind": kind, "value": value} | _point(sums))
        out.append({"router": router, "all": _point(everything), "knobs": knobs, "limit": limit})
    return out
