"""Who may read what: the caller's role, resolved once per request, and the rows it may see.

Three roles read the gateway's data (stats, request rows, spend, the dashboard's API, ``/metrics``, the
judge's and the controllers' state, ``/v1/models``):

- ``admin``: the admin key (``auth.admin_key_env``), or anyone while auth is off: every row, every key;
- ``team_admin``: a key created with ``role: team_admin`` and a ``team`` (virtual or static): the rows and
  spend of every key of its team, revoked keys included (their rows stay the team's history);
- ``key``: any other key: its own rows and spend only.

Reads are cut in one place: ``Principal.keys`` is the set of key ids whose rows the caller may read (None:
all), and the stats layer turns it into one SQL filter (``stats.sql.Filters.scope``). Operator-wide
state that belongs to no tenant (``/metrics``, the judge, the controllers) needs the admin role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from thalamus.gateway.wire.protocol import RequestError

Role = Literal["admin", "team_admin", "key"]
KEY_ROLES = ("key", "team_admin")  # what a key (static or virtual) may be given; admin is the admin key only


@dataclass(frozen=True)
class Principal:
    """The caller of a read endpoint: its role, its key id (None for the admin key or auth off), its team,
    and the key ids whose rows it may read (None: every row)."""

    role: Role
    key_id: str | None = None
    team: str | None = None
    keys: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_read_key(self, key_id: str | None) -> bool:
        return self.keys is None or (key_id is not None and key_id in self.keys)

    def require_admin(self, what: str) -> None:
        """403 unless admin: ``what`` is operator-wide state, not a tenant's."""
        if not self.is_admin:
            raise RequestError(403, f"{what} is operator-wide: it needs the admin key (auth.admin_key_env); "
                               f"key {self.key_id!r} has role {self.role!r}", code="admin_only",
                               type_="permission_error")

    def check_key(self, asked: str | None) -> None:
        """403 when a ``key`` filter names a key outside what the caller may read."""
        if asked is not None and not self.may_read_key(asked):
            scope = f"team {self.team!r}" if self.role == "team_admin" else "its own"
            raise RequestError(403, f"key {self.key_id!r} may read only {scope} keys' rows, not {asked!r}",
                               param="key", code="not_your_key", type_="permission_error")


ADMIN = Principal("admin")


def principal_of(key_id: str, role: str | None, team: str | None, team_keys: frozenset[str]) -> Principal:
    """A key's principal; ``team_keys``: every key id of its team (used only for a team admin)."""
    if role == "team_admin" and team is not None:
        return Principal("team_admin", key_id, team, team_keys | {key_id})
    return Principal("key", key_id, team, frozenset({key_id}))
