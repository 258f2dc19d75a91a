"""The gateway's side of the learning loop: exploration, what a row records for learning, online updates.

- ``route``: the router's decision (under the router's lock, so an online update never runs while a
  decision reads the same arrays), then exploration when the router config sets ``explore`` (``thompson``:
  a draw from a profile router's posterior, router/posterior.py).
- ``record``: the row gets the chosen model's propensity and the full candidate set, each candidate with
  its predicted quality, expected cost and probability ``p`` (deterministic decisions: 1 on the choice);
  with ``ledger.store_embeddings`` also the routing embedding (float16, base64) and the embedder id.
- ``feedback``: the first feedback of a request served by a profile router (cluster) adds the score to the
  answering model's profile (profile_store.py: shared by the replicas through the ledger); served by a
  router with ``partial_fit`` (linucb, thompson) it updates that router in this process with (context,
  answering model, score, cost). The
  context comes from a bounded in-process map of recent decisions, else from the row's stored embedding.
  The state is checkpointed to ``<artifact>/online/`` every ``checkpoint_every`` updates and at shutdown;
  ``load_artifact`` prefers that checkpoint, so a restarted gateway continues where it stopped.
  Scores of the LLM judge (source ``judge:<backend>``, gateway/learning/judge.py) are learned from like client
  scores unless ``judge.learn`` is false; then they are neither learned nor counted as the "first".
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np
import sqlalchemy as sa

from thalamus.gateway.config import GatewayConfig, RouterConfig
from thalamus.gateway.config.judge import is_judge_source
from thalamus.gateway.learning.artifacts import LoadedRouter, checkpoint
from thalamus.gateway.learning.pool_aware import adjust as pool_adjust
from thalamus.gateway.learning.pool_state import PoolTracker
from thalamus.gateway.learning.profile_store import ProfileSync
from thalamus.gateway.learning.rollout import Rollout, mixed, restrict_knob, shadowed
from thalamus.gateway.stats.sql import judged
from thalamus.ledger import Ledger
from thalamus.ledger.embedding import decode_embedding, encode_embedding
from thalamus.ledger.row import LedgerRow
from thalamus.ledger.schema import feedback, requests
from thalamus.router.base import OnlineRouter, Router
from thalamus.router.explore import Explorer, deterministic_probabilities
from thalamus.router.policy import Decision, Knob
from thalamus.router.posterior import PosteriorSampler

log = logging.getLogger(__name__)
MAX_PENDING = 50_000  # recent decisions whose context is kept for feedback (float32 embeddings: ~77 MB at 384-d)


class LearningLoop:
    """Per-gateway learning state; built by the service from the config and its loaded routers."""

    def __init__(self, config: GatewayConfig, pool: PoolTracker | None = None, max_pending: int = MAX_PENDING,
                 profiles: ProfileSync | None = None) -> None:
        self.config = config
        self.explorers: dict[str, Explorer | PosteriorSampler] = {
            name: PosteriorSampler(rc.explore.value, rc.explore.seed) if rc.explore.kind == "thompson"
            else Explorer(rc.explore.kind, rc.explore.value, rc.explore.seed)
            for name, rc in config.routers.items() if rc.explore is not None}
        self.profiles = profiles  # profile routers' online statistics, shared through the ledger
        self.locks: dict[str, threading.Lock] = {name: threading.Lock() for name in config.routers}
        self.pending: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self.max_pending = max_pending
        self.updates: dict[str, int] = dict.fromkeys(config.routers, 0)
        self._pending_lock = threading.Lock()
        self.rollout = Rollout(config)
        self.backend_names = tuple(b.name for b in config.backends)
        self.learn_from_judge = config.judge.learn if config.judge is not None else True
        self.pool = pool  # pool-aware routing (learning/pool_aware.py)

    # -- deciding -----------------------------------------------------------------------
    def inline(self, loaded: LoadedRouter) -> bool:
        """True when the decision may run on the event loop: every router it reads embeds with a ``fast``
        embedder (a lookup table, well under a millisecond) and none learns online (a feedback update
        holds the router's lock, a checkpoint's disk write included). A worker-thread hop costs more
        than such a decision at concurrency 1; slow embedders keep the thread (and micro-batching)."""
        if self._learns(loaded.name, loaded.router) or not fast_router(loaded.router):
            return False
        candidate = self.rollout.candidates.get(loaded.name)
        return candidate is None or fast_router(candidate.router)

    def route(self, loaded: LoadedRouter, text: str, knob: Knob) -> Decision:
        decision = self._route(loaded, text, knob)
        if self.pool is not None:  # the chosen model is about to be loaded, if it was not resident
            self.pool.chosen(decision.model)
        return decision

    def _route(self, loaded: LoadedRouter, text: str, knob: Knob) -> Decision:
        router = loaded.router  # one read: a concurrent swap gives this decision the old or the new artifact
        if self._learns(loaded.name, router):  # its arrays change under partial_fit: read them under the lock
            with self.locks[loaded.name]:
                decision = router.route(text, knob)
        else:  # read-only routers decide in parallel (the embedder releases the GIL)
            decision = router.route(text, knob)
        decision = self._explore(loaded.name, self._pooled(decision), router)
        candidate = self.rollout.candidates.get(loaded.name)
        if candidate is None:
            return decision
        wide = knob if knob.allowed is not None else replace(knob, allowed=self.backend_names)
        other = self._pooled(candidate.router.route(text, restrict_knob(wide, candidate.router.models_)))
        if candidate.mode == "shadow":
            return shadowed(decision, other, candidate)
        return mixed(decision, self._explore(loaded.name, other, candidate.router), candidate,
                     self.rollout.draw(candidate.share))

    def _pooled(self, decision: Decision) -> Decision:
        """Switching costs applied before exploration, so propensities describe what was drawn from."""
        return pool_adjust(self.pool, decision) if self.pool is not None else decision

    def _explore(self, name: str, decision: Decision, router: Router) -> Decision:
        explorer = self.explorers.get(name)
        if isinstance(explorer, PosteriorSampler):
            return explorer.explore(decision, router)
        return explorer.explore(decision) if explorer is not None else decision

    def swap(self, loaded: LoadedRouter, router: Router, version: str, backends: set[str]) -> None:
        """Serve ``router`` from now on (hot reload, promotion); decisions in flight keep the old one. ``router``
        comes from rollout.load_checked, which checked it and had it take on new backends as at start-up."""
        with self.locks[loaded.name]:
            loaded.router, loaded.version = router, version
            loaded.servable = tuple(m for m in router.models_ if m in backends)
            self.updates[loaded.name] = 0
            if self.profiles is not None:
                self.profiles.rebind(loaded)
        with self._pending_lock:  # contexts of the old artifact cannot update the new one
            for key in [k for k, (name, _) in self.pending.items() if name == loaded.name]:
                del self.pending[key]

    def record(self, row: LedgerRow, loaded: LoadedRouter, decision: Decision) -> None:
        """Propensities and candidate set on the row; context kept for a later feedback."""
        p = deterministic_probabilities(decision)
        row.probability = float(decision.probability)
        log = decision.log
        row.artifact_version = log.get("artifact_version", row.artifact_version)
        row.rollout, row.shadow_model, row.shadow_version = (log.get(k) for k in (
            "rollout", "shadow_model", "shadow_version"))
        row.switch_cost = log.get("switch_cost")
        row.candidates = {m: {"quality": float(q), "cost": float(c), "p": float(pi)} for m, q, c, pi in zip(
            decision.models, decision.predicted_quality, decision.expected_cost, p, strict=True)}
        features = decision.features
        if features is None:
            return
        if self.config.ledger.store_embeddings:
            row.embedding = encode_embedding(features)
            row.embedder_id = getattr(loaded.router, "embedder_id_", None)
        learns = self._learns(loaded.name, loaded.router) or self._profiled(loaded.name)
        if learns and log.get("rollout") != "canary":
            with self._pending_lock:
                self.pending[row.id] = (loaded.name, np.asarray(features, dtype=np.float32))
                while len(self.pending) > self.max_pending:
                    self.pending.popitem(last=False)

    def _profiled(self, name: str) -> bool:
        """True when the router keeps profiles that feedback updates (profile_store.py)."""
        return self.profiles is not None and name in self.profiles.stores

    def _learns(self, name: str, router: Router) -> bool:
        rc: RouterConfig | None = self.config.routers.get(name)
        return rc is not None and rc.learn_online and isinstance(router, OnlineRouter)

    # -- learning from feedback ---------------------------------------------------------
    def feedback(self, ledger: Ledger, routers: dict[str, LoadedRouter], request_id: str, score: float,
                 source: str | None = None) -> bool:
        """Update the router that served ``request_id`` with ``score`` (first learnable feedback only); True
        if it did. Synchronous (database read, a rank-one update): the API runs it in a worker thread."""
        if not self.learn_from_judge and is_judge_source(source):
            return False  # stored for evaluation, not learned: the context stays for a client's score
        with self._pending_lock:
            kept = self.pending.pop(request_id, None)
        row = _served_row(ledger, request_id, with_judge=self.learn_from_judge)
        if row is None or row["router"] not in routers or row["n_feedback"] > 1:  # learn from the first only
            return False
        loaded = routers[row["router"]]
        features = kept[1] if kept is not None else self._stored_context(loaded.router, row)
        router = loaded.router
        if features is None or row["chosen_model"] not in router.models_ or row["status"] != 200:
            return False
        store = self.profiles.stores.get(loaded.name) if self.profiles is not None else None
        if store is not None and store.key == f"{loaded.name}@{loaded.version}":  # a profile router
            soft = store.router.group_probabilities(np.asarray(features, dtype=np.float64)[None, :])[0]
            hard = np.eye(len(soft))[int(np.argmax(soft))]  # as trained profiles are: means over hard groups
            store.observe(row["chosen_model"], hard, float(score),
                          float(row["cost_usd"]) if row["cost_usd"] is not None else None)
            return True
        if not self._learns(loaded.name, router) or not isinstance(router, OnlineRouter):
            return False
        cost = float(row["cost_usd"]) if row["cost_usd"] is not None else 0.0
        with self.locks[loaded.name]:
            router.partial_fit([(np.asarray(features, dtype=np.float64), row["chosen_model"], float(score), cost)])
            self.updates[loaded.name] += 1
            due = self.updates[loaded.name] % loaded.config.checkpoint_every == 0
            if due:
                checkpoint(router, loaded.config.artifact)
        return True

    def _stored_context(self, router: Router, row: dict[str, Any]) -> np.ndarray | None:
        """The row's stored embedding, when it was made by the router's own embedder (e.g. after a restart)."""
        if row.get("embedding") and row.get("embedder_id") == getattr(router, "embedder_id_", None):
            return decode_embedding(row["embedding"])
        return None

    def close(self, routers: dict[str, LoadedRouter]) -> None:
        """Checkpoint every router that learned since its last checkpoint."""
        for name, loaded in routers.items():
            count = self.updates.get(name, 0)
            if count and count % loaded.config.checkpoint_every:
                with self.locks[name]:
                    checkpoint(loaded.router, loaded.config.artifact)


def fast_router(router: Router) -> bool:
    """A router whose decision is one fast embedding (``fast = True`` on the embedder) and arithmetic."""
    return router.uses_embeddings and bool(getattr(router.embedder_in_use(), "fast", False))


def _served_row(ledger: Ledger, request_id: str, with_judge: bool = True) -> dict[str, Any] | None:
    """The request's routing columns and how many learnable feedback rows it has (this one included)."""
    cols = [requests.c[k] for k in ("router", "chosen_model", "status", "cost_usd", "embedding", "embedder_id")]
    counted = feedback.c.request_id == request_id
    if not with_judge:  # judge rows do not take a request's one update away from a later client score
        counted = counted & sa.or_(feedback.c.source.is_(None), sa.not_(judged()))
    n_feedback = sa.select(sa.func.count()).where(counted).scalar_subquery()
    with ledger.engine.connect() as conn:
        hit = conn.execute(sa.select(*cols, n_feedback.label("n_feedback"))
                           .where(requests.c.id == request_id)).mappings().first()
    return dict(hit) if hit is not None else None
