"""The request flow of the gateway, in one place.

1. (api.py caps the body size) check auth, parse the body; resolve the ``model`` field to a concrete backend
   (passthrough), a router (``router:NAME`` or an alias) or a RouteLLM name
   (``router-NAME-THRESHOLD``)
2. routing text from the messages (protocol.routing_text)
3. decision = router.route(text, knob) in a worker thread (sync CPU work; inline for ``fast`` embedders)
4. call the chosen backend; retry retryable failures with exponential backoff, then fall back
   in the router's score order (or the configured list); a stream falls back only before
   its first byte; a context-length error goes to ``fallback.context_model`` when set
5. one ledger row per admitted request (valid key, or auth off), whatever the outcome, recorded before the
   response's last byte (with ``ledger.durability: journal``, on disk by then)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from thalamus.errors import ConfigError
from thalamus.gateway import protocol as p
from thalamus.gateway.auth import KeyChecker
from thalamus.gateway.backends import Backend, UpstreamError
from thalamus.gateway.cache import ResponseCache, answer_cached
from thalamus.gateway.config import GatewayConfig, RouterConfig
from thalamus.gateway.controls import TeamControls
from thalamus.gateway.counterfactual import annotate
from thalamus.gateway.decisions import fallback_order, knob_dict, threshold_knob, unique
from thalamus.gateway.learning import LearningLoop
from thalamus.gateway.ledger import LedgerWriter
from thalamus.gateway.ledger_row import LedgerRow
from thalamus.gateway.metrics import GatewayMetrics
from thalamus.gateway.prompt_hash import PromptHasher
from thalamus.router.base import Router
from thalamus.router.policy import Decision, Knob

if TYPE_CHECKING:
    from thalamus.gateway.judge import Judge

T = TypeVar("T")
ROUTELLM_NAME = re.compile(r"^router-(?P<name>.+)-(?P<threshold>[0-9]*\.?[0-9]+)$")


@dataclass
class LoadedRouter:
    """A router artifact loaded for serving, restricted to the configured backends."""

    name: str
    router: Router
    version: str
    config: RouterConfig
    servable: tuple[str, ...]

    def pair(self) -> tuple[str, str]:
        """The configured RouteLLM (strong, weak) pair; only names with one resolve to a threshold."""
        strong, weak = self.config.strong, self.config.weak
        assert strong is not None and weak is not None
        return strong, weak

    def default_knob(self) -> Knob:
        knob = self.config.knob.to_knob()
        if knob.allowed is None and len(self.servable) < len(self.router.models_):
            knob = Knob(knob.kind, knob.value, knob.strong, knob.max_cost, self.servable, knob.excluded)
        return knob


@dataclass
class Target:
    """What the ``model`` field resolved to."""

    backend: str | None = None
    router: LoadedRouter | None = None
    threshold: float | None = None  # RouteLLM form


@dataclass
class ChatResult:
    status: int
    headers: dict[str, str]
    body: bytes | None = None  # the rendered JSON response
    stream: AsyncIterator[bytes] | None = None


@dataclass
class Call:
    """The state of one request as it moves through the flow; becomes its ledger row."""

    row: LedgerRow
    started: float = field(default_factory=time.perf_counter)
    decision: Decision | None = None
    answer: str | None = None  # the answer's text and the request's messages, for the LLM judge
    messages: list[dict[str, Any]] | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    @contextlib.contextmanager
    def upstream(self) -> Iterator[None]:
        """Count the time inside as waiting on upstreams (gateway overhead = total - upstream)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.row.upstream_ms = (self.row.upstream_ms or 0.0) + (time.perf_counter() - t0) * 1000


class GatewayService:
    """Owns nothing: the app's lifespan hands it config, routers, backends and the ledger writer."""

    def __init__(self, config: GatewayConfig, routers: dict[str, LoadedRouter],
                 backends: dict[str, Backend], writer: LedgerWriter, hasher: PromptHasher,
                 metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.routers = routers
        self.backends = backends
        self.writer = writer
        self.aliases = {a: r for r in routers.values() for a in r.config.aliases}
        self.controls = TeamControls(config.auth, writer.ledger.engine)  # virtual keys, budgets, rate limits
        self.cache = ResponseCache(config.cache)
        self.keys = KeyChecker(config.auth, self.controls.lookup)
        self.hasher = hasher
        self.metrics = metrics
        self.learning = LearningLoop(config)  # exploration, propensities, online updates (gateway/learning.py)
        self.judge: Judge | None = None  # LLM-as-judge (gateway/judge.py), set by the app when configured
        # request ids need uniqueness, not secrecy: a seeded PRNG avoids an os.urandom call per request
        self._ids = random.Random(uuid.uuid4().int)

    # -- 1. admission ---------------------------------------------------------------------
    def new_call(self, api_key_id: str | None) -> Call:
        """A request admitted with a valid key (or auth off): from here on it gets exactly one ledger row."""
        row = LedgerRow(id=f"thl-{self._ids.getrandbits(128):032x}", created_at=time.time(), api_key_id=api_key_id)
        return Call(row=row)

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
        annotate(row, loaded.config.baseline_model() if loaded is not None else None)  # dashboard columns
        if self.metrics is not None:
            self.metrics.observe(row)
        self.controls.observe(row)
        await self.writer.record(row)
        if self.judge is not None and row.status == 200 and call.answer and row.cache != "hit":
            self.judge.offer(row.id, call.messages or [], call.answer)  # never waits: a full queue drops

    def resolve(self, model: str) -> Target:
        if model in self.backends:
            return Target(backend=model)
        name = model.removeprefix("router:")
        if model.startswith("router:") and name in self.routers:
            return Target(router=self.routers[name])
        if model in self.aliases:
            return Target(router=self.aliases[model])
        m = ROUTELLM_NAME.match(model)
        if m and m["name"] in self.routers and self.routers[m["name"]].config.strong:
            return Target(router=self.routers[m["name"]], threshold=float(m["threshold"]))
        raise p.RequestError(404, f"model {model!r} is not a configured backend, router or alias; "
                             "GET /v1/models lists them", param="model", code="model_not_found")

    # -- entry point ----------------------------------------------------------------------
    async def chat(self, call: Call, raw: bytes) -> ChatResult:
        """One admitted chat request; every outcome, errors included, leaves its ledger row."""
        async def flow() -> ChatResult:
            self.controls.admit(call.row.api_key_id)
            body = p.parse_json_body(raw)
            p.validate_chat(body)
            call.row.requested_model, call.row.stream = body["model"], bool(body.get("stream"))
            return await self._chat(call, body)

        return await self.guarded(call, flow())

    async def guarded(self, call: Call, flow: Awaitable[ChatResult]) -> ChatResult:
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

    def too_large(self, size: int) -> p.RequestError:
        return p.RequestError(413, f"request body of {size} bytes is over the limit of "
                              f"{self.config.server.max_body_bytes} bytes (server.max_body_bytes)",
                              code="request_too_large")

    async def _chat(self, call: Call, body: dict[str, Any]) -> ChatResult:
        whole = dict(body) if self.cache.enabled and not body.get("stream") else None  # before plan() pops
        candidates = await self.plan(call, body)
        if body.get("stream"):
            return await self._stream(call, body, candidates)
        if whole is not None:
            return await answer_cached(self, call, body, candidates, whole)
        return await self._complete(call, body, candidates)

    async def plan(self, call: Call, body: dict[str, Any]) -> list[str]:
        """Resolve, check the key's scope, route and reserve budget: the backends to try, in order
        (shared by chat and the Responses API, whose body arrives here in its chat form)."""
        target = self.resolve(body["model"])
        overrides = self.controls.scope(call.row.api_key_id, target.backend,
                                        target.router.name if target.router else None,
                                        p.parse_routing(body.pop("routing", None)))
        text = p.routing_text(body["messages"])
        call.row.prompt_hash = self.hasher(text)
        if self.config.ledger.store_prompts:
            call.row.prompt_text = text
        candidates = await self._candidates(call, target, overrides, text)
        self.controls.reserve(call.row, body, self.backends[candidates[0]].config)
        return candidates

    # -- 2-3. routing ---------------------------------------------------------------------
    async def _candidates(self, call: Call, target: Target, overrides: p.RoutingOverrides,
                          text: str) -> list[str]:
        fallback = self.config.fallback
        if target.router is None:
            assert target.backend is not None
            call.row.chosen_model = target.backend
            return unique([target.backend, *fallback.models])
        loaded = target.router
        try:
            knob = overrides.apply(loaded.default_knob())
            t0 = time.perf_counter()
            route = functools.partial(self._route, loaded, text, knob, target.threshold)
            decision = route() if self.learning.inline(loaded) else await asyncio.to_thread(route)
            call.row.routing_ms = (time.perf_counter() - t0) * 1000
        except ConfigError as exc:
            raise p.RequestError(400, str(exc), param="routing", code="invalid_routing") from None
        call.decision = decision
        row = call.row
        row.router, row.artifact_version, row.knob = loaded.name, loaded.version, knob_dict(decision.knob)
        row.chosen_model = decision.model
        self.learning.record(row, loaded, decision)  # probability and candidates (quality, cost, p)
        order = [decision.model, *(fallback.models if fallback.order == "list" else fallback_order(decision))]
        candidates = unique([m for m in order if m in self.backends])[: fallback.max_candidates]
        if decision.model not in self.backends:
            raise p.RequestError(400, f"the router chose {decision.model!r}, which has no configured backend; "
                                 "restrict routing.allowed to backends", param="routing.allowed")
        return candidates

    def _route(self, loaded: LoadedRouter, text: str, knob: Knob, threshold: float | None) -> Decision:
        if threshold is not None:  # RouteLLM form: the configured strong/weak pair of a many-model router
            knob = threshold_knob(loaded.pair(), knob, threshold)
        return self.learning.route(loaded, text, knob)

    # -- 4. calling, retries, fallbacks ---------------------------------------------------
    async def _attempt_all(self, call: Call, candidates: list[str],
                           fn: Callable[[Backend], Awaitable[T]]) -> tuple[str, T]:
        chain = call.row.fallback_chain
        queue, used_context = list(candidates), False
        while queue:
            name = queue.pop(0)
            backend = self.backends[name]
            for attempt in range(backend.config.max_retries + 1):
                try:
                    with call.upstream():
                        return name, await fn(backend)
                except UpstreamError as exc:
                    chain.append({"model": name, "attempt": attempt + 1, "status": exc.status, "error": exc.code})
                    if exc.kind == "client":
                        raise p.RequestError(exc.status, f"upstream {name}: {exc.message}",
                                             code=exc.code) from None
                    if exc.kind == "context":
                        queue, used_context = self._context_fallback(name, exc, used_context), True
                        break
                    if attempt < backend.config.max_retries:
                        wait = self._retry_wait(exc, attempt)
                        if wait is None:
                            break  # the upstream asks for a longer pause than we hold a client for
                        await asyncio.sleep(wait)
        tried = ", ".join(f"{c['model']} ({c['status']} {c['error']})" for c in chain)
        raise p.RequestError(502, f"all backends failed; tried: {tried}", type_="upstream_error",
                             code="all_backends_failed")

    def _retry_wait(self, exc: UpstreamError, attempt: int) -> float | None:
        """Seconds before the next try: the upstream's Retry-After when it sent one (None past the cap),
        else exponential backoff."""
        if exc.retry_after is None:
            return float(self.config.fallback.backoff_s * 2**attempt)
        return exc.retry_after if exc.retry_after <= self.config.fallback.retry_after_cap_s else None

    def _context_fallback(self, name: str, exc: UpstreamError, used: bool) -> list[str]:
        larger = self.config.fallback.context_model
        if larger is None or used or larger == name:
            raise p.RequestError(400, f"upstream {name}: {exc.message}", param="messages",
                                 code="context_length_exceeded")
        return [larger]

    async def _complete(self, call: Call, body: dict[str, Any], candidates: list[str]) -> ChatResult:
        async def attempt(backend: Backend) -> tuple[dict[str, Any], bytes]:
            response = await backend.complete(body)
            response["model"] = backend.name
            return response, p.render(backend.name, response)

        name, (response, rendered) = await self._attempt_all(call, candidates, attempt)
        call.row.ttft_ms = call.elapsed_ms()
        self._account(call, name, body, response.get("usage"), "".join(
            str((c.get("message") or {}).get("content") or "") for c in response.get("choices") or []
            if isinstance(c, dict)))
        call.row.status = 200
        await self.finish(call)
        return ChatResult(200, self._headers(call, name), body=rendered)

    async def _stream(self, call: Call, body: dict[str, Any], candidates: list[str]) -> ChatResult:
        async def open_stream(backend: Backend) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None]:
            iterator = backend.stream(body).__aiter__()
            try:
                return iterator, await iterator.__anext__()
            except StopAsyncIteration:
                return iterator, None

        name, (iterator, first) = await self._attempt_all(call, candidates, open_stream)
        call.row.ttft_ms = call.elapsed_ms()
        return ChatResult(200, self._headers(call, name),
                          stream=self._relay(call, name, body, iterator, first))

    async def _relay(self, call: Call, name: str, body: dict[str, Any],
                     iterator: AsyncIterator[dict[str, Any]], first: dict[str, Any] | None) -> AsyncIterator[bytes]:
        usage: dict[str, Any] | None = None
        parts: list[str] = []
        call.row.status, call.row.error_type = 499, "client_disconnected"
        finished = False
        try:
            chunk = first
            while chunk is not None:
                chunk["model"] = name
                usage = chunk.get("usage") or usage
                parts.extend(str((c.get("delta") or {}).get("content") or "") for c in chunk.get("choices") or []
                             if isinstance(c, dict))
                yield p.render_chunk(name, chunk)
                with call.upstream():
                    chunk = await anext(iterator, None)
            call.row.status, call.row.error_type = 200, None
            self._account(call, name, body, usage, "".join(parts))
            finished = True
            await self.finish(call)  # before the last byte: with durability journal the row is on disk first
            yield p.SSE_DONE
        except UpstreamError as exc:  # after the first byte there is no fallback: report in-stream
            call.row.status, call.row.error_type = 502, exc.code
            self._account(call, name, body, usage, "".join(parts))
            finished = True
            await self.finish(call)
            yield p.sse(p.error_body(f"upstream {name} failed mid-stream: {exc.message}", "upstream_error"))
        finally:
            if not finished:  # the client went away (or the task was cancelled): 499
                self._account(call, name, body, usage, "".join(parts))
                await self.finish(call)
            closer = getattr(iterator, "aclose", None)
            if closer is not None:  # release the upstream connection if the client went away
                await closer()

    # -- 5. accounting --------------------------------------------------------------------
    def _account(self, call: Call, name: str, body: dict[str, Any], usage: dict[str, Any] | None,
                 text: str) -> None:
        cfg = self.backends[name].config
        prompt_tokens = p.token_count(usage, "prompt_tokens")
        completion_tokens = p.token_count(usage, "completion_tokens")
        estimated = prompt_tokens is None
        if prompt_tokens is None:
            prompt_tokens, completion_tokens = p.estimate_prompt_tokens(body["messages"]), p.estimate_tokens(text)
        completion_tokens = completion_tokens or 0
        cost = (prompt_tokens * (cfg.input_per_m or 0.0) + completion_tokens * (cfg.output_per_m or 0.0)) / 1e6
        row = call.row
        row.chosen_model, row.prompt_tokens, row.completion_tokens = name, prompt_tokens, completion_tokens
        row.cost_usd, row.cost_estimated = cost, estimated
        call.answer, call.messages = text, body["messages"]

    def _headers(self, call: Call, name: str) -> dict[str, str]:
        headers = {"x-thalamus-request-id": call.row.id, "x-thalamus-model": name,
                   "x-thalamus-router": call.row.router or "none"}
        decision = call.decision
        if decision is not None and name in decision.models:
            i = decision.models.index(name)
            headers["x-thalamus-predicted-quality"] = f"{decision.predicted_quality[i]:.6g}"
            headers["x-thalamus-expected-cost"] = f"{decision.expected_cost[i]:.6g}"
        return headers
