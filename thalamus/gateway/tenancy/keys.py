"""Virtual API keys: created, listed and revoked in the ledger database, looked up by the hash of the secret.

A secret is ``sk-thl-`` + 32 random bytes (URL-safe base64); only its SHA-256 is stored (a random 256-bit
secret needs no salt: nothing shorter than the secret itself finds it). The secret is shown once, when the
key is created. The gateway keeps the table in memory (``KeyStore.load_active``, refreshed every
``auth.sync_ms``), so a lookup on the request path is one hash and one dict lookup, and a key revoked on
one replica stops working on every replica within one refresh.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from thalamus.errors import ConfigError
from thalamus.gateway.tenancy.roles import KEY_ROLES
from thalamus.ledger.schema import api_keys

SECRET_PREFIX = "sk-thl-"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


class KeyNotFound(ConfigError):
    """No active virtual key of that id (the admin API answers 404)."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """A virtual key's scope and limits; None means unrestricted."""

    id: str
    created_at: float = field(default_factory=time.time)
    models: tuple[str, ...] | None = None
    routers: tuple[str, ...] | None = None
    budget_day_usd: float | None = None
    budget_month_usd: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    team: str | None = None
    owner: str | None = None
    metadata: dict[str, Any] | None = None
    revoked_at: float | None = None
    key_prefix: str | None = None
    role: str = "key"  # key | team_admin (tenancy/roles.py)
    expires_at: float | None = None  # epoch seconds; the key stops working then

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def public(self) -> dict[str, Any]:
        """What listings show: everything but the hash (the secret is never stored)."""
        out = asdict(self)
        for name in ("models", "routers"):
            out[name] = list(out[name]) if out[name] is not None else None
        return out


def validate_id(key_id: str) -> str:
    if not _ID.match(key_id):
        raise ConfigError(f"key id {key_id!r}: use 1-128 letters, digits and . _ : @ - (starting with a letter "
                          "or digit)")
    return key_id


def _names(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"'{name}' must be a list of names")
    return tuple(value)


def parse_limit(value: Any, name: str, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e15:
        raise ConfigError(f"'{name}' must be a non-negative number")
    if kind is int and value != int(value):
        raise ConfigError(f"'{name}' must be a whole number")
    return kind(value)


UPDATABLE = ("models", "routers", "budget_day_usd", "budget_month_usd", "rpm", "tpm", "team", "owner", "metadata",
             "role", "expires_at")


def _role(value: Any, team: Any) -> str:
    role = "key" if value is None else value
    if role not in KEY_ROLES:
        raise ConfigError(f"'role' must be one of {list(KEY_ROLES)} (the admin role is the admin key), got {role!r}")
    if role == "team_admin" and team is None:
        raise ConfigError("'role': team_admin needs a 'team'")
    return str(role)


def record_from(fields: dict[str, Any]) -> KeyRecord:
    """A KeyRecord from the admin API's or the CLI's fields; errors name the field."""
    known = {"id", *UPDATABLE}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown key field(s) {unknown}; known: {sorted(known)}")
    key_id = fields.get("id") or f"key-{secrets.token_hex(6)}"
    if not isinstance(key_id, str):
        raise ConfigError("'id' must be a string")
    meta = fields.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ConfigError("'metadata' must be an object")
    for name in ("team", "owner"):
        if fields.get(name) is not None and (not isinstance(fields[name], str) or len(fields[name]) > 128):
            raise ConfigError(f"'{name}' must be a string of at most 128 characters")
    return KeyRecord(id=validate_id(key_id), models=_names(fields.get("models"), "models"),
                     routers=_names(fields.get("routers"), "routers"),
                     budget_day_usd=parse_limit(fields.get("budget_day_usd"), "budget_day_usd", float),
                     budget_month_usd=parse_limit(fields.get("budget_month_usd"), "budget_month_usd", float),
                     rpm=parse_limit(fields.get("rpm"), "rpm", int), tpm=parse_limit(fields.get("tpm"), "tpm", int),
                     team=fields.get("team"), owner=fields.get("owner"), metadata=meta,
                     role=_role(fields.get("role"), fields.get("team")),
                     expires_at=parse_limit(fields.get("expires_at"), "expires_at", float))


def _columns(record: KeyRecord) -> dict[str, Any]:
    """The stored columns of a record's scope and limits."""
    return {"models": json.dumps(list(record.models)) if record.models is not None else None,
            "routers": json.dumps(list(record.routers)) if record.routers is not None else None,
            "budget_day_usd": record.budget_day_usd, "budget_month_usd": record.budget_month_usd,
            "rpm": record.rpm, "tpm": record.tpm, "team": record.team, "owner": record.owner,
            "metadata": json.dumps(record.metadata) if record.metadata is not None else None,
            "role": record.role, "expires_at": record.expires_at}


def _from_row(row: Any) -> KeyRecord:
    def names(text: str | None) -> tuple[str, ...] | None:
        return tuple(json.loads(text)) if text is not None else None

    return KeyRecord(id=row.id, created_at=row.created_at, models=names(row.models), routers=names(row.routers),
                     budget_day_usd=row.budget_day_usd, budget_month_usd=row.budget_month_usd, rpm=row.rpm,
                     tpm=row.tpm, team=row.team, owner=row.owner,
                     metadata=json.loads(row.metadata) if row.metadata is not None else None,
                     revoked_at=row.revoked_at, key_prefix=row.key_prefix, role=row.role or "key",
                     expires_at=row.expires_at)


class KeyStore:
    """The ``api_keys`` table (synchronous: the gateway calls it from a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, record: KeyRecord, reserved: frozenset[str] = frozenset()) -> tuple[KeyRecord, str]:
        """Store a new key; returns it with its secret (shown once). ``reserved``: static key ids."""
        if record.id in reserved:
            raise ConfigError(f"key id {record.id!r} is already a static key in the config")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        prefix = secret[:11]
        values = {"id": record.id, "key_hash": hash_secret(secret), "key_prefix": prefix,
                  "created_at": record.created_at, **_columns(record)}
        try:
            with self.engine.begin() as conn:
                conn.execute(api_keys.insert().values(**values))
        except sa.exc.IntegrityError:
            raise ConfigError(f"key id {record.id!r} already exists (ids are never reused, even revoked)") from None
        return replace(record, key_prefix=prefix), secret

    def list(self, include_revoked: bool = False) -> list[KeyRecord]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_from_row(r) for r in conn.execute(query)]

    def revoke(self, key_id: str) -> bool:
        """Mark the key revoked; False when no such (unrevoked) key exists."""
        query = (api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                 .values(revoked_at=time.time()))
        with self.engine.begin() as conn:
            return bool(conn.execute(query).rowcount)

    def update(self, key_id: str, fields: dict[str, Any]) -> KeyRecord:
        """Change an active key's scope, limits, team, role or expiry (the secret stays); ConfigError names
        the field or the key at fault."""
        unknown = sorted(set(fields) - set(UPDATABLE))
        if unknown:
            raise ConfigError(f"key fields {unknown} cannot be updated; updatable: {list(UPDATABLE)}")
        current = self.get(key_id)
        merged = {name: getattr(current, name) for name in UPDATABLE} | fields
        merged = {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
        record = replace(record_from({"id": key_id, **merged}), created_at=current.created_at,
                         key_prefix=current.key_prefix)
        with self.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**_columns(record)))
        return record

    def rotate(self, key_id: str, grace_s: float) -> tuple[KeyRecord, str]:
        """A new secret for an active key; the old one keeps working for ``grace_s`` seconds."""
        current = self.get(key_id)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        with self.engine.begin() as conn:
            old = conn.execute(sa.select(api_keys.c.key_hash).where(api_keys.c.id == key_id)).scalar_one()
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(
                key_hash=hash_secret(secret), key_prefix=secret[:11], prev_key_hash=old if grace_s > 0 else None,
                prev_expires_at=now + grace_s if grace_s > 0 else None))
        return replace(current, key_prefix=secret[:11]), secret

    def get(self, key_id: str) -> KeyRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id,
                                                         api_keys.c.revoked_at.is_(None))).first()
        if row is None:
            raise KeyNotFound(f"no active virtual key {key_id!r} (thalamus keys list shows them)")
        return _from_row(row)

    def team_ids(self, team: str) -> frozenset[str]:
        """Every key id of a team, revoked ones included (their rows are still the team's)."""
        with self.engine.connect() as conn:
            return frozenset(conn.execute(sa.select(api_keys.c.id).where(api_keys.c.team == team)).scalars())

    def load_active(self, now: float | None = None) -> dict[str, KeyRecord]:
        """Every unrevoked, unexpired key by the hash of its secret (and of its previous secret while a
        rotation's grace period lasts)."""
        now = time.time() if now is None else now
        query = sa.select(api_keys).where(api_keys.c.revoked_at.is_(None))
        out: dict[str, KeyRecord] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                record = _from_row(r)
                if record.expired(now):
                    continue
                out[r.key_hash] = record
                if r.prev_key_hash is not None and r.prev_expires_at is not None and now < r.prev_expires_at:
                    out[r.prev_key_hash] = record
        return out
