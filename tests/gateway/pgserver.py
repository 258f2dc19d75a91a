"""A private PostgreSQL server for the ledger tests, and the fixtures that hand out databases.

``THALAMUS_TEST_PG_URL`` (set by ``.ci/run``, which starts a server the same way) is used when set;
otherwise a server is started here from the PostgreSQL binaries (``initdb``/``pg_ctl`` on PATH or
under /usr/lib/postgresql/*/bin) in a temp dir, on 127.0.0.1 and a free port, as the ``postgres``
user when run as root (initdb refuses root). With neither, Postgres tests fail under ``CI=true``
and are skipped with the reason otherwise. Each test gets a fresh database on the shared server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

URL_ENV = "THALAMUS_TEST_PG_URL"


def pg_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """``initdb`` + ``pg_ctl`` in a temp dir; ``stop()`` / ``start()`` for outage tests."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="thalamus-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            shutil.chown(self.root, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "thalamus", "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://thalamus@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._as, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                "-c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason} (set {URL_ENV} or install postgresql)")


def new_database(admin_url: str) -> str:
    """A fresh, empty database on the server at ``admin_url``; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        engine.dispose()
    return str(sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """The URL of a running PostgreSQL server (its maintenance database)."""
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    bindir = pg_bindir()
    if bindir is None:
        _unavailable(f"{URL_ENV} is not set and no initdb/pg_ctl was found")
        return
    server = PgServer(bindir)
    try:
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        server.cleanup()
        _unavailable(f"could not start a private server: {exc}")
        return
    try:
        yield server.url
    finally:
        server.stop()
        server.cleanup()


@pytest.fixture
def pg_url(pg_admin_url: str) -> str:
    """A fresh database for one test."""
    return new_database(pg_admin_url)


@pytest.fixture
def own_pg_server() -> Iterator[PgServer]:
    """A private server this test may stop and start (outage tests); needs the binaries."""
    bindir = pg_bindir()
    if bindir is None:
        _unavailable("no initdb/pg_ctl found for a server the test can stop and restart")
    assert bindir is not None
    server = PgServer(bindir)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped by the test
            server.stop()
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same ledger test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    url: str = request.getfixturevalue("pg_url")
    return url
