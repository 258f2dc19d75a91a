"""Team controls on the request path: virtual keys' scopes, budgets and rate limits.

Every check reads memory only (``keys.KeyStore`` and ``usage.UsageCounters`` keep the database's state,
refreshed every ``auth.sync_ms`` by one background task), so a limited key costs the request a few dict
lookups. The order of checks, each answered with a ledger row (the key is valid):

1. admission (``admit``): requests and tokens of this UTC minute against ``rpm`` / ``tpm``: 429 with
   ``Retry-After`` (seconds to the next minute). An admitted request counts one request at once.
2. scope (``scope``): a backend outside the key's ``models`` or a router outside its ``routers`` is a 403;
   a routed request of a key with ``models`` routes among those models only.
3. budget (``reserve``): spend of this UTC day / month plus this request's estimated cost (its prompt at the
   first choice's input price, plus ``max_tokens`` at its output price when given) over the budget: 429
   naming the budget, with ``x-should-retry: false`` (the SDKs would otherwise retry). The estimate is
   reserved at once, so concurrent requests see each other, and replaced by the actual cost when the row
   is recorded (``observe``, from the ledger row's ``cost_usd`` and token counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from dataclasses import replace

from sqlalchemy.engine import Engine

from thalamus.gateway.config import AuthConfig, BackendConfig
from thalamus.gateway.tenancy.keys import KeyRecord, KeyStore, hash_secret
from thalamus.gateway.tenancy.roles import ADMIN, Principal, principal_of
from thalamus.gateway.tenancy.usage import Periods, UsageCounters
from thalamus.gateway.wire import protocol as p
from thalamus.ledger.row import LedgerRow

log = logging.getLogger("thalamus.gateway.tenancy.controls")


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
        self._reserved: dict[str, tuple[str, float]] = {}  # request id -> (key id, reserved USD)
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
            keys = await asyncio.to_thread(self.store.load_active)
        except Exception as exc:  # the database is away: keep enforcing on what this replica knows
            self.usage.give_back(taken)
            log.warning("key sync failed (limits hold per replica until it succeeds): %s", type(exc).__name__)
            return
        self.usage.apply(totals, now)
        self.install(keys)

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
        record = self.record(key_id)
        role, team = (record.role, record.team) if record is not None else self._static.get(key_id, ("key", None))
        if role != "team_admin" or team is None:
            return principal_of(key_id, role, team, frozenset())
        static = frozenset(k for k, (_, t) in self._static.items() if t == team)
        stored = await asyncio.to_thread(self.store.team_ids, team) if self.enabled else frozenset()
        return principal_of(key_id, role, team, static | stored)

    def record(self, key_id: str | None) -> KeyRecord | None:
        return self._by_id.get(key_id) if key_id is not None else None

    def created(self, record: KeyRecord, secret: str) -> None:
        """A key made on this replica works here at once (other replicas: after their next sync)."""
        self._by_hash = {**self._by_hash, hash_secret(secret): record}
        self._by_id = {**self._by_id, record.id: record}

    def revoked(self, key_id: str) -> None:
        self.install({h: r for h, r in self._by_hash.items() if r.id != key_id})

    # -- checks ---------------------------------------------------------------------------
    def admit(self, key_id: str | None) -> None:
        """Rate limits; counts the request when admitted."""
        record = self.record(key_id)
        if record is None:
            return
        periods = Periods.at(time.time())
        if record.rpm is not None or record.tpm is not None:
            used = self.usage.total(record.id, periods.minute)
            for limit, value, kind in ((record.rpm, used.requests, "requests"), (record.tpm, used.tokens, "tokens")):
                if limit is not None and value >= limit:
                    raise _rate_limited(record.id, kind, limit, value, periods.minute_left_s)
        self.usage.add(record.id, periods.names(), requests=1)

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

    def reserve(self, row: LedgerRow, prompt_tokens: int, max_tokens: int | None, config: BackendConfig) -> None:
        """429 when the estimated cost (the prompt at the first choice's input price, plus ``max_tokens`` at
        its output price when given) would take the key over a budget; else the estimate is reserved."""
        record = self.record(row.api_key_id)
        if record is None or (record.budget_day_usd is None and record.budget_month_usd is None):
            return
        estimate = config.cost(prompt_tokens, max_tokens or 0)
        periods = Periods.at(time.time())
        for budget, period, label in ((record.budget_day_usd, periods.day, "daily"),
                                      (record.budget_month_usd, periods.month, "monthly")):
            if budget is None:
                continue
            spent = self.usage.total(record.id, period).spend_usd
            if spent + estimate > budget:
                raise _over_budget(record.id, label, budget, spent, estimate)
        self.usage.add(record.id, (periods.day, periods.month), spend_usd=estimate)
        self._reserved[row.id] = (record.id, estimate)

    def observe(self, row: LedgerRow) -> None:
        """A recorded row: its tokens and cost join the key's counters (replacing what was reserved)."""
        key_id, reserved = self._reserved.pop(row.id, (row.api_key_id, 0.0))
        record = self.record(key_id)
        if record is None or not record.limited:
            return
        tokens = (row.prompt_tokens or 0) + (row.completion_tokens or 0)
        cost = row.cost_usd if row.cost_usd is not None and math.isfinite(row.cost_usd) else 0.0
        self.usage.add(record.id, Periods.at(row.created_at).names(), tokens=tokens, spend_usd=cost - reserved)


def router_allowed(record: KeyRecord, router: str, aliases: tuple[str, ...]) -> bool:
    """Whether a key's ``routers`` name this router (by name, ``router:NAME`` or an alias)."""
    if record.routers is None:
        return True
    return bool({router, f"router:{router}", *aliases} & set(record.routers))


def _rate_limited(key_id: str, kind: str, limit: int, used: int, left_s: float) -> p.RequestError:
    unit = "RPM" if kind == "requests" else "TPM"
    error = p.RequestError(429, f"rate limit of key {key_id!r} reached on {kind} per minute ({unit}): limit "
                           f"{limit}, used {used}; retry after the minute", code="rate_limit_exceeded", type_=kind)
    error.headers["retry-after"] = str(max(1, math.ceil(left_s)))
    return error


def _over_budget(key_id: str, label: str, budget: float, spent: float, estimate: float) -> p.RequestError:
    error = p.RequestError(429, f"{label} budget of key {key_id!r} would be exceeded: budget ${budget:.6f}, spent "
                           f"${spent:.6f}, this request ~${estimate:.6f}", code="budget_exceeded",
                           type_="insufficient_quota", param=f"budget_{'day' if label == 'daily' else 'month'}_usd")
    error.headers["x-should-retry"] = "false"  # a budget does not come back within a client's retry loop
    return error


def _forbidden(key_id: str, what: str, allowed: tuple[str, ...], field: str) -> p.RequestError:
    return p.RequestError(403, f"key {key_id!r} may not use {what}; its {field}: {list(allowed)}",
                          param="model", code="model_not_allowed", type_="permission_error")
