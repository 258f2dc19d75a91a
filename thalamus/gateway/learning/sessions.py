"""Where conversation affinity keeps which model answered each conversation's latest turn.

The ledger database's ``sessions`` table (migration 12) is the shared truth, so a conversation whose
turns land on different replicas keeps its model; a small LRU cache in this process answers most lookups.
A cached entry, or one still waiting to be written, is trusted only when it can be current: a history key
names one prefix of one conversation (a later turn has another key), and an explicit id's entry is trusted
when it recorded the turn just before the asking one; anything else is read from the table (whose row
may be older than an entry still waiting to be written: then that entry is the answer). Writes are
batched off the request path (every ``flush_ms``, upserts); entries idle for ``ttl_s`` are ignored and
pruned, and the table is cut to the newest ``max_sessions`` rows every ``prune_every_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from thalamus.gateway.config.affinity import AffinityConfig
from thalamus.ledger.schema import sessions

log = logging.getLogger("thalamus.gateway.sessions")


@dataclass(frozen=True)
class SessionEntry:
    """The answer to one conversation's latest turn."""

    session_key: str
    conversation: str
    model: str
    family: str
    turn: int  # how many answers the conversation had before this one
    updated_at: float


class SessionStore:
    """The sessions table behind an in-process LRU cache; ``start`` runs the flusher, ``close`` drains it."""

    def __init__(self, config: AffinityConfig, engine: Engine) -> None:
        self.config, self.engine = config, engine
        self._cache: OrderedDict[str, SessionEntry] = OrderedDict()
        self._pending: dict[str, SessionEntry] = {}
        self._pending_lock = threading.Lock()  # put (event loop) and flush (a worker thread)
        self._task: asyncio.Task[None] | None = None
        self._pruned = time.time()
        self.reads = self.cache_hits = self.flushes = 0

    # -- lookups ----------------------------------------------------------------------------
    def cached(self, key: str, turn: int | None) -> SessionEntry | None:
        """A cached entry that is current (see the module docstring), else None."""
        entry = self._cache.get(key)
        if entry is None or not self._current(entry, turn):
            return None
        self._cache.move_to_end(key)
        self.cache_hits += 1
        return entry

    async def get(self, key: str, turn: int | None = None) -> SessionEntry | None:
        """The entry of ``key`` (``turn``: the asking turn, for explicit ids), from the cache or the table."""
        hit = self.cached(key, turn)
        if hit is not None:
            return hit
        pending = self._pending.get(key)  # not yet written (the cache may have evicted it): the same rule
        if pending is not None and self._current(pending, turn):
            return pending
        try:
            entry = await asyncio.to_thread(self._read, key)
        except Exception as exc:  # the database is down: the turn is routed as a new conversation
            log.warning("session affinity: reading a session failed (%s: %s)", type(exc).__name__, exc)
            return None
        self.reads += 1
        if pending is not None and (entry is None or entry.updated_at < pending.updated_at):
            entry = pending  # the table has not got this process's newer turn yet
        if entry is None or not self._fresh(entry):
            return None
        self._remember(entry)
        return entry

    def _read(self, key: str) -> SessionEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sessions).where(sessions.c.session_key == key)).mappings().first()
        return SessionEntry(**dict(row)) if row is not None else None

    def _fresh(self, entry: SessionEntry) -> bool:
        return time.time() - entry.updated_at <= self.config.ttl_s

    def _current(self, entry: SessionEntry, turn: int | None) -> bool:
        """An entry of this process (cached, or waiting for the flush) trusted without reading the table:
        not idle past the TTL, and for an explicit id (``turn``) the answer to the turn just before."""
        return self._fresh(entry) and (turn is None or entry.turn == turn - 1)

    # -- writes -----------------------------------------------------------------------------
    def put(self, entry: SessionEntry) -> None:
        """Record ``entry`` now in the cache, in the table at the next flush."""
        self._remember(entry)
        with self._pending_lock:
            self._pending[entry.session_key] = entry

    def _remember(self, entry: SessionEntry) -> None:
        self._cache[entry.session_key] = entry
        self._cache.move_to_end(entry.session_key)
        while len(self._cache) > self.config.cache_entries:
            self._cache.popitem(last=False)

    def _upsert(self) -> sa.sql.dml.Insert:
        dialect = self.engine.dialect.name
        insert = postgresql.insert(sessions) if dialect == "postgresql" else sqlite.insert(sessions)
        new = insert.excluded
        return insert.on_conflict_do_update(
            index_elements=["session_key"],
            set_={c: new[c] for c in ("conversation", "model", "family", "turn", "updated_at")})

    def flush(self) -> int:
        """Write the pending entries (synchronous; the flusher runs it in a thread); prune when due."""
        with self._pending_lock:
            batch = list(self._pending.values())
        if batch:
            # pending until written (a lookup meanwhile still finds it); a failure keeps them for the next flush
            with self.engine.begin() as conn:
                conn.execute(self._upsert(), [asdict(e) for e in batch])
            with self._pending_lock:  # unless a newer turn replaced an entry during the write
                for entry in batch:
                    if self._pending.get(entry.session_key) is entry:
                        del self._pending[entry.session_key]
            self.flushes += 1
        if time.time() - self._pruned >= self.config.prune_every_s:
            self.prune()
        return len(batch)

    def prune(self, now: float | None = None) -> int:
        """Drop entries idle past ``ttl_s``, then all but the newest ``max_sessions``; returns rows dropped."""
        now = time.time() if now is None else now
        self._pruned = now
        c = sessions.c
        with self.engine.begin() as conn:
            gone = conn.execute(sa.delete(sessions).where(c.updated_at < now - self.config.ttl_s)).rowcount or 0
            cutoff = conn.execute(sa.select(c.updated_at).order_by(c.updated_at.desc())
                                  .offset(self.config.max_sessions).limit(1)).scalar()
            if cutoff is not None:
                gone += conn.execute(sa.delete(sessions).where(c.updated_at <= cutoff)).rowcount or 0
        return int(gone)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="thalamus-sessions")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_ms / 1000)
            try:
                await asyncio.to_thread(self.flush)
            except Exception as exc:  # the database is down: affinity degrades to the cache, routing goes on
                log.warning("session affinity: writing sessions failed (%s: %s); retrying",
                            type(exc).__name__, exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.to_thread(self.flush)
        except Exception as exc:
            log.warning("session affinity: the last session writes were lost (%s: %s)", type(exc).__name__, exc)
