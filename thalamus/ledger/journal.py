"""The ledger's local journal: an append-only, fsynced JSON-lines file of rows not yet known to be stored.

The writer appends rows here while the database is unreachable (``durability: batched``) or before
each response ends (``durability: journal``), and replays them into the database later. Rows go to
the active file ``PATH``; every ``rotate_rows`` rows it is sealed (renamed ``PATH.sealed-N``) and a
new one started, so under steady load (never a moment with every row stored) the journal still
shrinks: a sealed segment is deleted once all its rows are confirmed stored, the active file is
truncated once all of its are. One process owns a journal at a time (an exclusive ``flock`` on
``PATH.lock``): a second gateway pointed at the same path takes the next free slot (``PATH.1``,
``PATH.2``, ...), so it never deletes another process's rows, and a restarted gateway finds its
predecessor's leftovers in the slot it claims. All methods are thread-safe and blocking (the
writer calls them through ``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("thalamus.ledger.journal")

MAX_SLOTS = 16


class JournalError(RuntimeError):
    """The journal could not be opened or written (disk full, path not writable, all slots taken)."""


class Journal:
    """Rows appended with one fsync per call (group commit); read back whole; dropped when confirmed."""

    def __init__(self, path: Path, rotate_rows: int = 10_000) -> None:
        self.base = Path(path)
        self.rotate_rows = rotate_rows
        self._lock = threading.Lock()
        self._fd: int | None = None        # the active file
        self._lock_fd: int | None = None   # the slot's lock file, held while we own the slot
        self.path = self.base
        self._sealed: list[tuple[Path, int, int]] = []  # (file, rows, sequence number of its last row)
        self._active_rows = 0
        self.appended = 0       # rows appended over this object's life, counting the ones found at open
        self.syncs = 0          # fsyncs of appends: fewer than rows when rows arrive together
        with self._lock:
            self._claim()

    @property
    def rows_in_file(self) -> int:
        """Rows in the journal's files (some may already be stored: a replay is idempotent)."""
        return self._active_rows + sum(rows for _, rows, _ in self._sealed)

    # -- opening ------------------------------------------------------------------------------
    def _slot(self, k: int) -> Path:
        return self.base if k == 0 else self.base.with_name(f"{self.base.name}.{k}")

    def _claim(self) -> None:
        try:
            self.base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"ledger journal {self.base}: cannot create its folder ({exc})") from exc
        for k in range(MAX_SLOTS):
            path = self._slot(k)
            try:
                lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise JournalError(f"ledger journal {path}: cannot open its lock file ({exc})") from exc
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)  # another live process owns this slot
                continue
            self._lock_fd, self.path = lock_fd, path
            self._adopt()
            return
        raise JournalError(f"ledger journal {self.base}: all {MAX_SLOTS} slots are held by other processes")

    def _open_active(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise JournalError(f"ledger journal {self.path}: cannot open ({exc})") from exc

    def _adopt(self) -> None:
        """Count the rows a previous owner left (sealed segments first); end a torn last line."""
        self._sealed = []
        for segment in sorted(self.path.parent.glob(f"{self.path.name}.sealed-*")):
            rows = _count_rows(segment.read_bytes())
            self.appended += rows
            self._sealed.append((segment, rows, self.appended))
        self._open_active()
        data = self._read_active()
        if data and not data.endswith(b"\n"):
            self._write_all(b"\n")
        self._active_rows = _count_rows(data)
        self.appended += self._active_rows
        _fsync_dir(self.path.parent)  # make the files' creation itself durable

    def _ensure_open(self) -> None:
        """Reopen when the active file was removed or replaced under us (its folder deleted, say)."""
        if self._fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return
            except OSError:
                pass
            log.warning("ledger journal %s disappeared; recreating it", self.path)
        self._release()
        self._claim()

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)  # closing the lock file releases the flock
        self._fd = self._lock_fd = None
        self._sealed, self._active_rows = [], 0

    def _seal(self) -> None:
        """Start a new active file; the full one waits, sealed, until its rows are confirmed."""
        sealed = self.path.with_name(f"{self.path.name}.sealed-{self.appended:012d}")
        os.rename(self.path, sealed)
        _fsync_dir(self.path.parent)
        self._sealed.append((sealed, self._active_rows, self.appended))
        assert self._fd is not None
        os.close(self._fd)
        self._open_active()
        self._active_rows = 0

    # -- io -------------------------------------------------------------------------------------
    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _read_active(self) -> bytes:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0) if size else b""

    def append(self, rows: list[dict[str, Any]]) -> int:
        """Write ``rows`` and fsync once; returns the sequence number of the last row appended."""
        data = b"".join(json.dumps(r, allow_nan=False, ensure_ascii=False).encode() + b"\n" for r in rows)
        with self._lock:
            try:
                self._ensure_open()
                self._write_all(data)
                assert self._fd is not None
                os.fdatasync(self._fd)  # data and the file's new size; no other metadata to wait for
                self.syncs += 1
                self.appended += len(rows)
                self._active_rows += len(rows)
                if self._active_rows >= self.rotate_rows:
                    self._seal()
            except OSError as exc:
                raise JournalError(f"ledger journal {self.path}: append failed ({exc})") from exc
            return self.appended

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """Every row in the journal, oldest first (a torn or corrupt line is skipped and logged), and
        the sequence number it ends at."""
        with self._lock:
            try:
                self._ensure_open()
                parts = [(segment, segment.read_bytes()) for segment, _, _ in self._sealed]
                parts.append((self.path, self._read_active()))
            except OSError as exc:
                raise JournalError(f"ledger journal {self.path}: read failed ({exc})") from exc
            upto = self.appended
        rows: list[dict[str, Any]] = []
        for path, data in parts:
            for number, line in enumerate(data.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    log.error("ledger journal %s line %d: not JSON (a write torn by a crash); skipped", path, number)
                    continue
                if isinstance(row, dict):
                    rows.append(row)
        return rows, upto

    def truncate_if_confirmed(self, confirmed: int) -> bool:
        """Drop what is confirmed stored (sequence <= ``confirmed``): sealed segments wholly, the active
        file when every row appended so far is; True when the journal is then empty."""
        with self._lock:
            try:
                while self._sealed and self._sealed[0][2] <= confirmed:
                    segment = self._sealed.pop(0)[0]
                    segment.unlink(missing_ok=True)
                if confirmed >= self.appended and self._active_rows and self._fd is not None:
                    os.ftruncate(self._fd, 0)
                    os.fsync(self._fd)
                    self._active_rows = 0
            except OSError as exc:
                raise JournalError(f"ledger journal {self.path}: truncate failed ({exc})") from exc
            return self.rows_in_file == 0

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None


def _count_rows(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
