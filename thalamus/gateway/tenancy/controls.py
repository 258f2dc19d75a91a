"""Team controls on the request path: virtual keys' and teams' scopes, budgets and rate limits.

Every check reads memory only (``keys.KeyStore``, ``teams.TeamStore`` and ``usage.UsageCounters`` keep the
database's state, refreshed every ``auth.sync_ms`` by one background task), so a limited key costs the
request a few dict lookups. A request counts against its key and, when the key's team is a record, its
team (tenancy/teams.py). The order of checks, each answered with a ledger row (the key is valid):

1. admission (``admit``): requests of this UTC minute against ``rpm``: 429 with ``Retry-After`` (seconds
   to the next minute). An admitted request counts one request at once.
2. scope (``scope``): a backend outside the key's ``models`` or a router outside its ``routers`` is a 403;
   a routed request of a key with ``models`` routes among those models only.
3. reservation (``reserve``): the request's estimate (prompt tokens plus ``max_tokens``, else the largest
   completion of the key's recent answers, capped by the model's context window) against ``tpm`` and its
   cost at the first choice's prices against the day's / month's budget: 429 naming the limit (budgets
   with ``x-should-retry: false``: the SDKs would otherwise retry). Reserved at once, so concurrent
   requests see each other, and settled to the actual tokens and cost when the row is recorded
   (``observe``). Within one process these check-and-add steps run without an ``await`` between them:
   atomic. Across replicas the counters meet in the database every ``sync_ms`` (usage.py); with
   ``auth.strict_limits`` a limited request claims its counts in the database itself (one conditional
   transaction at admission and one at reservation), exact across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, replace

from sqlalchemy.engine import Engine

from thalamus.gateway.config import AuthConfig, BackendConfig
from thalamus.gateway.tenancy.keys import KeyRecord, KeyStore, hash_secret
from thalamus.gateway.tenancy.roles import ADMIN, Principal, principal_of
from thalamus.gateway.tenancy.teams import TeamRecord, TeamStore, team_slot
from thalamus.gateway.tenancy.usage import Claim, Periods, UsageCounters
from thalamus.gateway.wire import protocol as p
from thalamus.ledger.row import LedgerRow

log = logging.getLogger("thalamus.gateway.tenancy.controls")
RE_READS = 8  # bound on re-reading the key table while admin changes keep landing (see _read_keys)
RECENT_ROWS = 32  # a key's answers whose largest completion sizes the reservation of a request without max_tokens


class TeamControls:
    """Virtual keys and their limits for one gateway process; ``start`` / ``close`` run its sync task."""

    def __init__(self, auth: AuthConfig, engine: Engine) -> None:
        self.enabled = auth.enabled and auth.virtual_keys
        self.sync_s = auth.sync_ms / 1000
        self.store = KeyStore(engine)
        self.usage = UsageCounters(engine)
        admin = auth.admin_secret() if auth.enabled else None
        self._admin = admin.encode() if admin else None
        self.static_ids = frozenset(k.id for k in auth.keys)
        self._static = {k.id: (k.role, k.team) for k in auth.keys}
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._changes = 0  # admin changes made on this replica (created, revoked, reloaded): see _read_keys
        self.teams = TeamStore(engine)
        self._teams: dict[str, TeamRecord] = {}
        self.default_completion = auth.reserve_completion_tokens
        self.strict = auth.strict_limits
        self._recent: defaultdict[str, deque[int]] = defaultdict(lambda: deque(maxlen=RECENT_ROWS))
        self._reserved: dict[str, Reservation] = {}  # request id -> what admission reserved
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.enabled:
            return
        await self.sync()  # a restarted replica starts from the database's state
        self._task = asyncio.create_task(self._loop(), name="thalamus-key-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            await self.sync()  # the last additions reach the database

    async def _loop(self) -> None:
        pruned = 0.0
        while True:
            await asyncio.sleep(self.sync_s)
            await self.sync()
            if time.time() - pruned > 60:
                pruned = time.time()
                with contextlib.suppress(Exception):  # housekeeping only; the next minute tries again
                    await asyncio.to_thread(self.usage.prune, pruned)

    async def sync(self) -> None:
        """Push this replica's usage, read everyone's, reload the key table; a failure keeps the additions."""
        taken, now = self.usage.take_pending(), time.time()
        try:
            totals = await asyncio.to_thread(self.usage.sync, taken, now)
            keys = await self._read_keys()
        except Exception as exc:  # the database is away: keep enforcing on what this replica knows
            self.usage.give_back(taken)
            log.warning("key sync failed (limits hold per replica until it succeeds): %s", type(exc).__name__)
            return
        self.usage.apply(totals, now)
        self.install(keys)

    async def reload(self) -> None:
        """Re-read the key and team tables (after an admin change on this replica), counters untouched: a
        second ``sync`` racing the background one would hide its batch in flight from the limits."""
        self._changes += 1
        self.install(await self._read_keys())

    async def _read_keys(self) -> dict[str, KeyRecord]:
        """The key table, read again while an admin change on this replica lands during the read: a snapshot
        taken before a key was created (or revoked) here would otherwise undo that change until the next
        sync (a new key answered 401, a revoked one kept working). Reads the team table too."""
        for _ in range(RE_READS):
            mark = self._changes
            keys = await asyncio.to_thread(self.store.load_active)
            self._teams = await asyncio.to_thread(self.teams.load)
            if mark == self._changes:
                break
        return keys

    def install(self, by_hash: dict[str, KeyRecord]) -> None:
        self._by_hash = by_hash
        self._by_id = {r.id: r for r in by_hash.values()}

    # -- identity -------------------------------------------------------------------------
    def lookup(self, token: str) -> str | None:
        """The id of the active virtual key whose secret this is."""
        if not self.enabled:
            return None
        record = self._by_hash.get(hash_secret(token))
        if record is None or record.expired(time.time()):  # expiry holds between two syncs too
            return None
        return record.id

    def is_admin(self, token: str | None) -> bool:
        if self._admin is None or token is None:
            return False
        return hmac.compare_digest(self._admin, token.encode("utf-8", "surrogateescape"))

    async def principal(self, token: str | None, key_id: str | None) -> Principal:
        """The reader behind a request: the admin key, or the key ``key_id`` (None: auth off, all rows)."""
        if self.is_admin(token) or key_id is None:
            return ADMIN
        role, team = self._role_team(key_id)
        if role != "team_admin" or team is None:
            return principal_of(key_id, role, team, frozenset())
        static = frozenset(k for k, (_, t) in self._static.items() if t == team)
        stored = await asyncio.to_thread(self.store.team_ids, team) if self.enabled else frozenset()
        return principal_of(key_id, role, team, static | stored)

    def _role_team(self, key_id: str) -> tuple[str, str | None]:
        """A key's role and team: the virtual key's record, else the static key's config."""
        record = self.record(key_id)
        return (record.role, record.team) if record is not None else self._static.get(key_id, ("key", None))

    def team_of(self, key_id: str | None) -> str | None:
        """The team a request of this key counts under (limits, metrics, access log, traces)."""
        return self._role_team(key_id)[1] if key_id is not None else None

    def static_teams(self) -> dict[str, str]:
        """The team of each static key that has one (the config's; virtual keys' teams are in ``api_keys``)."""
        return {k: team for k, (_, team) in self._static.items() if team is not None}

    def record(self, key_id: str | None) -> KeyRecord | None:
        return self._by_id.get(key_id) if key_id is not None else None

    def created(self, record: KeyRecord, secret: str) -> None:
        """A key made on this replica works here at once (other replicas: after their next sync)."""
        self._changes += 1
        self._by_hash = {**self._by_hash, hash_secret(secret): record}
        self._by_id = {**self._by_id, record.id: record}

    def revoked(self, key_id: str) -> None:
        self._changes += 1
        self.install({h: r for h, r in self._by_hash.items() if r.id != key_id})

    # -- checks ---------------------------------------------------------------------------
    def _subjects(self, key_id: str | None) -> list[Subject]:
        """What a request of this key counts against: the virtual key, and the team when it is a record."""
        if key_id is None:
            return []
        record = self.record(key_id)
        out = [Subject(record.id, f"key {record.id!r}", record.rpm, record.tpm, record.budget_day_usd,
                       record.budget_month_usd)] if record is not None else []
        team_id = self.team_of(key_id)
        team = self._teams.get(team_id) if team_id is not None else None
        if team is not None:
            out.append(Subject(team_slot(team.id), f"team {team.id!r}", team.rpm, team.tpm, team.budget_day_usd,
                               team.budget_month_usd))
        return out

    async def admit(self, key_id: str | None) -> None:
        """Requests per minute of the key and its team; counts the request at once when admitted."""
        subjects = self._subjects(key_id)
        periods = Periods.at(time.time())
        for s in subjects:
            used = self.usage.total(s.slot, periods.minute).requests
            if s.rpm is not None and used >= s.rpm:
                raise _rate_limited(s.label, "requests", s.rpm, used, periods.minute_left_s)
        if self.strict and any(s.rpm is not None for s in subjects):
            claims = [Claim(s.slot, p, requests=1, measure="requests" if p == periods.minute and s.rpm is not None
                            else None, limit=float(s.rpm or 0)) for s in subjects for p in periods.names()]
            if await self._claim(claims, subjects, periods):
                return
        for s in subjects:
            self.usage.add(s.slot, periods.names(), requests=1)

    async def _claim(self, claims: list[Claim], subjects: list[Subject], periods: Periods) -> bool:
        """``auth.strict_limits``: the claims made in the database (True), or refused there (429); False
        when the database is away (the caller then counts in memory, as without strict limits)."""
        try:
            failed = await asyncio.to_thread(self.usage.claim, claims, time.time())
        except Exception as exc:  # enforce on what this replica knows until the database is back
            log.warning("strict limit claim failed (limits hold per replica meanwhile): %s", type(exc).__name__)
            return False
        if failed is None:
            return True
        c, current = failed
        label = next(s.label for s in subjects if s.slot == c.slot)
        if c.measure == "spend_usd":
            raise _over_budget(label, "daily" if c.period == periods.day else "monthly", c.limit, current,
                               c.spend_usd)
        kind = str(c.measure)
        raise _rate_limited(label, kind, int(c.limit), int(current), periods.minute_left_s,
                            c.tokens if kind == "tokens" else None)

    def scope(self, key_id: str | None, backend: str | None, router: str | None,
              overrides: p.RoutingOverrides, aliases: tuple[str, ...] = ()) -> p.RoutingOverrides:
        """403 outside the key's models / routers (a router is named by its name, ``router:NAME`` or any of
        its ``aliases``); a routed request is limited to the key's models."""
        record = self.record(key_id)
        if record is None:
            return overrides
        if backend is not None and record.models is not None and backend not in record.models:
            raise _forbidden(record.id, f"model {backend!r}", record.models, "models")
        if router is not None and not router_allowed(record, router, aliases):
            raise _forbidden(record.id, f"router {router!r}", record.routers or (), "routers")
        if router is not None and record.models is not None:
            asked = overrides.allowed if overrides.allowed is not None else record.models
            return replace(overrides, allowed=tuple(m for m in asked if m in record.models))
        return overrides

    def completion_estimate(self, key_id: str | None, config: BackendConfig, prompt_tokens: int) -> int:
        """Completion tokens reserved for a request without ``max_tokens``: the most the key's recent answers
        used (``auth.reserve_completion_tokens`` before it has any), capped by the model's context window."""
        recent = self._recent.get(key_id) if key_id is not None else None
        guess = max(recent) if recent else self.default_completion
        if config.context_window is not None:
            guess = min(guess, max(config.context_window - prompt_tokens, 0))
        return guess

    async def reserve(self, row: LedgerRow, prompt_tokens: int, max_tokens: int | None, config: BackendConfig) -> None:
        """Reserve this request's estimate (tokens: the prompt plus ``max_tokens`` or ``completion_estimate``;
        cost: the same at the first choice's prices) against the key's and the team's tpm and budgets: 429
        when it does not fit (tpm: unless nothing is used yet this minute), else counted at once, so that
        concurrent requests see each other. ``observe`` settles it to the actual."""
        subjects = self._subjects(row.api_key_id)
        if not subjects:
            return
        completion = max_tokens if max_tokens is not None else self.completion_estimate(
            row.api_key_id, config, prompt_tokens)
        tokens, cost = prompt_tokens + completion, config.cost(prompt_tokens, completion)
        periods = Periods.at(time.time())
        for s in subjects:
            self._fits(s, periods, tokens, cost)
        held = Reservation(tuple(s.slot for s in subjects), periods.names(), tokens, cost)
        if self.strict and any(s.tpm is not None or s.budget_day_usd is not None or s.budget_month_usd is not None
                               for s in subjects):
            claims = [_reservation_claim(s, p, measure, limit, tokens, cost) for s in subjects
                      for p, measure, limit in ((periods.minute, "tokens", s.tpm),
                                                (periods.day, "spend_usd", s.budget_day_usd),
                                                (periods.month, "spend_usd", s.budget_month_usd))]
            if await self._claim(claims, subjects, periods):
                self._reserved[row.id] = held
                return
        for s in subjects:
            self.usage.add(s.slot, periods.names(), tokens=tokens, spend_usd=cost)
        self._reserved[row.id] = held

    def _fits(self, s: Subject, periods: Periods, tokens: int, cost: float) -> None:
        if s.tpm is not None:
            used = self.usage.total(s.slot, periods.minute).tokens
            if used > 0 and used + tokens > s.tpm:
                raise _rate_limited(s.label, "tokens", s.tpm, used, periods.minute_left_s, tokens)
        for budget, period, label in ((s.budget_day_usd, periods.day, "daily"),
                                      (s.budget_month_usd, periods.month, "monthly")):
            spent = self.usage.total(s.slot, period).spend_usd
            if budget is not None and spent + cost > budget:
                raise _over_budget(s.label, label, budget, spent, cost)

    def observe(self, row: LedgerRow) -> None:
        """A recorded row: its actual tokens and cost replace what was reserved (in the reservation's
        periods), or join the counters when nothing was (a request refused before ``reserve``)."""
        tokens = (row.prompt_tokens or 0) + (row.completion_tokens or 0)
        cost = row.cost_usd if row.cost_usd is not None and math.isfinite(row.cost_usd) else 0.0
        held = self._reserved.pop(row.id, None)
        if held is None:
            slots = tuple(s.slot for s in self._subjects(row.api_key_id))
            held = Reservation(slots, Periods.at(row.created_at).names(), 0, 0.0)
        for slot in held.slots:
            self.usage.add(slot, held.periods, tokens=tokens - held.tokens, spend_usd=cost - held.cost_usd)
        if held.slots and row.api_key_id is not None and row.completion_tokens is not None and row.status == 200:
            self._recent[row.api_key_id].append(int(row.completion_tokens))


def _reservation_claim(s: Subject, period: str, measure: str, limit: float | None, tokens: int, cost: float
                       ) -> Claim:
    return Claim(s.slot, period, tokens=tokens, spend_usd=cost, measure=measure if limit is not None else None,
                 limit=float(limit or 0))


@dataclass(frozen=True)
class Subject:
    """Limits counted under one usage slot: a key's or a team's."""

    slot: str
    label: str
    rpm: int | None
    tpm: int | None
    budget_day_usd: float | None
    budget_month_usd: float | None


@dataclass(frozen=True)
class Reservation:
    slots: tuple[str, ...]
    periods: tuple[str, ...]
    tokens: int
    cost_usd: float


def router_allowed(record: KeyRecord, router: str, aliases: tuple[str, ...]) -> bool:
    """Whether a key's ``routers`` name this router (by name, ``router:NAME`` or an alias)."""
    if record.routers is None:
        return True
    return bool({router, f"router:{router}", *aliases} & set(record.routers))


def _rate_limited(who: str, kind: str, limit: int, used: int, left_s: float, asked: int | None = None
                  ) -> p.RequestError:
    unit = "RPM" if kind == "requests" else "TPM"
    this = f", this request ~{asked}" if asked is not None else ""
    error = p.RequestError(429, f"rate limit of {who} reached on {kind} per minute ({unit}): limit "
                           f"{limit}, used {used}{this}; retry after the minute", code="rate_limit_exceeded",
                           type_=kind)
    error.headers["retry-after"] = str(max(1, math.ceil(left_s)))
    return error


def _over_budget(who: str, label: str, budget: float, spent: float, estimate: float) -> p.RequestError:
    error = p.RequestError(429, f"{label} budget of {who} would be exceeded: budget ${budget:.6f}, spent "
                           f"${spent:.6f}, this request ~${estimate:.6f}", code="budget_exceeded",
                           type_="insufficient_quota", param=f"budget_{'day' if label == 'daily' else 'month'}_usd")
    error.headers["x-should-retry"] = "false"  # a budget does not come back within a client's retry loop
    return error


def _forbidden(key_id: str, what: str, allowed: tuple[str, ...], field: str) -> p.RequestError:
    return p.RequestError(403, f"key {key_id!r} may not use {what}; its {field}: {list(allowed)}",
                          param="model", code="model_not_allowed", type_="permission_error")
