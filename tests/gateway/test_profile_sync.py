"""The profile statistics' sync loop, in process: a database away keeps the additions (applied to routing at
once) and writes them exactly once when it is back; a profile router bound after start (hot reload,
promotion) is synced although none was there when the gateway started."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.config import RouterConfig
from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.profile_store import OVERALL, ProfileStore, ProfileSync
from thalamus.ledger.schema import migrate
from thalamus.router.cluster import ClusterRouter


def cluster(dataset: RoutingDataset) -> ClusterRouter:
    return ClusterRouter(groups="kmeans", n_clusters=2, embedder="hashing").fit(dataset)


def stored(engine: sa.Engine) -> dict[tuple[str, int], float]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT model, grp, weight FROM profile_stats")).all()
    return {(r.model, int(r.grp)): float(r.weight) for r in rows}


def stored_by_key(engine: sa.Engine) -> dict[tuple[str, str, int], float]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT router, model, grp, weight FROM profile_stats")).all()
    return {(r.router, r.model, int(r.grp)): float(r.weight) for r in rows}


def test_a_failed_sync_keeps_the_additions_and_the_next_writes_them_once(dataset: RoutingDataset,
                                                                         tmp_path: Path) -> None:
    router = cluster(dataset)
    model = router.models_[0]
    before = float(router.profile(model).obs_weight.sum())
    away = sa.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'ledger.db'}")  # cannot be opened
    sync = ProfileSync(away, {})
    sync.stores["best"] = store = ProfileStore("best@v1", router)
    probs = np.zeros(len(router.profile(model).obs_weight))
    probs[0] = 1.0
    for _ in range(3):
        store.observe(model, probs, score=1.0, cost=0.002)
    sync.sync_once()  # the database is away: logged, nothing lost
    assert float(router.profile(model).obs_weight.sum()) == before + 3  # routing saw the feedback at once
    store.observe(model, probs, score=0.0)

    back = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(back)
    sync.engine = back
    sync.sync_once()
    sync.sync_once()  # nothing new: the totals stay
    assert stored(back) == {(model, 0): 4.0, (model, OVERALL): 4.0}
    assert float(router.profile(model).obs_weight.sum()) == before + 4  # counted once, not base + synced + kept


def test_a_profile_router_bound_after_start_is_synced(dataset: RoutingDataset, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(engine)
    router = cluster(dataset)
    model = router.models_[0]

    async def main() -> None:
        sync = ProfileSync(engine, {})
        await sync.start()  # no profile router yet
        loaded = LoadedRouter("best", router, "v2", RouterConfig(artifact=str(tmp_path), profile_sync_ms=20),
                              tuple(router.models_))
        sync.rebind(loaded)  # what a hot reload does
        probs = np.zeros(len(router.profile(model).obs_weight))
        probs[1] = 1.0
        sync.stores["best"].observe(model, probs, score=0.5)
        deadline = time.monotonic() + 10
        while not stored(engine) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert stored(engine) == {(model, 1): 1.0, (model, OVERALL): 1.0}  # by the loop, not by close
        await sync.close()

    asyncio.run(main())


def test_additions_not_yet_synced_survive_a_rebind_and_are_written_once(dataset: RoutingDataset,
                                                                       tmp_path: Path) -> None:
    """A hot reload or promotion before the sync: the replaced store's additions are written by the next sync,
    once; a reload of the same version starts from the old store's totals (routing keeps the feedback)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(engine)
    router = cluster(dataset)
    model = router.models_[0]
    same, other, again = (copy.deepcopy(router) for _ in range(3))  # the artifact loaded again (no feedback)
    before = float(router.profile(model).obs_weight.sum())
    rc = RouterConfig(artifact=str(tmp_path), profile_sync_ms=20)
    sync = ProfileSync(engine, {"best": LoadedRouter("best", router, "v1", rc, tuple(router.models_))})
    probs = np.zeros(len(router.profile(model).obs_weight))
    probs[0] = 1.0
    for _ in range(3):
        sync.stores["best"].observe(model, probs, score=1.0)
    sync.rebind(LoadedRouter("best", same, "v1", rc, tuple(same.models_)))  # the same version, reloaded
    assert float(same.profile(model).obs_weight.sum()) == before + 3  # routing keeps the feedback at once
    sync.stores["best"].observe(model, probs, score=0.0)
    sync.rebind(LoadedRouter("best", other, "v2", rc, tuple(other.models_)))  # another version (promotion)
    sync.sync_once()
    sync.sync_once()  # nothing new: nothing written twice
    assert stored_by_key(engine) == {("best@v1", model, 0): 4.0, ("best@v1", model, OVERALL): 4.0}
    assert not sync.retired and float(other.profile(model).obs_weight.sum()) == before  # v2 starts afresh
    sync.rebind(LoadedRouter("best", again, "v1", rc, tuple(again.models_)))  # back to v1
    sync.sync_once()
    assert float(sync.stores["best"].router.profile(model).obs_weight.sum()) == before + 4  # once, not twice
