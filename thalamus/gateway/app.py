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
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from thalamus.config import Settings
from thalamus.errors import ConfigError
from thalamus.gateway.config import GatewayConfig
from thalamus.gateway.core.cache import ResponseCache
from thalamus.gateway.core.service import GatewayService
from thalamus.gateway.http.admin import install_admin
from thalamus.gateway.http.api import install
from thalamus.gateway.http.dashboard import install_dashboard
from thalamus.gateway.http.health import install_health
from thalamus.gateway.http.learning import install_learning_api
from thalamus.gateway.http.metrics import install_metrics
from thalamus.gateway.http.rollout import install_rollout
from thalamus.gateway.http.stats import install_stats
from thalamus.gateway.http.surface import install_surface
from thalamus.gateway.learning.adopt import adopt, plan_backends
from thalamus.gateway.learning.artifacts import LoadedRouter, load_artifact
from thalamus.gateway.learning.controller import Controllers
from thalamus.gateway.learning.feedback import FeedbackDesk
from thalamus.gateway.learning.judge import start_judge
from thalamus.gateway.learning.loop import LearningLoop
from thalamus.gateway.learning.pool_state import PoolTracker
from thalamus.gateway.learning.profile_store import ProfileSync
from thalamus.gateway.learning.sessions import SessionStore
from thalamus.gateway.stats.metrics import GatewayMetrics, busiest_keys, multiprocess_dir
from thalamus.gateway.stats.tracing import provider_from_env, tracer_for
from thalamus.gateway.tenancy.auth import KeyChecker
from thalamus.gateway.tenancy.controls import TeamControls
from thalamus.gateway.upstream.backends import make_backends
from thalamus.gateway.upstream.base import Backend
from thalamus.ledger import Ledger, LedgerWriter
from thalamus.ledger.prompt_hash import PromptHasher, load_key
from thalamus.ledger.url import check_ledger_url
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


@dataclass
class Startup:
    """What the start-up checks found: the loaded routers, and warnings that do not stop the gateway."""

    routers: dict[str, LoadedRouter]
    warnings: list[str]


def check_startup(config: GatewayConfig, settings: Settings | None = None) -> Startup:
    """Every check ``thalamus serve`` makes before it opens the ledger and takes traffic, and all that
    ``thalamus config check`` runs: one function, so the two cannot drift. The ledger URL's database and
    driver, each router artifact loads, and its models against the backends (ConfigError naming the key)."""
    check_ledger_url(ledger_url(config, settings))
    warnings: list[str] = []
    return Startup(load_routers(config, warnings), warnings)


def _load_router(name: str, artifact: Path) -> Router:
    if not Path(artifact).is_dir():
        raise ConfigError(f"routers.{name}.artifact: {artifact} is not a directory; train a router "
                          "(thalamus train) and save it there")
    try:
        return load_artifact(artifact)  # its online checkpoint when the gateway has written one
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"routers.{name}.artifact: {artifact} does not load ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); train the router again or point to a saved one") from None


def load_routers(config: GatewayConfig, warnings: list[str] | None = None) -> dict[str, LoadedRouter]:
    """Every configured router, with the backends it was not trained on added when it keeps profiles
    (learning/adopt.py); what does not stop the gateway goes to ``warnings`` (and the log)."""
    loaded: dict[str, LoadedRouter] = {}
    backends = [b.name for b in config.backends]
    for name, rc in config.routers.items():
        router = _load_router(name, rc.artifact)
        plan = plan_backends(name, rc, router, config)  # ConfigError naming the mismatch and the fix
        adopt(router, plan, config)
        for warning in plan.warnings:
            log.warning("%s", warning)
            if warnings is not None:
                warnings.append(warning)
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
                stack: AsyncExitStack, tracer_provider: TracerProvider | None = None,
                startup: Startup | None = None) -> None:
    """The object graph, built once, in dependency order; ``stack`` closes it in the reverse order."""
    routers = (startup or check_startup(config, settings)).routers
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
    if pool is not None:  # its poller runs from here: closed even when a later start fails
        stack.push_async_callback(pool.close)
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
    metrics = app.state.metrics = GatewayMetrics(writer, seed_keys=await asyncio.to_thread(busiest_keys, ledger))
    desk = app.state.feedback = FeedbackDesk(ledger, writer, learning, routers, metrics)
    # in multiprocess mode metric values live in the shared files, not in the app's registry
    judge = start_judge(config.judge, owned, desk, None if multiprocess_dir() else metrics.registry,
                        store_comments=config.ledger.store_prompts)
    if judge is not None:  # closed first: its workers still use the backends, the writer and the ledger
        stack.push_async_callback(judge.close)
    hasher = PromptHasher(load_key(config.ledger.hash_key_env, settings.cache_dir / "prompt_hash.key"))
    sessions = app.state.sessions = SessionStore(config.affinity, ledger.engine) if config.affinity.enabled else None
    if sessions is not None:  # conversation affinity (core/affinity.py); drained before the ledger closes
        sessions.start()
        stack.push_async_callback(sessions.close)
    app.state.ledger = ledger
    app.state.service = GatewayService(config, routers, owned, writer, hasher, controls,
                                       KeyChecker(config.auth, controls.lookup), learning,
                                       ResponseCache(config.cache), metrics=metrics, judge=judge,
                                       tracer=start_tracing(tracer_provider, stack), sessions=sessions)


def start_tracing(given: TracerProvider | None, stack: AsyncExitStack) -> Tracer | None:
    """The tracer of the app's spans: on ``given`` (tests: an in-memory exporter), else on a provider built
    from the ``OTEL_*`` variables (owned by the app: flushed and shut down with it), else on the global one
    when one is set; None (no spans) otherwise."""
    provider = given if given is not None else provider_from_env()
    if provider is not None and given is None:
        stack.callback(provider.shutdown)
    return tracer_for(provider)


def create_app(config: GatewayConfig, settings: Settings | None = None,
               backends: dict[str, Backend] | None = None, tracer_provider: TracerProvider | None = None,
               startup: Startup | None = None) -> FastAPI:
    """The gateway app. ``backends`` is the seam for callers that bring their own Backend objects;
    ``tracer_provider`` the one for traces (default: the ``OTEL_*`` variables, stats/tracing.py);
    ``startup`` is ``check_startup``'s result when the caller ran it already (``thalamus serve`` does, so a
    bad config is one line, not a lifespan traceback); the first start uses it, a restart checks again."""
    checked = [startup] if startup is not None else []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await build(app, config, settings or Settings(), backends, stack, tracer_provider,
                        checked.pop() if checked else None)
            yield

    docs = config.server.docs if config.server.docs is not None else not config.auth.enabled
    app = FastAPI(title="Thalamus gateway", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    install(app)
    install_admin(app)
    install_stats(app)
    install_dashboard(app)
    install_metrics(app)
    install_health(app)
    install_rollout(app)
    install_learning_api(app)
    install_surface(app, config.server)  # last: it copies the /v1 routes
    return app
