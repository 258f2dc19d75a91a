"""The decision ledger: one row per request, feedback joined by request id.

SQLAlchemy Core on a SQLite file (the default) or PostgreSQL (``postgresql+psycopg://``, the
``postgres`` extra). The schema and its frozen, lock-guarded migrations live in ``ledger.schema``;
``Ledger`` here is the synchronous access the gateway and the CLI share. Writes from the request
path go through ``LedgerWriter`` (``ledger.writer``): batched, off the request path, retried, and
spilled to a local journal (``journal``) while the database is unreachable. Inserts are idempotent
(``ON CONFLICT DO NOTHING`` on the request id), so a journal can be replayed any number of times.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from thalamus.datasets.schema import RoutingDataset
from thalamus.ledger.export import export_dataset
from thalamus.ledger.row import LedgerRow, clean_text
from thalamus.ledger.schema import (
    REQUEST_COLUMNS,
    current_version,
    feedback,
    judge_calls,
    migrate,
    requests,
)


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?")[0]).expanduser()


def _create_private(path: Path) -> None:
    """Create the SQLite file readable by its owner only (prompts and key ids live in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


class Ledger:
    """Synchronous access to a ledger database; migrates it on open (to ``upto``: tests and benchmarks
    build older schemas)."""

    def __init__(self, url: str, busy_timeout_ms: int = 5000, *, upto: int | None = None) -> None:
        self.url = url
        path = sqlite_path(url)
        if path is not None:
            _create_private(path)
        self.engine = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine, busy_timeout_ms)
        self.migrate(upto)
        # an older schema (upto) lacks the later columns: rows are cut to the columns it has
        self._columns = None if upto is None else {c["name"] for c in sa.inspect(self.engine).get_columns("requests")}

    @property
    def where(self) -> str:
        """The database without credentials, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def version(self) -> int:
        with self.engine.connect() as conn:
            return current_version(conn)

    def migrate(self, upto: int | None = None) -> int:
        """Apply the migrations not yet recorded (under a lock); returns the schema version."""
        return migrate(self.engine, upto)

    def _insert(self) -> Any:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            # RETURNING makes SQLAlchemy send a batch as one multi-row INSERT ("insertmanyvalues"), not one
            # statement per row: the rollup's statement trigger then runs once per batch and takes its row
            # locks in key order (no deadlock between replicas; see ledger_rollup)
            return postgresql.insert(requests).on_conflict_do_nothing(index_elements=["id"]).returning(
                requests.c.id)
        if dialect == "sqlite":
            return sqlite.insert(requests).on_conflict_do_nothing(index_elements=["id"])
        raise RuntimeError(f"ledger {self.where}: only sqlite and postgresql are supported")

    def insert_stored(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``storable()`` rows; a row whose id is already stored is skipped (replay-safe)."""
        if rows:
            if self._columns is not None:
                rows = [{k: v for k, v in row.items() if k in self._columns} for row in rows]
            with self.engine.begin() as conn:
                conn.execute(self._insert(), rows)

    def insert_rows(self, rows: list[LedgerRow]) -> None:
        """Insert request rows (idempotent on the request id)."""
        self.insert_stored([r.storable() for r in rows])

    def has_request(self, request_id: str) -> bool:
        return self.request_owner(request_id)[0]

    def request_owner(self, request_id: str) -> tuple[bool, str | None]:
        """Whether the request has a row, and the API key id that made it (for feedback scoping)."""
        query = sa.select(requests.c.api_key_id).where(requests.c.id == clean_text(request_id)[:64])
        with self.engine.connect() as conn:
            hit = conn.execute(query).first()
        return (False, None) if hit is None else (True, hit[0])

    def add_feedback(self, request_id: str, score: float, label: str | None, source: str | None,
                     comment: str | None, api_key_id: str | None = None) -> int:
        values = {"request_id": request_id, "created_at": time.time(), "score": score, "label": label,
                  "source": source, "comment": comment, "api_key_id": api_key_id}
        for key in ("request_id", "label", "source", "comment", "api_key_id"):
            if values[key] is not None:  # the same cleaning as request rows: never a driver error
                length = feedback.c[key].type.length  # type: ignore[attr-defined]
                values[key] = clean_text(str(values[key]))[:length] if length else clean_text(str(values[key]))
        with self.engine.begin() as conn:
            result = conn.execute(feedback.insert().values(**values))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def add_judge_call(self, values: dict[str, Any]) -> int:
        """One ``judge_calls`` row (gateway/learning/judge.py): the judge's outcome, tokens and cost."""
        values = {"created_at": time.time(), **values}
        if values.get("error") is not None:
            values["error"] = clean_text(str(values["error"]))[:128]
        with self.engine.begin() as conn:
            return int(conn.execute(judge_calls.insert().values(**values)).inserted_primary_key[0])  # type: ignore[index]

    def judge_log(self, request_id: str | None = None) -> pd.DataFrame:
        """The judge's calls (of one request), oldest first."""
        query = sa.select(judge_calls).order_by(judge_calls.c.id)
        if request_id is not None:
            query = query.where(judge_calls.c.request_id == request_id)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all(), columns=[c.name for c in judge_calls.c])

    def ping(self) -> None:
        """A round trip to the database (readiness probe), independent of the ledger's size."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar() or 0)

    def ids(self) -> set[str]:
        """Every stored request id (tests and the durability benchmark compare them with answers)."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(requests.c.id)).scalars())

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
        """Rows with feedback as a RoutingDataset, one prompt per distinct prompt text (see
        ``ledger_export``). Needs stored prompt text."""
        return export_dataset(self.rows_with_feedback(), self.where, name)

    def close(self) -> None:
        self.engine.dispose()
