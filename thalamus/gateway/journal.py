"""The ledger's local journal: an append-only, fsynced JSON-lines file of rows not yet known to be stored.

The writer appends rows here while the database is unreachable (``durability: batched``) or before
each response ends (``durability: journal``), and replays them into the database later; the file is
truncated only once every row in it is confirmed stored. One process owns a journal file at a time
(an exclusive ``flock``): a second gateway pointed at the same path takes the next free slot
(``PATH.1``, ``PATH.2``, ...), so a truncation never removes another process's rows, and a restarted
gateway finds its predecessor's leftovers in the slot it claims. All methods are thread-safe and
blocking (the writer calls them through ``asyncio.to_thread``).
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

log = logging.getLogger("thalamus.gateway.journal")

MAX_SLOTS = 16


class JournalError(RuntimeError):
    """The journal could not be opened or written (disk full, path not writable, all slots taken)."""


class Journal:
    """Rows appended with one ``fsync`` per call (group commit); read back whole; truncated when confirmed."""

    def __init__(self, path: Path) -> None:
        self.base = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.path = self.base
        self.appended = 0       # rows appended over this object's life, counting the ones found at open
        self.rows_in_file = 0
        self.syncs = 0          # fsyncs of appends: fewer than rows when rows arrive together
        with self._lock:
            self._claim()

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
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise JournalError(f"ledger journal {path}: cannot open ({exc})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # another live process owns this slot
                continue
            self._fd, self.path = fd, path
            self._adopt()
            return
        raise JournalError(f"ledger journal {self.base}: all {MAX_SLOTS} slots are held by other processes")

    def _adopt(self) -> None:
        """Count the rows a previous owner left; end a torn last line so new rows start clean."""
        assert self._fd is not None
        data = self._read_bytes()
        if data and not data.endswith(b"\n"):
            self._write_all(b"\n")
        lines = sum(1 for line in data.splitlines() if line.strip())
        self.rows_in_file = lines
        self.appended += lines
        with contextlib.suppress(OSError):  # make the file's creation itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _ensure_open(self) -> None:
        """Reopen when the file was removed or replaced under us (its folder deleted, say)."""
        if self._fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return
            except OSError:
                pass
            log.warning("ledger journal %s disappeared; recreating it", self.path)
            os.close(self._fd)
            self._fd = None
        self.rows_in_file = 0
        self._claim()

    # -- io -------------------------------------------------------------------------------------
    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _read_bytes(self) -> bytes:
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
            except OSError as exc:
                raise JournalError(f"ledger journal {self.path}: append failed ({exc})") from exc
            self.syncs += 1
            self.appended += len(rows)
            self.rows_in_file += len(rows)
            return self.appended

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """Every row in the file (a torn or corrupt line is skipped and logged), and the sequence
        number the file ends at."""
        with self._lock:
            try:
                self._ensure_open()
                data = self._read_bytes()
            except OSError as exc:
                raise JournalError(f"ledger journal {self.path}: read failed ({exc})") from exc
            upto = self.appended
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                log.error("ledger journal %s line %d: not JSON (a write torn by a crash); skipped", self.path, number)
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows, upto

    def truncate_if_confirmed(self, confirmed: int) -> bool:
        """Empty the file when every row appended so far (sequence <= ``confirmed``) is stored."""
        with self._lock:
            if confirmed < self.appended or self._fd is None:
                return False
            if self.rows_in_file:
                try:
                    os.ftruncate(self._fd, 0)
                    os.fsync(self._fd)
                except OSError as exc:
                    raise JournalError(f"ledger journal {self.path}: truncate failed ({exc})") from exc
                self.rows_in_file = 0
            return True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # closing releases the flock
                self._fd = None
