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

from thalamus.gateway.ledger import requests
from thalamus.gateway.stats_router import SAMPLE, _grouped, _point
from thalamus.gateway.stats_sql import Filters

c = requests.c


def _candidates(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _predicted(conn: Connection, where: list[ColumnElement[bool]], picks: dict[str, ColumnElement[Any]]
               ) -> dict[str, Any]:
    """Mean predicted quality and cost of each pick column over the newest SAMPLE rows matching ``where``."""
    query = (sa.select(c.candidates, *(col.label(name) for name, col in picks.items())).where(*where)
             .order_by(c.created_at.desc()).limit(SAMPLE))
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


def _shadow(conn: Connection, f: Filters, router: str, version: str, n: int, agree: int) -> dict[str, Any]:
    where = [*f.where(), c.router == router, c.shadow_version == version]
    predicted = _predicted(conn, where, {"serving": c.chosen_model, "candidate": c.shadow_model})
    return {"version": version, "requests": n, "agreement": agree / n if n else None, "agree": agree} | predicted


def _shadows(conn: Connection, f: Filters) -> dict[str, list[dict[str, Any]]]:
    same = sa.case((c.shadow_model == c.chosen_model, 1), else_=0)
    query = (sa.select(c.router, c.shadow_version, sa.func.count().label("n"),
                       sa.func.coalesce(sa.func.sum(same), 0).label("agree"))
             .where(*f.where(), c.router.is_not(None), c.shadow_version.is_not(None))
             .group_by(c.router, c.shadow_version).order_by(c.router, c.shadow_version))
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in conn.execute(query).all():
        out.setdefault(str(rec.router), []).append(
            _shadow(conn, f, str(rec.router), str(rec.shadow_version), int(rec.n), int(rec.agree)))
    return out


def _canaries(conn: Connection, f: Filters) -> dict[str, dict[str, Any]]:
    """Per router with canary rows in the range: its canary and serving arms (by deciding version)."""
    arm_rows = [*f.where(), c.router.is_not(None), c.shadow_version.is_(None), c.rollout.in_(("canary", "serving"))]
    groups = _grouped(conn, [c.router.label("router"), c.rollout.label("rollout"),
                             c.artifact_version.label("version")], arm_rows)
    out: dict[str, dict[str, Any]] = {}
    for router in sorted({str(r) for (r, arm, _) in groups if arm == "canary"}):
        arms: dict[str, Any] = {}
        for (r, arm, version), sums in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if r != router:
                continue
            where = [*arm_rows, c.router == router, c.rollout == arm, c.artifact_version == version]
            predicted = _predicted(conn, where, {"chosen": c.chosen_model})
            arms.setdefault(str(arm), []).append({"version": version} | _point(sums) | predicted)
        out[router] = arms
    return out


def rollout_compare(engine: Engine, f: Filters) -> list[dict[str, Any]]:
    """Per router with shadow or canary rows in the range: ``shadow`` (one entry per candidate version)
    and ``canary`` ({"canary": [arm per version], "serving": [...]}, None without canary rows)."""
    with engine.connect() as conn:
        shadows, canaries = _shadows(conn, f), _canaries(conn, f)
    return [{"router": r, "shadow": shadows.get(r, []), "canary": canaries.get(r)}
            for r in sorted(set(shadows) | set(canaries))]
