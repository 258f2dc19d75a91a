"""Is a ledger URL usable: a dialect the ledger's migrations cover, with its Python driver installed?

``thalamus serve`` and ``thalamus config check`` both run this before anything opens the database
(``gateway/app.py: check_startup``), so a URL that cannot work is one line naming the setting, the missing
driver and the fix, instead of SQLAlchemy's traceback at the first connect.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from thalamus.errors import ConfigError

SUPPORTED = ("sqlite", "postgresql")  # the dialects every migration in schema.py has SQL for
# the pip package that provides a driver module SQLAlchemy imports
PIP_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pg8000": "pg8000",
                "asyncpg": "asyncpg", "MySQLdb": "mysqlclient", "pymysql": "pymysql", "sqlite3": "(Python's sqlite3)"}
_EXAMPLES = "sqlite:///PATH/ledger.sqlite or postgresql+psycopg://USER:PASSWORD@HOST:5432/DB"


def _parse(url: str, key: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise ConfigError(f"{key}: {url.split('://')[0]!r}... is not a database URL; use {_EXAMPLES}") from None


def check_ledger_url(url: str, key: str = "ledger.url") -> None:
    """Raise ConfigError naming ``key`` when the URL's database is not supported or its driver is missing."""
    parsed = _parse(url, key)
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise ConfigError(f"{key}: {shown}: the ledger stores rows in SQLite or PostgreSQL (its migrations have SQL "
                          f"for those two), not {backend}; use {_EXAMPLES}")
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"{key}: {shown}: SQLAlchemy has no driver named {parsed.get_driver_name()!r} for "
                          f"{backend}; use {_EXAMPLES}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (exc.name or parsed.get_driver_name()).split(".")[0]
        hint = "; or write postgresql+psycopg:// to use psycopg 3" if backend == "postgresql" and \
            module != "psycopg" else ""
        raise ConfigError(f"{key}: {shown}: the database driver {module!r} is not installed: pip install "
                          f"{PIP_PACKAGES.get(module, module)}{hint}") from None
