"""``ledger.durability``: what ``record`` promises in each mode, checked with a real kill -9.

``journal``: once ``record`` returns, the row survives the process being killed (it is replayed from
the fsynced journal at the next start); rows recorded together share fsyncs. ``batched``: rows queued
within the flush window are lost on kill -9 (the documented loss window).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from thalamus.ledger import Ledger, LedgerWriter
from thalamus.ledger.journal import Journal
from thalamus.ledger.row import LedgerRow

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from pathlib import Path
    from thalamus.ledger import Ledger, LedgerWriter
    from thalamus.ledger.row import LedgerRow

    async def main(url, journal, mode, n):
        writer = LedgerWriter(Ledger(url), flush_ms=10_000, batch_rows=10_000, journal_path=Path(journal),
                              durability=mode)
        writer.start()
        async def one(i):
            await writer.record(LedgerRow(id=f"k{i}", created_at=time.time(), status=200))
            print(f"k{i}", flush=True)  # the 'response': only after record() returned
        await asyncio.gather(*[one(i) for i in range(n)])
        print("done", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
""")


def _killed_after_answers(url: str, journal: Path, mode: str, n: int) -> set[str]:
    """Run a writer in a child process, collect the ids it answered, kill -9 it; return the ids."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url, str(journal), mode, str(n)],
                            stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    answered: set[str] = set()
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "done":
            break
        answered.add(line.strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return answered


def _replay(url: str, journal: Path) -> LedgerWriter:
    async def run() -> LedgerWriter:
        writer = LedgerWriter(Ledger(url), flush_ms=10, journal_path=journal)
        writer.start()
        await writer.close()
        return writer

    return asyncio.run(run())


def test_journal_mode_loses_nothing_on_kill_9(db_url: str, tmp_path: Path) -> None:
    journal = tmp_path / "rows.jsonl"
    Ledger(db_url).close()  # migrate first, as a gateway's start does
    answered = _killed_after_answers(db_url, journal, "journal", 300)
    assert len(answered) == 300
    ledger = Ledger(db_url)
    assert ledger.count() == 0  # the database had nothing yet: only the journal holds the rows
    writer = _replay(db_url, journal)
    assert ledger.ids() == answered and writer.replayed == 300 and journal.read_text() == ""
    ledger.close()


def test_batched_mode_loses_its_flush_window_on_kill_9(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    Ledger(url).close()
    answered = _killed_after_answers(url, tmp_path / "rows.jsonl", "batched", 100)
    assert len(answered) == 100
    _replay(url, tmp_path / "rows.jsonl")
    ledger = Ledger(url)
    assert ledger.count() == 0  # queued but not yet flushed: the documented loss window
    ledger.close()


def test_record_group_commits_and_the_journal_is_truncated_once_stored(db_url: str, tmp_path: Path) -> None:
    ledger = Ledger(db_url)
    journal = tmp_path / "g.jsonl"

    async def run() -> LedgerWriter:
        writer = LedgerWriter(ledger, flush_ms=20, journal_path=journal, durability="journal")
        writer.start()
        await asyncio.gather(*[writer.record(LedgerRow(id=f"g{i}", created_at=time.time(), status=200))
                               for i in range(200)])
        assert writer.journal is not None and writer.journal.appended == 200
        assert writer.journal.syncs < 20  # 200 rows arriving together share a handful of fsyncs
        await writer.flush()
        assert writer.health().ok
        await writer.close()
        return writer

    asyncio.run(run())
    assert ledger.count() == 200 and journal.read_text() == ""
    ledger.close()


def test_the_journal_rotates_so_steady_load_still_shrinks_it(tmp_path: Path) -> None:
    path = tmp_path / "rot.jsonl"
    journal = Journal(path, rotate_rows=10)
    for group in range(7):
        journal.append([{"id": f"r{group * 5 + i}"} for i in range(5)])
    assert journal.rows_in_file == 35 and len(list(tmp_path.glob("rot.jsonl.sealed-*"))) == 3
    assert not journal.truncate_if_confirmed(20)  # rows 1-20 are stored, 21-35 not yet
    rows, upto = journal.read()
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20, 35)] and upto == 35
    journal.close()
    again = Journal(path, rotate_rows=10)  # a restart finds the sealed segment and the active file
    assert again.rows_in_file == 15 and again.read()[1] == 15
    second = Journal(path)  # the slot is owned: a second owner (another process) moves to the next one
    assert second.path == path.with_name("rot.jsonl.1") and second.rows_in_file == 0
    second.close()
    assert again.truncate_if_confirmed(15) and list(tmp_path.glob("rot.jsonl.sealed-*")) == []
    assert path.read_text() == ""
    again.close()
