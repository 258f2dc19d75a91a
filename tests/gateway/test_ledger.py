"""The ledger: numbered migrations, batched writes that lose nothing, export for re-training."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import openai
import pandas as pd
import sqlalchemy as sa
from gwhelpers import GatewayFactory, ledger_rows

from thalamus.datasets.schema import RoutingDataset
from thalamus.ledger import MIGRATIONS, Ledger, LedgerWriter
from thalamus.ledger.row import LedgerRow


def test_migrations_are_numbered_and_upgrade_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    from thalamus.ledger import schema_version

    with engine.begin() as conn:  # a ledger left at version 1 by an older release
        schema_version.create(conn)
        MIGRATIONS[0].apply(conn)
        conn.execute(schema_version.insert().values(version=1, applied_at=time.time()))
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.version() == len(MIGRATIONS) == MIGRATIONS[-1].number
    with ledger.engine.connect() as conn:
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("feedback")}
        versions = conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
        columns = {c["name"] for c in sa.inspect(conn).get_columns("requests")}
        feedback_columns = {c["name"] for c in sa.inspect(conn).get_columns("feedback")}
    assert "ix_feedback_request_id" in indexes and "api_key_id" in feedback_columns
    assert versions == [m.number for m in MIGRATIONS] == list(range(1, MIGRATIONS[-1].number + 1))
    assert {"baseline_model", "baseline_cost_usd", "predicted_quality", "upstream_ms"} <= columns  # migration 4
    tables = set(sa.inspect(ledger.engine).get_table_names())
    assert {"rollup_hourly", "rollup_hourly_router"} <= tables  # migration 5
    assert {"embedding", "embedder_id", "rollout"} <= columns  # migration 6
    assert {"api_keys", "key_usage"} <= tables and "cache" in columns  # migration 7
    assert "judge_calls" in tables  # migration 8
    assert "switch_cost" in columns  # migration 9
    assert "teams" in tables  # migration 11: teams as records; keys get role, expiry, rotation
    with ledger.engine.connect() as conn:
        key_columns = {c["name"] for c in sa.inspect(conn).get_columns("api_keys")}
    assert {"role", "expires_at", "prev_key_hash", "prev_expires_at"} <= key_columns
    assert {"session_id", "affinity", "affinity_reason", "variant", "guard", "policy"} <= columns  # migration 12
    assert "sessions" in tables
    assert "profile_stats" in tables  # migration 13
    assert Ledger(url).migrate() == MIGRATIONS[-1].number  # idempotent


def test_writer_batches_and_drains_on_close(db_url: str) -> None:
    ledger = Ledger(db_url)

    async def run() -> LedgerWriter:
        writer = LedgerWriter(ledger, flush_ms=10_000, batch_rows=64)  # only size or close flushes
        writer.start()
        for i in range(150):
            writer.submit(LedgerRow(id=f"r{i}", created_at=time.time(), status=200, knob={"kind": "wtp"}))
        deadline = time.monotonic() + 10  # a loaded machine may take a while to write two batches
        while ledger.count() < 128 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert 128 <= ledger.count() < 150  # two full batches written, the rest still queued
        await writer.close()
        return writer

    writer = asyncio.run(run())
    assert ledger.count() == 150 and writer.written == 150 and writer.failed_batches == 0


def test_a_row_is_awaited_alone_not_behind_the_queue(tmp_path: Path) -> None:
    """Feedback waits for its own request's row (``LedgerWriter.handled``), not for the queue to drain."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")

    async def run() -> tuple[bool, int, bool]:
        writer = LedgerWriter(ledger, flush_ms=1, batch_rows=8)
        writer.start()
        writer.submit(LedgerRow(id="mine", created_at=time.time(), status=200))
        for i in range(400):  # queued behind it: 50 more batches
            writer.submit(LedgerRow(id=f"later{i}", created_at=time.time(), status=200))
        got = await writer.handled("mine", timeout=30)
        stored_when_woken = ledger.count()
        unknown = await writer.handled("never-submitted", timeout=0.05)
        await writer.close()
        return got, stored_when_woken, unknown

    got, stored_when_woken, unknown = asyncio.run(run())
    assert got and ledger.request_owner("mine") == (True, None)
    assert stored_when_woken < 401  # woken before the rows behind it were all written
    assert not unknown and ledger.count() == 401


def test_a_waiter_that_leaves_does_not_unhook_another(tmp_path: Path) -> None:
    """Two feedback calls on one fresh request wait for the same row; the first gives up (it found the row
    another way and cancels its wait): the second is still woken when the row is written, not left to time out
    and answer "no such request"."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")

    async def run() -> bool:
        writer = LedgerWriter(ledger, flush_ms=1, batch_rows=8)
        first = asyncio.create_task(writer.handled("shared", timeout=30))
        second = asyncio.create_task(writer.handled("shared", timeout=5))
        await asyncio.sleep(0.01)  # both registered
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        writer.start()
        writer.submit(LedgerRow(id="shared", created_at=time.time(), status=200))
        woken = await second
        await writer.close()
        return woken

    assert asyncio.run(run())
    ledger.close()


def test_200_concurrent_requests_leave_200_rows(make_gateway: GatewayFactory, dataset: RoutingDataset) -> None:
    gw = make_gateway()

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0) as client:
            async def one(i: int) -> str:
                raw = await client.chat.completions.with_raw_response.create(
                    model="auto" if i % 2 else "weak", stream=i % 3 == 0,
                    messages=[{"role": "user", "content": dataset.texts[i % dataset.n_prompts]}])
                if i % 3 == 0:
                    async for _ in raw.parse():  # type: ignore[attr-defined]
                        pass
                return raw.headers["x-thalamus-request-id"]

            return list(await asyncio.gather(*[one(i) for i in range(200)]))

    ids = asyncio.run(run())
    gw.stop()  # shutdown drains the writer
    rows = ledger_rows(gw.ledger_path, 200, timeout=1)  # type: ignore[attr-defined]
    assert len(rows) == 200 and set(rows["id"]) == set(ids)
    assert (rows["status"] == 200).all() and rows["cost_usd"].gt(0).all()


def test_export_is_a_routing_dataset(db_url: str, tmp_path: Path) -> None:
    ledger = Ledger(db_url)
    ledger.insert_rows([
        LedgerRow(id="a", created_at=1.0, chosen_model="strong", prompt_text="p1", cost_usd=0.01,
                  cost_estimated=False, router="best"),
        LedgerRow(id="b", created_at=2.0, chosen_model="weak", prompt_text="p2", cost_usd=0.0001,
                  cost_estimated=True, router="best"),
        LedgerRow(id="c", created_at=3.0, chosen_model="weak", prompt_text="p3", cost_usd=0.0001),
    ])
    ledger.add_feedback("a", 1.0, "good", "user", None)
    ledger.add_feedback("b", 0.0, "bad", "user", None)
    ledger.add_feedback("b", 0.5, None, "judge", "meh")
    ds = ledger.export()
    out = RoutingDataset.from_parquet(ds.to_parquet(tmp_path / "logged.parquet"))
    assert out.models == ["strong", "weak"] and out.texts == ["p1", "p2"] and out.cost_estimated
    assert out.quality[0, 0] == 1.0 and out.quality[1, 1] == 0.25 and pd.isna(out.quality[0, 1])
    assert out.cost[1, 1] == 0.0001


def test_export_keeps_every_model_of_a_prompt(db_url: str, tmp_path: Path) -> None:
    ledger = Ledger(db_url)
    ledger.insert_rows([
        LedgerRow(id="a1", created_at=1.0, chosen_model="strong", prompt_text="same", cost_usd=0.02, router="best"),
        LedgerRow(id="a2", created_at=2.0, chosen_model="weak", prompt_text="same", cost_usd=0.001, router="best"),
        LedgerRow(id="a3", created_at=3.0, chosen_model="weak", prompt_text="same", cost_usd=0.003, router="best"),
        LedgerRow(id="b1", created_at=4.0, chosen_model="weak", prompt_text="other", cost_usd=0.002, router="best"),
    ])
    for request_id, score in [("a1", 1.0), ("a2", 0.0), ("a3", 1.0), ("a3", 0.0), ("b1", 0.5)]:
        ledger.add_feedback(request_id, score, None, "user", None, api_key_id="team-a")
    ds = ledger.export()
    assert ds.models == ["strong", "weak"] and ds.texts == ["same", "other"]
    assert ds.quality[0, 0] == 1.0 and ds.quality[0, 1] == 0.25  # weak: mean of a2 (0.0) and a3 (mean 0.5)
    assert ds.cost[0, 1] == 0.002 and ds.cost[0, 0] == 0.02 and ds.quality[1, 1] == 0.5
    assert list(ds.prompts["task"]) == ["", ""] and list(ds.prompts["prompt_id"]) == ["a1", "b1"]
    assert ledger.request_owner("a1") == (True, None) and ledger.request_owner("nope") == (False, None)
    ledger.close()


def test_feedback_records_the_key_and_request_owner_reads_it(db_url: str) -> None:
    ledger = Ledger(db_url)
    ledger.insert_rows([LedgerRow(id="k1", created_at=1.0, api_key_id="team-a")])
    fid = ledger.add_feedback("k1", 1.0, "good", "\ud800src", "c\x00", api_key_id="team-b")
    assert ledger.request_owner("k1") == (True, "team-a")
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT api_key_id, source, comment FROM feedback WHERE id = :i"),
                           {"i": fid}).one()
    assert tuple(row) == ("team-b", "\ufffdsrc", "c")
    ledger.close()
