"""Serving vs candidate, from the ledger: what the dashboard shows while a rollout is in shadow or canary.

A shadow row (``shadow_version`` set) was served by the serving artifact and also decided by the
candidate (``shadow_model``, never used): the agreement share is how often the two picks match. A canary
row (``rollout = 'canary'``) was routed by the candidate (``artifact_version`` is its version); a
``rollout = 'serving'`` row without a shadow is the serving side of the same canary. For each side: its
picks' predicted quality and cost (from the logged ``candidates``, the deciding artifact's predictions;
for shadow rows both picks are priced by the serving artifact, the only predictions logged) and, for
canary and serving traffic, the realized cost, feedback score, errors and latency.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from thalamus.gateway.stats.router import POINTS_ROWS, SAMPLE, _grouped, _point
from thalamus.gateway.stats.sql import Filters
from thalamus.ledger import requests

c = requests.c


def _candidates(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _predicted(conn: Connection, src: Any, where: list[ColumnElement[bool]], picks: dict[str, ColumnElement[Any]]
               ) -> dict[str, Any]:
    """Mean predicted quality and cost of each pick column over the newest SAMPLE rows matching ``where``."""
    query = (sa.select(src.c.candidates, *(col.label(name) for name, col in picks.items())).where(*where)
             .order_by(src.c.created_at.desc()).limit(SAMPLE))
    sums = {name: {"quality": [0.0, 0], "cost": [0.0, 0]} for name in picks}
    rows = 0
    for rec in conn.execute(query).mappings():
        rows += 1
        cands = _candidates(rec["candidates"])
        for name in picks:
            entry = cands.get(rec[name]) if rec[name] is not None else None
            for field in ("quality", "cost"):
                value = entry.get(field) if isinstance(entry, dict) else None
                if isinstance(value, int | float) and not isinstance(value, bool):
                    sums[name][field][0] += float(value)
                    sums[name][field][1] += 1
    out: dict[str, Any] = {"sampled_rows": rows}
    for name, by in sums.items():
        for field, (s, n) in by.items():
            out[f"{name}_predicted_{field}"] = s / n if n else None
    return out


def _shadow(conn: Connection, src: Any, router: str, version: str, n: int, agree: int) -> dict[str, Any]:
    s = src.c
    predicted = _predicted(conn, src, [s.router == router, s.shadow_version == version],
                           {"serving": s.chosen_model, "candidate": s.shadow_model})
    return {"version": version, "requests": n, "agreement": agree / n if n else None, "agree": agree} | predicted


def _shadows(conn: Connection, src: Any) -> dict[str, list[dict[str, Any]]]:
    s = src.c
    same = sa.case((s.shadow_model == s.chosen_model, 1), else_=0)
    query = (sa.select(s.router, s.shadow_version, sa.func.count().label("n"),
                       sa.func.coalesce(sa.func.sum(same), 0).label("agree"))
             .where(s.shadow_version.is_not(None))
             .group_by(s.router, s.shadow_version).order_by(s.router, s.shadow_version))
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in conn.execute(query).all():
        out.setdefault(str(rec.router), []).append(
            _shadow(conn, src, str(rec.router), str(rec.shadow_version), int(rec.n), int(rec.agree)))
    return out


def _canaries(conn: Connection, src: Any) -> dict[str, dict[str, Any]]:
    """Per router with canary rows in the range: its canary and serving arms (by deciding version)."""
    s = src.c
    arm_rows = [s.shadow_version.is_(None), s.rollout.in_(("canary", "serving"))]
    groups = _grouped(conn, [s.router.label("router"), s.rollout.label("rollout"),
                             s.artifact_version.label("version")], arm_rows, src)
    out: dict[str, dict[str, Any]] = {}
    for router in sorted({str(r) for (r, arm, _) in groups if arm == "canary"}):
        arms: dict[str, Any] = {}
        for (r, arm, version), sums in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if r != router:
                continue
            where = [*arm_rows, s.router == router, s.rollout == arm, s.artifact_version == version]
            predicted = _predicted(conn, src, where, {"chosen": s.chosen_model})
            arms.setdefault(str(arm), []).append({"version": version} | _point(sums) | predicted)
        out[router] = arms
    return out


_COLUMNS = ("id", "created_at", "router", "chosen_model", "shadow_model", "shadow_version", "rollout",
            "artifact_version", "candidates", "status", "cost_usd", "predicted_quality", "total_ms")


def rollout_compare(engine: Engine, f: Filters, limit: int = POINTS_ROWS) -> list[dict[str, Any]]:
    """Per router with shadow or canary rows among the newest ``limit`` routed requests of the range (a
    bounded read, as the router points): ``shadow`` (one entry per candidate version) and ``canary``
    ({"canary": [arm per version], "serving": [...]}, None without canary rows)."""
    newest = (sa.select(*(c[n] for n in _COLUMNS)).where(*f.where(), c.router.is_not(None))
              .order_by(c.created_at.desc()).limit(limit).subquery())
    with engine.connect() as conn:
        shadows, canaries = _shadows(conn, newest), _canaries(conn, newest)
    return [{"router": r, "shadow": shadows.get(r, []), "canary": canaries.get(r)}
            for r in sorted(set(shadows) | set(canaries))]
