"""The one request pipeline of the gateway; every endpoint is an adapter on it (``core/endpoints.py``).

1. (the HTTP layer caps the body size) the key is checked once; an admitted request gets exactly one row
2. admission: rate limits (``tenancy/controls.py``)
3. parse once: the endpoint's adapter turns the body into a frozen ``RequestView`` (``core/request.py``); the
   guard stage (``core/guard.py``) may block it, redact it or restrict the models
4. plan: resolve the ``model`` field, check the key's scope, route (``core/routing.py``), keep a conversation
   on its model (``core/affinity.py``); reserve budget
5. the response cache (chat, non-stream), else the attempts: retries, then fallbacks in the router's score
   order (``core/attempts.py``); a stream falls back only before its first byte
6. account with the one price rule (``BackendConfig.cost``), and the relay's end-of-request rules for
   streams (``core/relay.py``)
7. finish: the row is annotated, observed (metrics, key usage, the request's trace span and its JSON
   access-log line), handed to the writer (with ``ledger.durability: journal``, on disk before the
   response's last byte) and offered to the judge
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from opentelemetry.trace import Tracer

from thalamus.gateway.config import BackendConfig, GatewayConfig
from thalamus.gateway.core.affinity import Affinity
from thalamus.gateway.core.attempts import Attempts
from thalamus.gateway.core.cache import ResponseCache, answer_cached
from thalamus.gateway.core.call import Call, Result
from thalamus.gateway.core.counterfactual import annotate
from thalamus.gateway.core.endpoints import Endpoint
from thalamus.gateway.core.guard import GuardStage
from thalamus.gateway.core.relay import relay
from thalamus.gateway.core.request import RequestView
from thalamus.gateway.core.routing import Planner
from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.judge import Judge
from thalamus.gateway.learning.loop import LearningLoop
from thalamus.gateway.learning.sessions import SessionStore
from thalamus.gateway.stats.access_log import log_access
from thalamus.gateway.stats.metrics import GatewayMetrics
from thalamus.gateway.stats.tracing import RequestTrace
from thalamus.gateway.tenancy.auth import KeyChecker
from thalamus.gateway.tenancy.controls import TeamControls
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.wire import protocol as p
from thalamus.ledger import LedgerRow, LedgerWriter
from thalamus.ledger.prompt_hash import PromptHasher


class GatewayService:
    """The pipeline; the app's composition root builds every part and hands it in."""

    def __init__(self, config: GatewayConfig, routers: dict[str, LoadedRouter], backends: dict[str, Backend],
                 writer: LedgerWriter, hasher: PromptHasher, controls: TeamControls, keys: KeyChecker,
                 learning: LearningLoop, cache: ResponseCache, metrics: GatewayMetrics | None = None,
                 judge: Judge | None = None, tracer: Tracer | None = None,
                 sessions: SessionStore | None = None) -> None:
        self.config, self.routers, self.backends, self.writer = config, routers, backends, writer
        self.hasher, self.controls, self.keys, self.learning = hasher, controls, keys, learning
        self.cache, self.metrics, self.judge = cache, metrics, judge
        self.affinity = Affinity(config, sessions, hasher, backends)
        self.guard = GuardStage(config.guard)
        self.planner = Planner(config, routers, backends, controls, learning, self.affinity)
        self.attempts = Attempts(backends, config.fallback)
        self.tracer = tracer  # None: tracing off, no spans (the app builds it: app.start_tracing)
        # request ids need uniqueness, not secrecy: a seeded PRNG avoids an os.urandom call per request
        self._ids = random.Random(uuid.uuid4().int)

    # -- admission and the row ------------------------------------------------------------
    def new_call(self, api_key_id: str | None, endpoint: str = "") -> Call:
        """A request admitted with a valid key (or auth off): from here on it gets exactly one ledger row
        (and one trace span, ended with the row at ``finish``)."""
        row = LedgerRow(id=f"thl-{self._ids.getrandbits(128):032x}", created_at=time.time(), api_key_id=api_key_id)
        return Call(row=row, trace=RequestTrace(self.tracer, endpoint) if self.tracer is not None else None)

    def authorize(self, authorization: str | None) -> str | None:
        """The API key id, or None when auth is off; 401 (and no ledger row) for a missing or unknown key."""
        return self.keys.authorize(authorization)

    async def reject(self, call: Call, error: p.RequestError) -> p.RequestError:
        """Ledger row for a request that ends in an error response; the response names the request id."""
        call.row.status, call.row.error_type = error.status, error.code or error.type
        error.headers["x-thalamus-request-id"] = call.row.id
        await self.finish(call)
        return error

    async def finish(self, call: Call) -> None:
        """Hand the row to the writer; with ``durability: journal`` this returns once the row is on disk."""
        row = call.row
        row.finished_at = row.finished_at if row.finished_at is not None else time.time()
        row.total_ms = row.total_ms if row.total_ms is not None else call.elapsed_ms()
        loaded = self.routers.get(row.router) if row.router is not None else None
        annotate(row, loaded.config.baseline_model() if loaded is not None else None, self._prices)
        self.affinity.remember(call)
        team = self.controls.team_of(row.api_key_id)
        if self.metrics is not None:
            self.metrics.observe(row, team)
        self.controls.observe(row)
        log_access(row, team)
        if call.trace is not None:
            call.trace.end(row, team)
        await self.writer.record(row)
        if self.judge is not None and row.status == 200 and call.answer and row.cache != "hit":
            self.judge.offer(row.id, call.question or "", call.answer)  # never waits: a full queue drops

    def _prices(self, model: str) -> BackendConfig | None:
        backend = self.backends.get(model)
        return backend.config if backend is not None else None

    def too_large(self, size: int) -> p.RequestError:
        return p.RequestError(413, f"request body of {size} bytes is over the limit of "
                              f"{self.config.server.max_body_bytes} bytes (server.max_body_bytes)",
                              code="request_too_large")

    async def guarded(self, call: Call, flow: Awaitable[Result]) -> Result:
        """Run a request's flow; any error becomes its OpenAI-shaped answer and its ledger row (a 500,
        never a crash, for the gateway's own bugs)."""
        try:
            return await flow
        except p.RequestError as exc:
            raise await self.reject(call, exc) from None
        except Exception as exc:
            error = p.RequestError(500, f"internal gateway error: {type(exc).__name__}", type_="server_error",
                                   code="internal_error")
            raise await self.reject(call, error) from exc

    # -- the pipeline -----------------------------------------------------------------------
    async def handle(self, endpoint: Endpoint, call: Call, raw: bytes) -> Result:
        """One admitted request on ``endpoint``; every outcome, errors included, leaves its ledger row."""
        return await self.guarded(call, self._flow(endpoint, call, raw))

    async def _flow(self, endpoint: Endpoint, call: Call, raw: bytes) -> Result:
        await self.controls.admit(call.row.api_key_id)
        view = endpoint.parse(raw)
        row = call.row
        row.requested_model, row.stream = view.model, view.stream
        if endpoint.routed:  # pre-routing checks: block, redact, restrict
            view = self.guard.apply(call, view)
        row.prompt_hash = self.hasher(view.routing_text)
        if self.config.ledger.store_prompts:
            row.prompt_text = view.routing_text
        candidates = await self.planner.plan(call, view, endpoint.routed)
        await self.controls.reserve(row, view.prompt_tokens, view.max_tokens, self.backends[candidates[0]].config)
        if view.stream:
            return await self._stream(endpoint, call, view, candidates)
        if endpoint.cacheable and self.cache.enabled:
            return await answer_cached(self.cache, call, view.original, candidates,
                                       lambda: self._complete(endpoint, call, view, candidates), self.finish)
        return await self._complete(endpoint, call, view, candidates)

    async def _complete(self, endpoint: Endpoint, call: Call, view: RequestView, candidates: list[str]) -> Result:
        rid = response_id(call)

        async def attempt(backend: Backend) -> tuple[dict[str, Any], bytes]:
            response = await endpoint.complete(backend, view, rid)
            response["model"] = backend.name
            return response, p.render(backend.name, response)

        name, (response, rendered) = await self.attempts.run(call, candidates, attempt)
        call.row.ttft_ms = call.elapsed_ms()
        usage, text = endpoint.answer(response)
        self.account(call, name, view, usage, text, endpoint.judged)
        call.row.status = 200
        await self.finish(call)
        return Result(200, self.headers(call, name), body=rendered)

    async def _stream(self, endpoint: Endpoint, call: Call, view: RequestView, candidates: list[str]) -> Result:
        rid = response_id(call)

        async def open_stream(backend: Backend) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None]:
            iterator = await endpoint.open(backend, view, rid)
            return iterator, await anext(iterator, None)

        name, (iterator, first) = await self.attempts.run(call, candidates, open_stream)
        call.row.ttft_ms = call.elapsed_ms()

        async def close(status: int, error: str | None, usage: dict[str, Any] | None, text: str) -> None:
            call.row.status, call.row.error_type = status, error
            self.account(call, name, view, usage, text, endpoint.judged)
            await self.finish(call)

        return Result(200, self.headers(call, name), stream=relay(call, name, endpoint, iterator, first, close))

    # -- accounting -------------------------------------------------------------------------
    def account(self, call: Call, name: str, view: RequestView, usage: dict[str, Any] | None, text: str,
                judged: bool) -> None:
        """Tokens (the upstream's usage, else estimates) and their cost at the one price rule."""
        cfg = self.backends[name].config
        prompt_tokens, completion_tokens = p.token_count(usage, "prompt_tokens"), p.token_count(usage,
                                                                                              "completion_tokens")
        if not prompt_tokens and not completion_tokens and text:  # a zero usage made up for a stream (litellm)
            prompt_tokens = completion_tokens = None
        row = call.row
        row.cost_estimated = prompt_tokens is None
        row.prompt_tokens = prompt_tokens if prompt_tokens is not None else view.prompt_tokens
        row.completion_tokens = completion_tokens if completion_tokens is not None else (
            p.estimate_tokens(text) if text else 0)
        row.chosen_model, row.cost_usd = name, cfg.cost(row.prompt_tokens, row.completion_tokens)
        row.price_input_per_m, row.price_output_per_m = cfg.input_per_m, cfg.output_per_m
        row.variant = cfg.variant
        if judged and self.judge is not None:
            call.answer, call.question = text, view.routing_text

    def headers(self, call: Call, name: str) -> dict[str, str]:
        headers = {"x-thalamus-request-id": call.row.id, "x-thalamus-model": name,
                   "x-thalamus-router": call.row.router or "none"}
        decision = call.decision
        if decision is not None and name in decision.models:
            i = decision.models.index(name)
            headers["x-thalamus-predicted-quality"] = f"{decision.predicted_quality[i]:.6g}"
            headers["x-thalamus-expected-cost"] = f"{decision.expected_cost[i]:.6g}"
        return headers


def response_id(call: Call) -> str:
    """The Responses API id of a request (its request id's random part)."""
    return "resp_" + call.row.id.removeprefix("thl-")
