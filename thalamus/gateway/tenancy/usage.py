"""Per-key usage counters (requests, tokens, spend per minute, day and month) shared by every replica.

The request path only touches memory: ``total`` is the database's total as of the last sync plus what this
replica added since, and ``add`` adds to the latter. Every ``auth.sync_ms`` the additions are written to the
``key_usage`` table with atomic increments (``ON CONFLICT DO UPDATE SET n = n + excluded.n``) and the totals
of the current periods are read back in the same transaction. So a limit is exact for one replica, and with
several replicas a key can overshoot by what the *other* replicas admitted within the last sync period.
A failed sync keeps the additions for the next one (limits then hold per replica until the database is back).
With ``auth.strict_limits`` a limited request claims its counts in the database at admission instead
(``claim``: conditional increments, ``... DO UPDATE ... WHERE n + excluded.n <= limit``, all of a request's
claims in one transaction), so a limit holds exactly across replicas at the cost of a round trip.
Periods are UTC: ``min:<epoch minute>``, ``day:YYYY-MM-DD``, ``month:YYYY-MM``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from thalamus.ledger.schema import key_usage

MINUTE_ROWS_KEPT_S = 3600  # minute counters older than this are deleted by the sync

_UPSERT = sa.text(
    "INSERT INTO key_usage (key_id, period, requests, tokens, spend_usd, updated_at) "
    "VALUES (:key_id, :period, :requests, :tokens, :spend_usd, :updated_at) "
    "ON CONFLICT (key_id, period) DO UPDATE SET requests = key_usage.requests + excluded.requests, "
    "tokens = key_usage.tokens + excluded.tokens, spend_usd = key_usage.spend_usd + excluded.spend_usd, "
    "updated_at = excluded.updated_at")


_CONDITIONS = {"requests": "key_usage.requests + excluded.requests <= :limit",
               "tokens": "(key_usage.tokens = 0 OR key_usage.tokens + excluded.tokens <= :limit)",
               "spend_usd": "key_usage.spend_usd + excluded.spend_usd <= :limit"}
_CLAIMS = {measure: sa.text(str(_UPSERT.text) + f" WHERE {cond} RETURNING requests")
           for measure, cond in _CONDITIONS.items()}


@dataclass(frozen=True)
class Claim:
    """Counts added to one (key, period) row; with a ``measure``, only while it stays within ``limit``
    (a first ``tokens`` claim of a period always fits: one request may be larger than tpm)."""

    slot: str
    period: str
    requests: int = 0
    tokens: int = 0
    spend_usd: float = 0.0
    measure: str | None = None
    limit: float = 0.0

    def params(self, now: float) -> dict[str, object]:
        return {"key_id": self.slot, "period": self.period, "requests": self.requests, "tokens": self.tokens,
                "spend_usd": self.spend_usd, "updated_at": now, "limit": self.limit}

    def alone_over(self) -> bool:
        """Over its limit even on an empty row (an insert is not checked by the WHERE)."""
        if self.measure == "requests":
            return self.requests > self.limit
        return self.measure == "spend_usd" and self.spend_usd > self.limit


@dataclass
class Count:
    requests: int = 0
    tokens: int = 0
    spend_usd: float = 0.0

    def __add__(self, other: Count) -> Count:
        return Count(self.requests + other.requests, self.tokens + other.tokens, self.spend_usd + other.spend_usd)


@dataclass(frozen=True)
class Periods:
    minute: str
    day: str
    month: str
    minute_left_s: float  # until the minute counter starts over

    @classmethod
    def at(cls, now: float) -> Periods:
        when = datetime.fromtimestamp(now, UTC)
        return cls(f"min:{int(now // 60)}", f"day:{when:%Y-%m-%d}", f"month:{when:%Y-%m}", 60 - now % 60)

    def names(self) -> tuple[str, str, str]:
        return self.minute, self.day, self.month


Slot = tuple[str, str]  # (key id, period)


class UsageCounters:
    """In-memory view of ``key_usage``: synced totals plus this replica's unsynced additions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._synced: dict[Slot, Count] = {}
        self._pending: defaultdict[Slot, Count] = defaultdict(Count)
        self._syncing: dict[Slot, Count] = {}  # taken by the sync in flight: still counted until it ends
        self.last_sync: float | None = None

    def total(self, key_id: str, period: str) -> Count:
        slot = (key_id, period)
        return (self._synced.get(slot, Count()) + self._syncing.get(slot, Count())
                + self._pending.get(slot, Count()))

    def add(self, key_id: str, periods: tuple[str, ...], requests: int = 0, tokens: int = 0,
            spend_usd: float = 0.0) -> None:
        for period in periods:
            slot = self._pending[(key_id, period)]
            slot.requests += requests
            slot.tokens += tokens
            slot.spend_usd += spend_usd

    def take_pending(self) -> dict[Slot, Count]:
        """The unsynced additions, handed to ``sync``; later additions start a new batch."""
        taken, self._pending = dict(self._pending), defaultdict(Count)
        self._syncing = taken
        return taken

    def give_back(self, taken: dict[Slot, Count]) -> None:
        """A failed sync's additions, kept for the next one."""
        self._syncing = {}
        for slot, count in taken.items():
            self._pending[slot] = self._pending[slot] + count

    def sync(self, taken: dict[Slot, Count], now: float) -> dict[Slot, Count]:
        """Write ``taken`` and read the current periods' totals (one transaction; a worker thread)."""
        names = Periods.at(now).names()
        rows = [{"key_id": k, "period": p, "requests": c.requests, "tokens": c.tokens, "spend_usd": c.spend_usd,
                 "updated_at": now} for (k, p), c in taken.items()]
        with self.engine.begin() as conn:
            if rows:
                conn.execute(_UPSERT, rows)
            totals = conn.execute(sa.select(key_usage).where(key_usage.c.period.in_(names))).all()
        return {(r.key_id, r.period): Count(int(r.requests), int(r.tokens), float(r.spend_usd)) for r in totals}

    def claim(self, claims: list[Claim], now: float) -> tuple[Claim, float] | None:
        """Add every claim in one transaction (a worker thread), or none: returns the first claim that does
        not fit, with its row's current value of the measure."""
        with self.engine.connect() as conn:
            failed = self._claim_all(conn, claims, now)
            if failed is None:
                return None
            current = conn.execute(sa.select(key_usage.c[str(failed.measure)]).where(
                key_usage.c.key_id == failed.slot, key_usage.c.period == failed.period)).scalar()
            conn.rollback()
        return failed, float(current or 0)

    @staticmethod
    def _claim_all(conn: Connection, claims: list[Claim], now: float) -> Claim | None:
        tx = conn.begin()
        for c in claims:
            if c.measure is None:
                conn.execute(_UPSERT, c.params(now))
            elif c.alone_over() or conn.execute(_CLAIMS[c.measure], c.params(now)).first() is None:
                tx.rollback()
                return c
        tx.commit()
        return None

    def apply(self, totals: dict[Slot, Count], when: float) -> None:
        """The database's totals, which now hold what the sync took."""
        self._synced, self._syncing, self.last_sync = totals, {}, when

    def prune(self, now: float) -> None:
        """Drop minute counters nobody reads any more (a worker thread; day and month rows stay as history)."""
        query = key_usage.delete().where(key_usage.c.period.like("min:%"),
                                         key_usage.c.updated_at < now - MINUTE_ROWS_KEPT_S)
        with self.engine.begin() as conn:
            conn.execute(query)
