"""Online profile statistics of profile routers (cluster), shared by every replica through the ledger database.

Feedback on a request served by a profile router adds the score (and the request's USD cost, at the config's
prices) to the served model's profile, weighted by the prompt's group (router/profiles.py: ``obs_weight``,
``obs_sum``, ``cost_weight``, ``cost_sum`` per group, and the model's overall residual). A profile here is
the artifact's statistics plus what feedback added since the artifact was loaded; the additions live in the
``profile_stats`` table (ledger migration 13), one row per router (``name@version``: another artifact starts
afresh), model and group (group -1: the overall residual count
and sum). As with the key usage counters (tenancy/usage.py), the request path only touches memory: this
replica's additions are applied at once, and every ``profile_sync_ms`` they are written with atomic
increments (``ON CONFLICT DO UPDATE SET weight = weight + excluded.weight``) and the totals, other
replicas' additions included, are read back in the same transaction. A gateway loads the totals at start,
so a restart loses nothing synced; a failed sync keeps the additions for the next one, and a hot reload or
promotion keeps the replaced store's until the next sync has written them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.ledger.schema import profile_stats
from thalamus.router.posterior import ProfileRouter

log = logging.getLogger(__name__)
MAX_INTERVAL_S = 60.0  # the longest a replica's additions wait to reach the database
IDLE_INTERVAL_S = 1.0  # how soon a loop without profile routers sees one bound by a reload
OVERALL = -1  # the group index of a model's overall residual (count, sum of score - prior mean)

Slot = tuple[str, int]  # (model, group)
Stat = tuple[float, float, float, float]  # (weight, score total, cost weight, USD total)
ZERO: Stat = (0.0, 0.0, 0.0, 0.0)

_UPSERT = sa.text(
    "INSERT INTO profile_stats (router, model, grp, weight, total, cost_weight, cost_total, updated_at) "
    "VALUES (:router, :model, :grp, :weight, :total, :cost_weight, :cost_total, :updated_at) "
    "ON CONFLICT (router, model, grp) DO UPDATE SET weight = profile_stats.weight + excluded.weight, "
    "total = profile_stats.total + excluded.total, cost_weight = profile_stats.cost_weight + excluded.cost_weight, "
    "cost_total = profile_stats.cost_total + excluded.cost_total, updated_at = excluded.updated_at")


def _add(a: Stat, b: Stat) -> Stat:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]


class ProfileStore:
    """One profile router's statistics: the artifact's, the database's totals, this replica's unsynced additions."""

    def __init__(self, key: str, router: ProfileRouter) -> None:
        self.key, self.router = key, router
        self._base = {p.name: (p.obs_weight.copy(), p.obs_sum.copy(), p.cost_weight.copy(), p.cost_sum.copy(),
                               p.resid_n, p.resid_sum) for p in router.profiles()}
        self._synced: dict[Slot, Stat] = {}
        self._syncing: dict[Slot, Stat] = {}
        self._pending: defaultdict[Slot, Stat] = defaultdict(lambda: ZERO)
        self._lock = threading.Lock()
        self.observed = 0

    def observe(self, model: str, probs: np.ndarray, score: float, cost: float | None = None) -> None:
        """One graded answer of ``model`` on a prompt with group weights ``probs`` and its USD cost (None:
        unknown), applied at once."""
        prior_mean = self.router.profile(model).prior_mean
        costed = cost is not None and bool(np.isfinite(cost))
        usd = float(cost) if cost is not None and costed else 0.0
        with self._lock:
            for k in np.flatnonzero(probs > 0):
                w = float(probs[k])
                add = (w, w * score, w if costed else 0.0, w * usd)
                self._pending[(model, int(k))] = _add(self._pending[(model, int(k))], add)
            resid = float(score - probs @ prior_mean)
            self._pending[(model, OVERALL)] = _add(self._pending[(model, OVERALL)], (1.0, resid, 0.0, usd))
            self.observed += 1
            self._apply([model])

    def _total(self, slot: Slot) -> Stat:
        return _add(_add(self._synced.get(slot, ZERO), self._syncing.get(slot, ZERO)), self._pending.get(slot, ZERO))

    def _apply(self, models: list[str]) -> None:
        """Set each model's profile to base + totals and re-read it into the routing tables (lock held)."""
        for model in models:
            if model not in self._base:
                continue  # a model the artifact no longer has
            weight, total, cost_weight, cost_sum, n, resid = self._base[model]
            added = np.array([self._total((model, k)) for k in range(len(weight))]).reshape(len(weight), 4)
            extra_n, extra_resid, _, _ = self._total((model, OVERALL))
            profile = self.router.profile(model)
            profile.obs_weight, profile.obs_sum = weight + added[:, 0], total + added[:, 1]
            profile.cost_weight, profile.cost_sum = cost_weight + added[:, 2], cost_sum + added[:, 3]
            profile.resid_n, profile.resid_sum = n + extra_n, resid + extra_resid
            self.router.refresh(model)

    def take(self) -> dict[Slot, Stat]:
        with self._lock:
            taken, self._pending = dict(self._pending), defaultdict(lambda: ZERO)
            self._syncing = taken
            return taken

    def give_back(self, taken: dict[Slot, Stat]) -> None:
        with self._lock:
            self._syncing = {}
            for slot, stat in taken.items():
                self._pending[slot] = _add(self._pending[slot], stat)

    def sync(self, engine: Engine, taken: dict[Slot, Stat]) -> dict[Slot, Stat]:
        """Write ``taken`` and read this router's totals (one transaction; a worker thread)."""
        now = time.time()
        rows = [{"router": self.key, "model": m, "grp": g, "weight": w, "total": t, "cost_weight": cw,
                 "cost_total": ct, "updated_at": now} for (m, g), (w, t, cw, ct) in taken.items()]
        with engine.begin() as conn:
            if rows:
                conn.execute(_UPSERT, rows)
            found = conn.execute(sa.select(profile_stats).where(profile_stats.c.router == self.key)).all()
        return {(r.model, int(r.grp)): (float(r.weight), float(r.total), float(r.cost_weight), float(r.cost_total))
                for r in found}

    def carry(self, old: ProfileStore) -> None:
        """Start from ``old``'s totals (the same artifact version, loaded again): what it synced, is syncing and
        has pending. Its pending additions are written by the retired store's sync, and read back by this one."""
        with old._lock:
            totals = {slot: old._total(slot) for slot in {*old._synced, *old._syncing, *old._pending}}
            observed = old.observed
        with self._lock:
            self._synced, self.observed = totals, observed
            self._apply(list(self._base))

    def set_synced(self, totals: dict[Slot, Stat]) -> None:
        """The database's totals, which now hold what the sync took."""
        with self._lock:
            self._synced, self._syncing = totals, {}
            self._apply(list(self._base))


class ProfileSync:
    """Every profile router's store and the loop that syncs them with the database."""

    def __init__(self, engine: Engine, routers: dict[str, LoadedRouter]) -> None:
        self.engine = engine
        self.stores: dict[str, ProfileStore] = {}
        self.retired: list[ProfileStore] = []  # replaced stores whose additions the next sync still writes
        self._retired_lock = threading.Lock()
        self.interval_s = float("inf")
        for loaded in routers.values():
            self.rebind(loaded)
        self._task: asyncio.Task[None] | None = None

    def rebind(self, loaded: LoadedRouter) -> None:
        """A store for ``loaded``'s current artifact (at start, and after a hot reload or promotion). The store it
        replaces is retired: the next sync writes its unsynced additions. The same version again (a reload of
        the same artifact) starts from the old store's totals."""
        router, key = loaded.router, f"{loaded.name}@{loaded.version}"
        old = self.stores.get(loaded.name)
        if not loaded.config.learn_online or not isinstance(router, ProfileRouter):
            self.stores.pop(loaded.name, None)
        elif old is not None and old.router is router and old.key == key:
            return  # already bound
        else:
            store = ProfileStore(key, router)
            if old is not None and old.key == key:
                store.carry(old)
            self.stores[loaded.name] = store
            self.interval_s = min([self.interval_s, loaded.config.profile_sync_ms / 1000])
        if old is not None:
            with self._retired_lock:
                self.retired.append(old)

    def sync_once(self) -> None:
        """Write every store's additions and read the totals back (a worker thread). Retired stores first, so
        a current store of the same version reads back what they wrote."""
        with self._retired_lock:
            retired, self.retired = self.retired, []
        for store in retired:
            taken = store.take()
            if not taken:
                continue
            try:
                store.sync(self.engine, taken)
            except Exception:
                store.give_back(taken)
                with self._retired_lock:
                    self.retired.append(store)
                log.exception("profile statistics of %s (replaced): sync failed; the additions are kept", store.key)
        for store in list(self.stores.values()):
            taken = store.take()
            try:
                totals = store.sync(self.engine, taken)
            except Exception:
                store.give_back(taken)
                log.exception("profile statistics of %s: sync failed; the additions are kept", store.key)
                continue
            store.set_synced(totals)

    async def start(self) -> None:
        """Load the totals (a restart continues where the replicas are), then sync every interval. The loop
        runs without profile routers too: a hot reload or promotion may bind one later."""
        self.interval_s = min(self.interval_s, MAX_INTERVAL_S)
        await asyncio.to_thread(self.sync_once)
        self._task = asyncio.create_task(self._run(), name="thalamus-profile-sync")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s if self.stores else IDLE_INTERVAL_S)
            if self.stores or self.retired:
                await asyncio.to_thread(self.sync_once)

    async def close(self) -> None:
        """Stop the loop and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.stores or self.retired:
            await asyncio.to_thread(self.sync_once)
