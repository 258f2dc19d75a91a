"""The ledger writer under real faults: bad values, refused rows, a locked or stopped database.

Every test counts rows: N submitted rows leave N rows in the database, the writer task stays
alive, and its health goes degraded while rows wait in the journal and back to ok by itself.
Runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from pgserver import PgServer

from thalamus.ledger import MIGRATIONS, Ledger, LedgerWriter, requests
from thalamus.ledger.row import LedgerRow


def trigger_rows(prefix: str) -> list[LedgerRow]:
    """One row for each value that used to end the writer (or the driver) for good."""
    now = time.time()
    return [
        LedgerRow(id=f"{prefix}-surrogate", created_at=now, requested_model="\ud800", status=404),
        LedgerRow(id=f"{prefix}-long", created_at=now, requested_model="m" * 300, status=404),
        LedgerRow(id=f"{prefix}-nul", created_at=now, requested_model="a\x00b", error_type="x\x00" * 100),
        LedgerRow(id=f"{prefix}-huge", created_at=now, prompt_tokens=10**30, completion_tokens=-(10**30), status=200),
        LedgerRow(id=f"{prefix}-nan", created_at=now, cost_usd=math.nan, ttft_ms=math.inf, probability=-math.inf),
        LedgerRow(id=f"{prefix}-json", created_at=now, knob={"value": math.nan, "\ud800": "\x00", 1: object()},
                  candidates={"m": {"quality": np.float32(0.5), "cost": math.inf}},
                  fallback_chain=[{"error": "\udfff" * 3, "attempt": 10**40}]),
        LedgerRow(id=f"{prefix}-types", created_at=math.nan, status=2**40, stream="yes",  # type: ignore[arg-type]
                  prompt_tokens="lots", api_key_id=12345, prompt_text="\ud83d\ude00 ok \ud800")  # type: ignore[arg-type]
    ]


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_every_field_has_a_column_and_storable_never_raises() -> None:
    assert {f.name for f in fields(LedgerRow)} <= set(requests.columns.keys())
    for row in trigger_rows("s"):
        out = row.storable()
        json.dumps(out, allow_nan=False)  # the journal can hold it
        for name, value in out.items():
            length = getattr(requests.c[name].type, "length", None)
            if isinstance(value, str):
                assert "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value), name
                assert length is None or len(value) <= length, name
            if isinstance(value, float):
                assert math.isfinite(value), name
    huge = trigger_rows("s")[3].storable()
    assert huge["prompt_tokens"] == 2**63 - 1 and huge["completion_tokens"] == -(2**63)
    assert json.loads(trigger_rows("s")[5].storable()["knob"])["value"] is None


def test_trigger_rows_are_stored_and_the_writer_lives(db_url: str) -> None:
    ledger = Ledger(db_url)

    async def run() -> LedgerWriter:
        writer = LedgerWriter(ledger, flush_ms=5, batch_rows=4)
        writer.start()
        rows = trigger_rows("t") + [LedgerRow(id=f"ok{i}", created_at=time.time(), status=200) for i in range(20)]
        for row in rows:
            writer.submit(row)
        rows[0].requested_model = "\ud800" * 500  # a mutation after submit cannot matter
        await writer.flush()
        assert writer.health().ok and writer.health().alive
        await writer.close()
        return writer

    writer = asyncio.run(run())
    stored = ledger.recent(limit=100).set_index("id")
    assert len(stored) == 27 and writer.written == 27 and writer.unstorable == 0
    assert stored.loc["t-surrogate", "requested_model"] == "\ufffd"
    assert stored.loc["t-long", "requested_model"] == "m" * 256
    assert stored.loc["t-nul", "requested_model"] == "ab"
    with ledger.engine.connect() as conn:  # straight from SQL: pandas would turn big ints into floats
        huge = conn.execute(sa.select(requests).where(requests.c.id == "t-huge")).mappings().one()
        odd = conn.execute(sa.select(requests).where(requests.c.id == "t-types")).mappings().one()
    assert huge["prompt_tokens"] == 2**63 - 1 and huge["completion_tokens"] == -(2**63)
    assert odd["status"] == 2**31 - 1 and odd["prompt_tokens"] is None and odd["api_key_id"] == "12345"
    assert odd["prompt_text"] == "\U0001f600 ok \ufffd" and odd["stream"] is None
    ledger.close()


def _refuse_poison(ledger: Ledger) -> None:
    """A real constraint the database enforces: rows with requested_model 'poison' are refused."""
    with ledger.engine.begin() as conn:
        if ledger.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("CREATE TRIGGER refuse_poison BEFORE INSERT ON requests "
                                 "WHEN NEW.requested_model = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END")
        else:
            conn.exec_driver_sql("ALTER TABLE requests ADD CONSTRAINT refuse_poison "
                                 "CHECK (requested_model IS NULL OR requested_model <> 'poison')")


def test_a_refused_row_is_isolated_and_kept_in_reduced_form(db_url: str) -> None:
    ledger = Ledger(db_url)
    _refuse_poison(ledger)

    async def run() -> LedgerWriter:
        writer = LedgerWriter(ledger, flush_ms=50, batch_rows=64)
        writer.start()
        for i in range(40):
            writer.submit(LedgerRow(id=f"r{i}", created_at=time.time(), status=200,
                                    requested_model="poison" if i == 17 else "fine"))
        await writer.close()
        return writer

    writer = asyncio.run(run())
    stored = ledger.recent(limit=100).set_index("id")
    assert len(stored) == 40 and writer.unstorable == 1 and writer.written == 40
    assert stored.loc["r17", "error_type"] == "unstorable_row" and stored.loc["r17", "status"] == 200
    assert (stored.drop(index="r17")["requested_model"] == "fine").all()
    assert writer.health().last_error is not None and "poison" in str(writer.health().last_error).lower()
    ledger.close()


def test_locked_sqlite_spills_to_the_journal_then_replays(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    ledger = Ledger(f"sqlite:///{path}", busy_timeout_ms=50)
    journal = tmp_path / "journal" / "rows.jsonl"
    locker = sqlite3.connect(path, isolation_level=None)

    async def run() -> LedgerWriter:
        writer = LedgerWriter(ledger, flush_ms=10, batch_rows=8, journal_path=journal)
        writer.start()
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        for i in range(30):
            writer.submit(LedgerRow(id=f"l{i}", created_at=time.time(), status=200))
            await asyncio.sleep(0.01)
        await until(lambda: writer.health().journal_pending == 30)
        health = writer.health()
        assert health.state == "degraded" and health.alive and health.journaled == 30
        assert len(journal.read_text().splitlines()) == 30
        locker.execute("ROLLBACK")
        await until(lambda: writer.health().ok)
        assert ledger.count() == 30 and journal.read_text() == "" and writer.replayed == 30
        await writer.close()
        return writer

    asyncio.run(run())
    locker.close()
    assert ledger.ids() == {f"l{i}" for i in range(30)}
    ledger.close()


def test_rows_left_in_the_journal_are_replayed_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "restart.sqlite"
    ledger = Ledger(f"sqlite:///{path}", busy_timeout_ms=20)
    journal = tmp_path / "restart.jsonl"
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")

    async def first_run() -> None:
        writer = LedgerWriter(ledger, flush_ms=10, journal_path=journal)
        writer.start()
        for i in range(12):
            writer.submit(LedgerRow(id=f"j{i}", created_at=time.time(), status=200))
        await writer.close()  # the database is still locked: the rows stay in the journal

    asyncio.run(first_run())
    assert ledger.count() == 0 and len(journal.read_text().splitlines()) == 12
    locker.execute("ROLLBACK")
    locker.close()

    async def second_run() -> LedgerWriter:
        writer = LedgerWriter(ledger, flush_ms=10, journal_path=journal)
        writer.start()
        assert not writer.health().ok  # journal rows pending from the earlier run
        await until(lambda: writer.health().ok)
        await writer.close()
        return writer

    writer = asyncio.run(second_run())
    assert ledger.count() == 12 and writer.replayed == 12 and journal.read_text() == ""
    ledger.close()


def test_a_journal_folder_that_disappears_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "gone.sqlite"
    ledger = Ledger(f"sqlite:///{path}", busy_timeout_ms=20)
    folder = tmp_path / "spill"
    journal = folder / "rows.jsonl"
    locker = sqlite3.connect(path, isolation_level=None)

    async def run() -> None:
        writer = LedgerWriter(ledger, flush_ms=10, journal_path=journal)
        writer.start()
        shutil.rmtree(folder)
        locker.execute("BEGIN EXCLUSIVE")
        for i in range(10):
            writer.submit(LedgerRow(id=f"g{i}", created_at=time.time(), status=200))
        await until(lambda: writer.health().journal_pending == 10)
        assert journal.exists() and len(journal.read_text().splitlines()) == 10
        locker.execute("ROLLBACK")
        await until(lambda: writer.health().ok)
        await writer.close()

    asyncio.run(run())
    locker.close()
    assert ledger.count() == 10
    ledger.close()


def test_a_postgres_outage_spills_and_recovers(own_pg_server: PgServer, tmp_path: Path) -> None:
    ledger = Ledger(own_pg_server.url)

    async def run() -> LedgerWriter:
        writer = LedgerWriter(ledger, flush_ms=10, batch_rows=16, journal_path=tmp_path / "pg.jsonl")
        writer.start()
        for i in range(20):
            writer.submit(LedgerRow(id=f"before{i}", created_at=time.time(), status=200))
        await writer.flush()
        await asyncio.to_thread(own_pg_server.stop)
        for i in range(40):
            writer.submit(LedgerRow(id=f"down{i}", created_at=time.time(), status=200))
            await asyncio.sleep(0.01)
        await until(lambda: writer.health().journal_pending == 40)
        assert writer.health().state == "degraded" and writer.health().alive
        await asyncio.to_thread(own_pg_server.start)
        await until(lambda: writer.health().ok, timeout=30)
        await writer.close()
        return writer

    writer = asyncio.run(run())
    assert ledger.count() == 60 and writer.replayed == 40
    ledger.close()


def test_concurrent_migrations_of_an_empty_database_all_succeed(db_url: str) -> None:
    import concurrent.futures

    def open_one(_: int) -> int:
        ledger = Ledger(db_url)
        try:
            return ledger.version()
        finally:
            ledger.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(open_one, range(8)))
    assert versions == [MIGRATIONS[-1].number] * 8
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM schema_version").scalar() == len(MIGRATIONS)
    engine.dispose()


_any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=400)  # surrogates too
_any_value = st.one_of(st.none(), _any_text, st.integers(), st.floats(), st.booleans())
_json = st.recursive(_any_value, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_any_text, inner, max_size=4)), max_leaves=12)


def test_any_field_values_are_storable_and_inserted(db_url: str) -> None:
    ledger = Ledger(db_url)

    @settings(max_examples=150, deadline=None)
    @given(text=_any_text, number=st.integers(), real=st.floats(), knob=_json, chain=st.lists(_json, max_size=3))
    def check(text: str, number: int, real: float, knob: object, chain: list[object]) -> None:
        row = LedgerRow(id=f"h{time.time_ns()}", created_at=real, requested_model=text, api_key_id=text,
                        error_type=text, prompt_text=text, status=number, prompt_tokens=number,
                        completion_tokens=number, cost_usd=real, ttft_ms=real, probability=real,
                        knob={"k": knob}, fallback_chain=chain)  # type: ignore[list-item]
        stored = row.storable()
        json.dumps(stored, allow_nan=False)
        ledger.insert_stored([stored])  # the database takes it as it is: no driver or constraint error
        assert stored["id"] in ledger.ids()

    try:
        check()
    finally:
        ledger.close()
