"""Teams as records: budgets and rate limits over all the keys of a team (``teams`` table, migration 11).

A key belongs to a team by its ``team`` field. A team's limits hold over the sum of its keys' usage, counted
in ``key_usage`` under the id ``@team:<name>`` (a key id cannot start with ``@``), next to each key's own
counters: a request must fit both its key's limits and its team's. The gateway keeps the table in memory,
reloaded with the keys every ``auth.sync_ms``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from thalamus.errors import ConfigError
from thalamus.gateway.tenancy.keys import parse_limit, validate_id
from thalamus.ledger.schema import teams

TEAM_FIELDS = ("budget_day_usd", "budget_month_usd", "rpm", "tpm", "metadata")


def team_slot(team: str) -> str:
    """The usage-counter id of a team (never a key id: those start with a letter or digit)."""
    return f"@team:{team}"


@dataclass(frozen=True)
class TeamRecord:
    id: str
    created_at: float = field(default_factory=time.time)
    budget_day_usd: float | None = None
    budget_month_usd: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    metadata: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)


def team_from(fields: dict[str, Any]) -> TeamRecord:
    """A TeamRecord from the admin API's or the CLI's fields; errors name the field."""
    unknown = sorted(set(fields) - {"id", *TEAM_FIELDS})
    if unknown:
        raise ConfigError(f"unknown team field(s) {unknown}; known: {['id', *TEAM_FIELDS]}")
    team_id = fields.get("id")
    if not isinstance(team_id, str):
        raise ConfigError("'id' (the team's name, as keys give it in 'team') is required")
    meta = fields.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ConfigError("'metadata' must be an object")
    return TeamRecord(id=validate_id(team_id), budget_day_usd=parse_limit(fields.get("budget_day_usd"),
                                                                     "budget_day_usd", float),
                      budget_month_usd=parse_limit(fields.get("budget_month_usd"), "budget_month_usd", float),
                      rpm=parse_limit(fields.get("rpm"), "rpm", int), tpm=parse_limit(fields.get("tpm"), "tpm", int),
                      metadata=meta)


def _values(record: TeamRecord) -> dict[str, Any]:
    return {"budget_day_usd": record.budget_day_usd, "budget_month_usd": record.budget_month_usd,
            "rpm": record.rpm, "tpm": record.tpm,
            "metadata": json.dumps(record.metadata) if record.metadata is not None else None}


class TeamStore:
    """The ``teams`` table (synchronous: the gateway calls it from a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, record: TeamRecord) -> TeamRecord:
        """Create the team, or replace its limits when it exists (its creation time stays)."""
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(teams.c.created_at).where(teams.c.id == record.id)).scalar()
            if found is None:
                conn.execute(teams.insert().values(id=record.id, created_at=record.created_at, **_values(record)))
                return record
            conn.execute(teams.update().where(teams.c.id == record.id).values(**_values(record)))
        return TeamRecord(**{**asdict(record), "created_at": float(found)})

    def load(self) -> dict[str, TeamRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(teams).order_by(teams.c.id)).all()
        return {r.id: TeamRecord(id=r.id, created_at=r.created_at, budget_day_usd=r.budget_day_usd,
                                 budget_month_usd=r.budget_month_usd, rpm=r.rpm, tpm=r.tpm,
                                 metadata=json.loads(r.metadata) if r.metadata is not None else None)
                for r in rows}
