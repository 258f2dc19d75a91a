"""The gateway's FastAPI app: ``create_app(config)``; its lifespan owns routers, backends and ledger.

Nothing is created at import: loading a router artifact, opening the ledger and building
the backends happen when the app starts, and the ledger writer drains on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from thalamus.config import Settings
from thalamus.errors import ConfigError
from thalamus.gateway.admin_api import install_admin
from thalamus.gateway.api import install
from thalamus.gateway.backends import Backend, make_backends
from thalamus.gateway.config import GatewayConfig
from thalamus.gateway.controller import Controllers, install_controller_api
from thalamus.gateway.dashboard import install_dashboard
from thalamus.gateway.judge import install_judge_api, start_judge
from thalamus.gateway.ledger import Ledger, LedgerWriter
from thalamus.gateway.ledger_writer import default_journal_path
from thalamus.gateway.metrics import GatewayMetrics, install_metrics, multiprocess_dir
from thalamus.gateway.pool_state import PoolTracker
from thalamus.gateway.prompt_hash import PromptHasher, load_key
from thalamus.gateway.rollout_api import install_rollout
from thalamus.gateway.service import GatewayService, LoadedRouter
from thalamus.gateway.stats_api import install_stats
from thalamus.gateway.surface import install_surface

if TYPE_CHECKING:
    from thalamus.router.base import Router
    from thalamus.router.batching import BatchingEmbedder

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
    from thalamus.gateway.learning import load_artifact
    from thalamus.router.base import artifact_version

    loaded: dict[str, LoadedRouter] = {}
    backends = {b.name for b in config.backends}
    for name, rc in config.routers.items():
        if not Path(rc.artifact).is_dir():
            raise ConfigError(f"routers.{name}.artifact: {rc.artifact} is not a directory; train a router "
                              "and save it there")
        router = load_artifact(rc.artifact)  # its online checkpoint when the gateway has written one
        servable = tuple(m for m in router.models_ if m in backends)
        if not servable:
            raise ConfigError(f"routers.{name}: none of the router's models {router.models_} is a backend")
        for key in ("strong", "weak", "baseline"):
            pair_model = getattr(rc, key)
            if pair_model is not None and pair_model not in router.models_:
                raise ConfigError(f"routers.{name}.{key}: {pair_model!r} is not one of the router's models")
        missing = sorted(set(router.models_) - backends)
        if missing:
            log.warning("router %s: models without a backend are never chosen: %s", name, missing)
        loaded[name] = LoadedRouter(name, router, artifact_version(rc.artifact), rc, servable)
    return loaded


def start_batching(config: GatewayConfig, routers: list[Router]) -> list[BatchingEmbedder]:
    """Micro-batch the routers' embedders (server.embed_batch_ms; 0 disables). Routing threads then
    mostly wait on a shared batch, so the default executor gets enough of them to fill one."""
    from thalamus.router.batching import attach_batching

    if config.server.embed_batch_ms <= 0:
        return []
    batchers = attach_batching(routers, config.server.embed_batch_ms)
    if batchers:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64, thread_name_prefix="route"))
    return batchers


async def start_pool(config: GatewayConfig, service: GatewayService) -> PoolTracker | None:
    """Pool-aware routing (``pool_routing.enabled``): the tracker, polled once, then every interval."""
    if not config.pool_routing.enabled:
        return None
    pool = PoolTracker(config.pool_routing, config.backends)
    await pool.start()
    service.learning.pool = pool
    return pool


def create_app(config: GatewayConfig, settings: Settings | None = None,
               backends: dict[str, Backend] | None = None) -> FastAPI:
    """The gateway app. ``backends`` is the seam for callers that bring their own Backend objects."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        routers = load_routers(config)
        batchers = start_batching(config, [loaded.router for loaded in routers.values()])
        for loaded in routers.values():  # load embedders now, once, not under the first requests' race
            await asyncio.to_thread(loaded.router.route, "Thalamus warm-up.", loaded.default_knob())
        ledger, writer = open_ledger(config, settings)
        writer.start()
        app.state.ledger = ledger
        # readiness pings the ledger on threads of its own: routing threads stuck in a slow
        # embedding batch can fill the default executor, and /readyz must not queue behind them
        app.state.health_executor = ThreadPoolExecutor(2, thread_name_prefix="health")
        owned = backends or make_backends(config.backends)
        hasher = PromptHasher(load_key(config.ledger.hash_key_env, (settings or Settings()).cache_dir
                                       / "prompt_hash.key"))
        app.state.metrics = GatewayMetrics(writer)
        app.state.service = GatewayService(config, routers, owned, writer, hasher, metrics=app.state.metrics)
        # in multiprocess mode metric values live in the shared files, not in the app's registry
        judge = start_judge(app.state.service, ledger, None if multiprocess_dir() else app.state.metrics.registry)
        app.state.controllers = Controllers(routers)
        app.state.controllers.start(ledger)
        await app.state.service.controls.start()
        pool = app.state.pool = await start_pool(config, app.state.service)
        try:
            yield
        finally:
            if judge is not None:  # first: its workers still use the backends, the writer and the ledger
                await judge.close()
            if pool is not None:
                await pool.close()
            await app.state.service.controls.close()
            await app.state.controllers.stop()
            await asyncio.to_thread(app.state.service.learning.close, routers)
            for backend in owned.values():
                await backend.aclose()
            await writer.close()
            ledger.close()
            app.state.health_executor.shutdown(wait=False)
            for batcher in batchers:
                batcher.close()

    docs = config.server.docs if config.server.docs is not None else not config.auth.enabled
    app = FastAPI(title="Thalamus gateway", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    install(app)
    install_admin(app)
    install_stats(app)
    install_dashboard(app)
    install_metrics(app)
    install_rollout(app)
    install_controller_api(app)
    install_judge_api(app)
    install_surface(app, config.server)  # last: it copies the /v1 routes
    return app
