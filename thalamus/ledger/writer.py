"""The ledger writer: rows leave the request path at once and reach the database, whatever fails.

``submit`` / ``record`` turn a ``LedgerRow`` into its storable column values at once (a later change
to the row object cannot matter) and queue them; one task inserts them in batches every ``flush_ms``
or ``batch_rows`` rows. Its promises (docs/gateway.md, "Durability contract"):

- the task survives any exception; a connectivity error is retried with backoff, then the batch is
  spilled to the local journal and replayed (idempotently) once the database answers again;
- a batch that fails for any other reason is split until the offending row is alone; that row is
  stored in a reduced form (id, timestamps, status, ``error_type: unstorable_row``), never dropped;
- ``durability: journal``: ``record`` returns only after the row is fsynced to the journal (rows
  arriving together share one fsync); rows left in the journal by a crash are replayed at start;
- ``health()`` is the live state readiness reports: ok, or degraded while rows wait in the journal
  (or in memory when even the journal cannot be written) or after the last write failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from thalamus.config import Settings
from thalamus.ledger.journal import Journal, JournalError
from thalamus.ledger.row import LedgerRow
from thalamus.ledger.schema import REQUEST_COLUMNS
from thalamus.ledger.store import Ledger, sqlite_path

log = logging.getLogger("thalamus.ledger")

Durability = Literal["batched", "journal"]
Stored = dict[str, Any]
Item = tuple[int | None, Stored]  # (journal sequence number or None, storable row)

RETRY_DELAYS_S = (0.05, 0.2, 0.5)  # connectivity retries before a batch goes to the journal
REPLAY_MAX_INTERVAL_S = 2.0        # the longest wait between two replay attempts while degraded
_TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError,
              OSError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Errors that say the database is unreachable or busy (retry, then journal), not that a row is bad."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _TRANSIENT)


def describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"


def reduced(row: Stored) -> Stored:
    """The smallest row that still says the request happened: for a row the database refuses."""
    out: Stored = dict.fromkeys(REQUEST_COLUMNS)
    out.update(id=row.get("id"), created_at=row.get("created_at") or time.time(), status=row.get("status"),
               error_type="unstorable_row")
    return out


@dataclass
class WriterHealth:
    """The writer's live state and counters (rows)."""

    state: Literal["ok", "degraded"]
    alive: bool
    queued: int
    journal_pending: int
    held_in_memory: int
    last_error: str | None
    written: int
    failed: int
    unstorable: int
    journaled: int
    replayed: int
    durability: Durability
    journal_path: str | None

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LedgerWriter:
    """Batched, off-request-path row writes: ``submit`` never blocks, ``record`` waits only for the
    journal's fsync in ``journal`` mode."""

    def __init__(self, ledger: Ledger, flush_ms: int = 50, batch_rows: int = 500, *,
                 journal_path: Path | None = None, durability: Durability = "batched") -> None:
        self.ledger = ledger
        self.flush_s = flush_ms / 1000
        self.batch_rows = batch_rows
        self.durability: Durability = durability
        self.journal_path = journal_path or default_journal_path(ledger.url)
        self.journal: Journal | None = None
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._pending: list[tuple[Stored, asyncio.Future[None] | None]] = []  # awaiting the journal
        self._flusher: asyncio.Task[None] | None = None
        self._spilled = False           # rows wait in the journal (or memory) for the database
        self._held: list[Stored] = []   # rows neither the database nor the journal took
        self._waiters: dict[str, list[asyncio.Event]] = {}  # request id -> its waiters, set once its row is handled
        self._confirmed = 0             # journal sequence numbers <= this are stored
        self._replay_wait = RETRY_DELAYS_S[0]
        self._next_replay = 0.0
        self._last_error: str | None = None
        self._error_at_last_write = False
        self.written = self.failed = self.unstorable = self.journaled = self.replayed = 0

    @property
    def failed_batches(self) -> int:
        """The old name of ``failed``: write attempts that failed after their retries."""
        return self.failed

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._open_journal()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    def _open_journal(self) -> None:
        try:
            self.journal = Journal(self.journal_path)
        except JournalError as exc:  # the gateway still serves; readiness says why rows are at risk
            self._note_error(exc)
            log.error("%s; rows are held in memory while the database is down", exc)
            return
        if self.journal.rows_in_file:
            log.warning("ledger journal %s holds %d rows from an earlier run; replaying them",
                        self.journal.path, self.journal.rows_in_file)
            self._spilled = True

    async def flush(self) -> None:
        """Wait until every submitted row has been handled (stored, or spilled to the journal)."""
        await self._drain_pending()
        await self._queue.join()

    async def handled(self, request_id: str, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until the row of ``request_id`` has been handled (stored, or
        spilled to the journal): a caller waits for its own row, not for the whole queue behind it."""
        event = asyncio.Event()  # one per waiter: a waiter that leaves takes nothing from another
        self._waiters.setdefault(request_id, []).append(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiters.get(request_id)
            if waiting is not None and event in waiting:
                waiting.remove(event)
                if not waiting:
                    del self._waiters[request_id]  # an id that never comes (a bad feedback id) leaves nothing

    async def close(self) -> None:
        """Drain the queue, try the journal once more, then stop the writer task."""
        if self._task is None:
            return
        await self._drain_pending()
        self._queue.put_nowait(None)
        await self._task
        self._task = None
        if self._spilled:
            await self._replay(final=True)
        if self._held:
            log.critical("ledger %s: %d rows could be neither stored nor journaled: %s", self.ledger.where,
                         len(self._held), [r.get("id") for r in self._held])
        if self.journal is not None:
            self.journal.close()

    # -- entry points ---------------------------------------------------------------------------
    def submit(self, row: LedgerRow) -> None:
        """Queue ``row``; never blocks. In ``journal`` mode it is journaled in the background."""
        stored = row.storable()
        if self.durability == "journal":
            self._enqueue_journal(stored, None)
        else:
            self._queue.put_nowait((None, stored))

    async def record(self, row: LedgerRow) -> None:
        """Queue ``row``; in ``journal`` mode return once it is fsynced to the journal."""
        stored = row.storable()
        if self.durability != "journal":
            self._queue.put_nowait((None, stored))
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue_journal(stored, done)
        await done

    def _enqueue_journal(self, stored: Stored, done: asyncio.Future[None] | None) -> None:
        self._pending.append((stored, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_journal(), name="ledger-journal")

    async def _flush_journal(self) -> None:
        """Group commit: everything that arrived during the last fsync shares the next one."""
        while self._pending:
            group, self._pending = self._pending, []
            rows = [stored for stored, _ in group]
            seq: int | None = None
            try:
                if self.journal is None:
                    raise JournalError(f"ledger journal {self.journal_path} is not open")
                seq = await asyncio.to_thread(self.journal.append, rows)
            except Exception as exc:  # the row still goes to the database, only without the journal's promise
                self._note_error(exc)
                log.error("ledger journal append failed for %d rows: %s", len(rows), exc)
            first = None if seq is None else seq - len(rows) + 1
            for i, (stored, done) in enumerate(group):
                self._queue.put_nowait((None if first is None else first + i, stored))
                if done is not None and not done.done():
                    done.set_result(None)

    async def _drain_pending(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    # -- health ---------------------------------------------------------------------------------
    def health(self) -> WriterHealth:
        alive = self._task is not None and not self._task.done()
        journal_pending = self.journal.rows_in_file if (self.journal is not None and self._spilled) else 0
        degraded = self._spilled or bool(self._held) or not alive or self._error_at_last_write
        return WriterHealth(
            state="degraded" if degraded else "ok", alive=alive, queued=self._queue.qsize() + len(self._pending),
            journal_pending=journal_pending, held_in_memory=len(self._held), last_error=self._last_error,
            written=self.written, failed=self.failed, unstorable=self.unstorable, journaled=self.journaled,
            replayed=self.replayed, durability=self.durability,
            journal_path=None if self.journal is None else str(self.journal.path))

    def _note_error(self, exc: BaseException) -> None:
        self._last_error = describe(exc)
        self._error_at_last_write = True

    # -- the writer task ------------------------------------------------------------------------
    async def _next_batch(self) -> tuple[list[Item], bool]:
        loop = asyncio.get_running_loop()
        try:
            if self._spilled or self._held:  # wake up to replay even when no request comes
                first = await asyncio.wait_for(self._queue.get(), max(0.0, self._next_replay - loop.time()))
            else:
                first = await self._queue.get()
        except TimeoutError:
            return [], False
        if first is None:
            return [], True
        batch, stop = [first], False
        deadline = loop.time() + self.flush_s
        while len(batch) < self.batch_rows:
            timeout = deadline - loop.time()
            try:
                item = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(
                    self._queue.get(), timeout)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = await self._next_batch()
            try:
                await self._handle(batch)
            except Exception as exc:  # never let the task die: keep the rows and report
                self._note_error(exc)
                log.exception("ledger writer: unexpected error on %d rows; keeping them", len(batch))
                self._held.extend(stored for _, stored in batch)
                self._spilled = True
            self._wake(batch)
            for _ in range(len(batch) + (1 if stop else 0)):
                self._queue.task_done()

    def _wake(self, batch: list[Item]) -> None:
        if not self._waiters:
            return
        for _, stored in batch:
            for event in self._waiters.pop(str(stored.get("id")), []):
                event.set()

    async def _handle(self, batch: list[Item]) -> None:
        if (self._spilled or self._held) and asyncio.get_running_loop().time() >= self._next_replay:
            await self._replay()
        if not batch:
            return
        if self._spilled:  # keep order: the journal is replayed first, then what came after it
            await self._spill(batch)
            return
        if await self._store([stored for _, stored in batch]):
            await self._confirm(batch)
        else:
            await self._spill(batch)
            self._spilled = True
            self._schedule_replay(reset=True)

    async def _confirm(self, batch: list[Item]) -> None:
        seqs = [seq for seq, _ in batch if seq is not None]
        if seqs and self.journal is not None:
            self._confirmed = max(self._confirmed, *seqs)
            await asyncio.to_thread(self.journal.truncate_if_confirmed, self._confirmed)

    # -- storing --------------------------------------------------------------------------------
    async def _insert(self, rows: list[Stored]) -> BaseException | None:
        """Insert with backoff on connectivity errors; the error that remains, or None."""
        error: BaseException | None = None
        for delay in (*RETRY_DELAYS_S, None):
            try:
                await asyncio.to_thread(self.ledger.insert_stored, rows)
                return None
            except Exception as exc:
                error = exc
                if not is_transient(exc) or delay is None:
                    return exc
                await asyncio.sleep(delay)
        return error

    async def _store(self, rows: list[Stored]) -> bool:
        """True once every row is in the database (a refused one in reduced form); False when the
        database is unreachable (the caller keeps the rows)."""
        error = await self._insert(rows)
        if error is None:
            self.written += len(rows)
            self._error_at_last_write = False
            return True
        self._note_error(error)
        self.failed += 1
        if is_transient(error):
            log.warning("ledger %s unreachable for %d rows: %s", self.ledger.where, len(rows), describe(error))
            return False
        if len(rows) > 1:  # isolate the row the database refuses; its neighbours are stored as they are
            mid = len(rows) // 2
            return await self._store(rows[:mid]) and await self._store(rows[mid:])
        return await self._store_reduced(rows[0], error)

    async def _store_reduced(self, row: Stored, error: BaseException) -> bool:
        log.error("ledger %s refused row %s (%s); storing it as unstorable_row", self.ledger.where,
                  row.get("id"), describe(error))
        second = await self._insert([reduced(row)])
        if second is None:
            self.written += 1
            self.unstorable += 1
            return True
        self._note_error(second)
        return False  # even the reduced row is refused: keep it in the journal and retry later

    async def _spill(self, batch: list[Item]) -> None:
        fresh = [stored for seq, stored in batch if seq is None]  # journal-mode rows are there already
        if not fresh:
            return
        try:
            if self.journal is None:
                raise JournalError(f"ledger journal {self.journal_path} is not open")
            await asyncio.to_thread(self.journal.append, fresh)
            self.journaled += len(fresh)
        except Exception as exc:
            self._note_error(exc)
            log.error("ledger journal append failed; holding %d rows in memory: %s", len(fresh), exc)
            self._held.extend(fresh)

    def _schedule_replay(self, reset: bool = False) -> None:
        self._replay_wait = RETRY_DELAYS_S[0] if reset else min(self._replay_wait * 2, REPLAY_MAX_INTERVAL_S)
        self._next_replay = asyncio.get_running_loop().time() + self._replay_wait

    async def _replay(self, final: bool = False) -> None:
        """Store the held rows and the journal's rows; truncate the journal when all are in."""
        if self._held:
            held, self._held = self._held, []
            if not await self._store(held):
                self._held = held + self._held
                self._schedule_replay()
                return
        if self.journal is None:
            self._spilled = bool(self._held)
            return
        try:
            rows, upto = await asyncio.to_thread(self.journal.read)
        except JournalError as exc:
            self._note_error(exc)
            self._schedule_replay()
            return
        for start in range(0, len(rows), self.batch_rows):
            if not await self._store(rows[start:start + self.batch_rows]):
                if not final:
                    self._schedule_replay()
                return
        self.replayed += len(rows)
        self._confirmed = max(self._confirmed, upto)
        await asyncio.to_thread(self.journal.truncate_if_confirmed, self._confirmed)
        self._spilled = False
        log.info("ledger %s: replayed %d journaled rows", self.ledger.where, len(rows))


def default_journal_path(url: str, cache_dir: Path | None = None) -> Path:
    """Beside a SQLite ledger file; under the cache dir (one file per database) otherwise."""
    path = sqlite_path(url)
    if path is not None:
        return path.with_name(path.name + ".rows-journal.jsonl")
    safe = sa.engine.make_url(url).render_as_string(hide_password=True)
    digest = hashlib.sha256(safe.encode()).hexdigest()[:16]
    return (cache_dir or Settings().cache_dir) / f"ledger-{digest}.rows-journal.jsonl"

