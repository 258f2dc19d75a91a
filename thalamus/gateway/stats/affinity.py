"""Conversation affinity on the dashboard: how often a conversation's turn kept or switched its model.

The switch rate is switched / (kept + switched) over the turns that continue a known conversation
(``affinity`` column, migration 12; first turns are ``new`` and count in ``conversations``). Read from the
raw rows of the range (the hourly rollups predate the column); the filters are the dashboard's.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from thalamus.gateway.stats.sql import Filters
from thalamus.ledger import requests

c = requests.c


def switch_rate(engine: Engine, f: Filters) -> dict[str, Any]:
    """Turns by outcome and reason, the switch rate, and how many conversations started in the range."""
    query = (sa.select(c.affinity, c.affinity_reason, sa.func.count().label("n"))
             .where(*f.where(), c.affinity.is_not(None)).group_by(c.affinity, c.affinity_reason))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    outcomes: dict[str, int] = {"new": 0, "kept": 0, "switched": 0}
    reasons: dict[str, int] = {}
    for outcome, reason, n in rows:
        outcomes[str(outcome)] = outcomes.get(str(outcome), 0) + int(n)
        if reason is not None:
            reasons[f"{outcome}:{reason}"] = int(n)
    later = outcomes["kept"] + outcomes["switched"]
    return {"conversations": outcomes["new"], "kept": outcomes["kept"], "switched": outcomes["switched"],
            "switch_rate": outcomes["switched"] / later if later else None, "reasons": reasons,
            "filters": f.as_dict()}
