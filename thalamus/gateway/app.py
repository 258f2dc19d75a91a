"""The gateway's FastAPI app: ``create_app(config)``; its lifespan owns routers, backends and ledger.

Nothing is created at import: loading a router artifact, opening the ledger and building
the backends happen when the app starts, and the ledger writer drains on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from thalamus.config import Settings
from thalamus.gateway.config import GatewayConfig
from thalamus.gateway.core.cache import ResponseCache
from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.http.admin import install_admin
from thalamus.gateway.http.api import install
from thalamus.gateway.http.dashboard import install_dashboard
from thalamus.gateway.http.learning import install_learning_api
from thalamus.gateway.http.metrics import install_metrics
from thalamus.gateway.http.rollout import install_rollout
from thalamus.gateway.http.stats import install_stats
from thalamus.gateway.http.surface import install_surface
from thalamus.gateway.learning.adopt import adopt, load_router, plan_backends
from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.controller import Controllers
from thalamus.gateway.learning.feedback import FeedbackDesk
from thalamus.gateway.learning.judge import start_judge
from thalamus.gateway.learning.loop import LearningLoop
from thalamus.gateway.learning.pool_state import PoolTracker
from thalamus.gateway.learning.profile_store import ProfileSync
from thalamus.gateway.stats.metrics import GatewayMetrics, multiprocess_dir
from thalamus.gateway.tenancy.auth import KeyChecker
from thalamus.gateway.tenancy.controls import TeamControls
from thalamus.gateway.upstream.backends import make_backends
from thalamus.gateway.upstream.base import Backend
from thalamus.ledger import Ledger, LedgerWriter
from thalamus.ledger.prompt_hash import PromptHasher, load_key
from thalamus.ledger.writer import default_journal_path
from thalamus.router.base import Router, artifact_version
from thalamus.router.batching import BatchingEmbedder, attach_batching

log = logging.getLogger("thalamus.gateway")


def ledger_url(config: GatewayConfig, settings: Settings | None = None) -> str:
    """The configured ledger URL, or a SQLite file under the cache dir."""
    if config.ledger.url:
        return config.ledger.url
    return f"sqlite:///{(settings or Settings()).cache_dir / 'ledger.sqlite'}"


def open_ledger(config: GatewayConfig, settings: Settings | None = None) -> tuple[Ledger, LedgerWriter]:
    """The ledger (migrated) and its writer, as ``config.ledger`` describes them."""
    lc = config.ledger
    url = ledger_url(config, settings)
    ledger = Ledger(url, busy_timeout_ms=lc.busy_timeout_ms)
    journal = lc.journal_path or default_journal_path(url, (settings or Settings()).cache_dir)
    return ledger, LedgerWriter(ledger, lc.flush_ms, lc.batch_rows, journal_path=journal, durability=lc.durability)


def load_routers(config: GatewayConfig) -> dict[str, LoadedRouter]:
    """Every configured router, with the backends it was not trained on added when it keeps profiles
    (learning/adopt.py: the same check as ``thalamus config check``)."""
    loaded: dict[str, LoadedRouter] = {}
    backends = {b.name for b in config.backends}
    for name, rc in config.routers.items():
        router = load_router(name, rc)
        plan = plan_backends(name, rc, router, config)
        adopt(router, plan, config)
        for warning in plan.warnings:
            log.warning("%s", warning)
        servable = tuple(m for m in router.models_ if m in backends)
        loaded[name] = LoadedRouter(name, router, artifact_version(rc.artifact), rc, servable)
    return loaded


def start_batching(config: GatewayConfig, routers: list[Router]) -> list[BatchingEmbedder]:
    """Micro-batch the routers' embedders (server.embed_batch_ms; 0 disables). Routing threads then
    mostly wait on a shared batch, so the default executor gets enough of them to fill one."""
    if config.server.embed_batch_ms <= 0:
        return []
    batchers = attach_batching(routers, config.server.embed_batch_ms)
    if batchers:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64, thread_name_prefix="route"))
    return batchers


async def start_pool(config: GatewayConfig) -> PoolTracker | None:
    """Pool-aware routing (``pool_routing.enabled``): the tracker, polled once, then every interval."""
    if not config.pool_routing.enabled:
        return None
    pool = PoolTracker(config.pool_routing, config.backends)
    await pool.start()
    return pool


async def build(app: FastAPI, config: GatewayConfig, settings: Settings, backends: dict[str, Backend] | None,
                stack: AsyncExitStack) -> None:
    """The object graph, built once, in dependency order; ``stack`` closes it in the reverse order."""
    routers = load_routers(config)
    for batcher in start_batching(config, [loaded.router for loaded in routers.values()]):
        stack.callback(batcher.close)
    for loaded in routers.values():  # load embedders now, once, not under the first requests' race
        await asyncio.to_thread(loaded.router.route, "Thalamus warm-up.", loaded.default_knob())
    ledger, writer = open_ledger(config, settings)
    stack.callback(ledger.close)
    writer.start()
    stack.push_async_callback(writer.close)
    # readiness pings the ledger on threads of its own: routing threads stuck in a slow
    # embedding batch can fill the default executor, and /readyz must not queue behind them
    app.state.health_executor = ThreadPoolExecutor(2, thread_name_prefix="health")
    stack.callback(app.state.health_executor.shutdown, wait=False)
    owned = backends or make_backends(config.backends)
    for backend in owned.values():
        stack.push_async_callback(backend.aclose)
    pool = app.state.pool = await start_pool(config)
    profiles = ProfileSync(ledger.engine, routers)  # profile routers' online statistics, shared by replicas
    await profiles.start()
    stack.push_async_callback(profiles.close)
    learning = LearningLoop(config, pool=pool, profiles=profiles)
    stack.push_async_callback(asyncio.to_thread, learning.close, routers)
    controllers = app.state.controllers = Controllers(routers)
    controllers.start(ledger)
    stack.push_async_callback(controllers.stop)
    controls = TeamControls(config.auth, ledger.engine)  # virtual keys, budgets, rate limits
    await controls.start()
    stack.push_async_callback(controls.close)
    if pool is not None:
        stack.push_async_callback(pool.close)
    metrics = app.state.metrics = GatewayMetrics(writer)
    desk = app.state.feedback = FeedbackDesk(ledger, writer, learning, routers)
    # in multiprocess mode metric values live in the shared files, not in the app's registry
    judge = start_judge(config.judge, owned, desk, None if multiprocess_dir() else metrics.registry,
                        store_comments=config.ledger.store_prompts)
    if judge is not None:  # closed first: its workers still use the backends, the writer and the ledger
        stack.push_async_callback(judge.close)
    hasher = PromptHasher(load_key(config.ledger.hash_key_env, settings.cache_dir / "prompt_hash.key"))
    app.state.ledger = ledger
    app.state.service = GatewayService(config, routers, owned, writer, hasher, controls,
                                       KeyChecker(config.auth, controls.lookup), learning,
                                       ResponseCache(config.cache), metrics=metrics, judge=judge)


def create_app(config: GatewayConfig, settings: Settings | None = None,
               backends: dict[str, Backend] | None = None) -> FastAPI:
    """The gateway app. ``backends`` is the seam for callers that bring their own Backend objects."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await build(app, config, settings or Settings(), backends, stack)
            yield

    docs = config.server.docs if config.server.docs is not None else not config.auth.enabled
    app = FastAPI(title="Thalamus gateway", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    install(app)
    install_admin(app)
    install_stats(app)
    install_dashboard(app)
    install_metrics(app)
    install_rollout(app)
    install_learning_api(app)
    install_surface(app, config.server)  # last: it copies the /v1 routes
    return app
