"""The decision ledger: one row per request, feedback joined by request id.

SQLAlchemy Core on any URL (a SQLite file by default, PostgreSQL by URL). The schema is
created by numbered migrations recorded in ``schema_version``, so an old ledger file is
upgraded in place. Writes happen off the request path: ``LedgerWriter`` queues rows and a
single task inserts them in batches every ``flush_ms`` or ``batch_rows`` rows, and drains
the queue on shutdown, so N completed requests leave exactly N rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.gateway.ledger_row import LedgerRow

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)

requests = sa.Table(
    "requests", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("api_key_id", sa.String(128)),
    sa.Column("requested_model", sa.String(256)),
    sa.Column("router", sa.String(128)),
    sa.Column("artifact_version", sa.String(64)),
    sa.Column("knob", sa.Text),            # JSON
    sa.Column("candidates", sa.Text),      # JSON {model: {"quality": q, "cost": c}}
    sa.Column("chosen_model", sa.String(256)),
    sa.Column("probability", sa.Float),
    sa.Column("fallback_chain", sa.Text),  # JSON [{"model", "attempt", "status", "error"}]
    sa.Column("status", sa.Integer),
    sa.Column("error_type", sa.String(128)),
    sa.Column("stream", sa.Boolean),
    sa.Column("routing_ms", sa.Float),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("total_ms", sa.Float),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("cost_usd", sa.Float),
    sa.Column("cost_estimated", sa.Boolean),
    sa.Column("prompt_hash", sa.String(64)),
    sa.Column("prompt_text", sa.Text),
    # added by the dashboard migration (_m_dashboard)
    sa.Column("baseline_model", sa.String(256)),
    sa.Column("baseline_cost_usd", sa.Float),
    sa.Column("predicted_quality", sa.Float),
    sa.Column("upstream_ms", sa.Float),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("label", sa.String(32)),
    sa.Column("source", sa.String(128)),
    sa.Column("comment", sa.Text),
)


def _m002_indexes(conn: Connection) -> None:
    # plain DDL: an sa.Index bound to the tables would also be emitted by a later _m001 run
    conn.execute(sa.text("CREATE INDEX ix_requests_created_at ON requests (created_at)"))
    conn.execute(sa.text("CREATE INDEX ix_feedback_request_id ON feedback (request_id)"))


# -- DASHBOARD MIGRATION (branch dash): append last; renumber on merge ---------------------------
# Plain DDL, the same on SQLite and PostgreSQL, so it can be frozen as it is.
DASHBOARD_DDL = (
    "ALTER TABLE requests ADD COLUMN baseline_model VARCHAR(256)",
    "ALTER TABLE requests ADD COLUMN baseline_cost_usd FLOAT",
    "ALTER TABLE requests ADD COLUMN predicted_quality FLOAT",
    "ALTER TABLE requests ADD COLUMN upstream_ms FLOAT",
)


def _m_dashboard(conn: Connection) -> None:
    for statement in DASHBOARD_DDL:
        conn.execute(sa.text(statement))


def _m001_initial(conn: Connection) -> None:
    # version 1 as it was released: the tables without the columns later migrations add
    later = {"baseline_model", "baseline_cost_usd", "predicted_quality", "upstream_ms"}
    sa.Table("requests", sa.MetaData(), *(c._copy() for c in requests.columns if c.name not in later)).create(conn)
    feedback.create(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_m001_initial, _m002_indexes, _m_dashboard]
REQUEST_COLUMNS = [c.name for c in requests.columns]


def _sqlite_pragmas(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()


class Ledger:
    """Synchronous access to a ledger database; migrates it on open."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)
        self.migrate()

    def version(self) -> int:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)

    def migrate(self) -> int:
        """Apply the migrations not yet recorded; returns the schema version."""
        current = self.version()
        with self.engine.begin() as conn:
            schema_version.create(conn, checkfirst=True)
            for number, migration in enumerate(MIGRATIONS[current:], start=current + 1):
                migration(conn)
                conn.execute(schema_version.insert().values(version=number, applied_at=time.time()))
        return len(MIGRATIONS)

    def insert_rows(self, rows: list[LedgerRow]) -> None:
        """Insert request rows."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(requests.insert(), [r.storable() for r in rows])

    def has_request(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(requests.c.id).where(requests.c.id == request_id)).first() is not None

    def request_owner(self, request_id: str) -> tuple[bool, str | None]:
        """(whether the request has a row, the API key id that made it)."""
        with self.engine.connect() as conn:
            hit = conn.execute(sa.select(requests.c.api_key_id).where(requests.c.id == request_id)).first()
        return (hit is not None, hit[0] if hit is not None else None)

    def add_feedback(self, request_id: str, score: float, label: str | None, source: str | None,
                     comment: str | None, api_key_id: str | None = None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(feedback.insert().values(
                request_id=request_id, created_at=time.time(), score=score, label=label, source=source,
                comment=comment))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def ping(self) -> None:
        """A round trip to the database (readiness probe), independent of the ledger's size."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar() or 0)

    def recent(self, limit: int = 20) -> pd.DataFrame:
        query = sa.select(requests).order_by(requests.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all(), columns=REQUEST_COLUMNS)

    def rows_with_feedback(self) -> pd.DataFrame:
        """Request rows joined with their mean feedback score (rows without feedback left out)."""
        fb = (sa.select(feedback.c.request_id, sa.func.avg(feedback.c.score).label("score"),
                        sa.func.count().label("n_feedback"))
              .group_by(feedback.c.request_id).subquery())
        query = sa.select(requests, fb.c.score, fb.c.n_feedback).join(fb, fb.c.request_id == requests.c.id)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all())

    def export(self, name: str = "ledger") -> RoutingDataset:
        """Rows with feedback as a RoutingDataset: the chosen model's column holds the mean score
        and the call's cost; other models are unobserved (NaN). Needs stored prompt text."""
        df = self.rows_with_feedback()
        if df.empty:
            raise DataError(f"{self.url}: no ledger rows have feedback yet; POST /v1/feedback first")
        df = df[df["prompt_text"].notna() & df["chosen_model"].notna()].drop_duplicates("prompt_text")
        if df.empty:
            raise DataError(f"{self.url}: rows with feedback have no stored prompt text; set "
                            "ledger.store_prompts: true in the gateway config to export training data")
        models = sorted(df["chosen_model"].unique())
        col = df["chosen_model"].map({m: j for j, m in enumerate(models)}).to_numpy()
        quality = np.full((len(df), len(models)), np.nan)
        cost = np.full((len(df), len(models)), np.nan)
        rows = np.arange(len(df))
        quality[rows, col] = df["score"].to_numpy(dtype=float)
        cost[rows, col] = df["cost_usd"].fillna(np.nan).to_numpy(dtype=float)
        prompts = pd.DataFrame({"prompt_id": df["id"].to_numpy(), "text": df["prompt_text"].to_numpy(),
                                "task": df["router"].fillna("").to_numpy(), "split": ""})
        return RoutingDataset(name=name, prompts=prompts, models=models, quality=quality, cost=cost,
                              cost_estimated=bool(df["cost_estimated"].fillna(False).any()))

    def close(self) -> None:
        self.engine.dispose()


class LedgerWriter:
    """Batched, off-request-path row writes: ``submit`` never blocks on the database."""

    def __init__(self, ledger: Ledger, flush_ms: int = 50, batch_rows: int = 500) -> None:
        self.ledger = ledger
        self.flush_s = flush_ms / 1000
        self.batch_rows = batch_rows
        self._queue: asyncio.Queue[LedgerRow | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed_batches = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    def submit(self, row: LedgerRow) -> None:
        self._queue.put_nowait(row)

    async def record(self, row: LedgerRow) -> None:
        self.submit(row)

    async def _next_batch(self) -> tuple[list[LedgerRow], bool]:
        first = await self._queue.get()
        if first is None:
            return [], True
        batch, stop = [first], False
        deadline = asyncio.get_running_loop().time() + self.flush_s
        while len(batch) < self.batch_rows:
            timeout = deadline - asyncio.get_running_loop().time()
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

    async def _write(self, batch: list[LedgerRow]) -> None:
        for attempt in range(3):
            try:
                await asyncio.to_thread(self.ledger.insert_rows, batch)
                self.written += len(batch)
                return
            except sa.exc.OperationalError:
                await asyncio.sleep(0.1 * (attempt + 1))  # e.g. a locked SQLite file
        self.failed_batches += 1

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = await self._next_batch()
            if batch:
                await self._write(batch)
            for _ in range(len(batch) + (1 if stop else 0)):
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until every submitted row is in the database."""
        await self._queue.join()

    async def close(self) -> None:
        """Drain the queue, then stop the writer task."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
