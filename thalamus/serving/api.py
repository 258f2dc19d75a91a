"""HTTP handlers of the local server: thin, OpenAI-shaped, generation handed to the model's worker thread.

Nothing slow runs on the event loop: chat-template rendering and tokenizing run in a worker thread (the
Rust tokenizer releases the GIL), and a prompt over ``max_prompt_chars`` is refused with a 413 before any
of that. A client that leaves cancels its job, streamed or not, so the generation thread stops early.
A chat for an ``engine: vllm`` model is checked against ``max_prompt_chars`` only and forwarded as it
came; the torch engine's request schema (:class:`ChatRequest`) applies to torch models.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from thalamus.openai_wire import SSE_DONE, sse
from thalamus.serving.batching import QueueSink
from thalamus.serving.config import ServingConfig
from thalamus.serving.engine import Finished, Job, SamplingParams
from thalamus.serving.metrics import ServingMetrics
from thalamus.serving.pool import LoadedModel, ModelPool
from thalamus.serving.protocol import (
    BusyError,
    ChatRequest,
    ServingError,
    chunk_body,
    completion_body,
    new_id,
    raw_prompt_chars,
    usage,
)
from thalamus.serving.vllm_engine import VllmEngines, vllm_entry
from thalamus.serving.vllm_proxy import forward_chat

router = APIRouter()


class _ClientGone(Exception):
    """The client of a non-stream request disconnected before its answer was ready."""


@dataclass
class ServingState:
    config: ServingConfig
    pool: ModelPool
    metrics: ServingMetrics
    vllm: VllmEngines


def _state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    pool = _state(request).pool
    return {"status": "ok", "loaded_models": sorted(pool.loaded), "used_bytes": pool.used_bytes(),
            "memory_budget": pool.config.memory_budget}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """OpenAI's model list plus the pool's state, which the gateway's pool-aware routing polls: whether
    each model is resident, its measured load times (seconds, evictions included) and weight bytes."""
    pool = _state(request).pool
    data = []
    for name in sorted(pool.specs):
        stats, held = pool.load_stats[name], pool.loaded.get(name)
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "thalamus-local",
                     "loaded": held is not None, "loads": stats.loads,
                     "load_seconds_last": stats.last_s if stats.loads else None,
                     "load_seconds_mean": stats.mean_s(),
                     "bytes": held.bytes if held is not None else (stats.bytes or None), "engine": "torch"})
    data += [vllm_entry(engine) for engine in _state(request).vllm.engines.values()]
    data.sort(key=lambda entry: str(entry["id"]))
    return {"object": "list", "data": data, "memory_budget": pool.config.memory_budget,
            "used_bytes": pool.used_bytes()}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(raw: Annotated[Any, Body()], request: Request) -> Response:
    state = _state(request)
    name = raw.get("model") if isinstance(raw, dict) else None
    if isinstance(name, str) and name in state.vllm:  # vLLM validates the body itself: it goes on unchanged
        try:
            _check_size(state, raw_prompt_chars(raw.get("messages")))
        except ServingError as exc:
            state.metrics.requests.labels(name, str(exc.status)).inc()
            raise
        return await forward_chat(request, name, state.vllm, state.metrics, state.config.queue_timeout_s)
    body = _chat_request(raw)
    label = body.model if body.model in state.pool.specs else "unknown"
    lease = AsyncExitStack()
    handed_over = False
    try:
        _check_size(state, body.prompt_chars())
        model = await lease.enter_async_context(state.pool.lease(body.model))
        job, sink = await _submit(state, model, body)
        if not body.stream:
            async with _cancel_on_disconnect(request, job, sink):
                return JSONResponse(await _collect(state, body, job, sink))
        first = await _next_event(sink, job, body.model)
        response = _LeasedStream(_stream(state, body, job, sink, first), lease, job)
        handed_over = True  # from here the response releases the lease, however it ends
        return response
    except ServingError as exc:
        state.metrics.requests.labels(label, str(exc.status)).inc()
        raise
    except _ClientGone:
        state.metrics.requests.labels(label, "499").inc()  # nginx's "client closed request"
        return JSONResponse({}, status_code=499)  # nobody reads it; uvicorn drops sends after a disconnect
    finally:  # any exit, BaseExceptions such as asyncio.CancelledError included
        if not handed_over:
            await lease.aclose()


class _LeasedStream(StreamingResponse):
    """The SSE response; it holds the model lease until it ends, also when the client leaves early.

    Starlette abandons the body generator when the client disconnects (possibly before it ever ran),
    so neither the lease nor the job can be left to the generator's own cleanup.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], lease: AsyncExitStack, job: Job) -> None:
        super().__init__(events, media_type="text/event-stream")
        self.events, self.lease, self.job = events, lease, job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancelled = True  # no-op once finished; else the engine drops it at its next token
            await self.lease.aclose()
            await self.events.aclose()


def _prompt_ids(model: LoadedModel, body: ChatRequest) -> list[int]:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    tokenizer = model.tokenizer
    if getattr(tokenizer, "chat_template", None):
        try:
            encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)
        except Exception as exc:  # jinja raises for roles or orders a template does not accept
            raise ServingError(400, f"model '{body.model}' chat template rejected the messages: {exc}",
                               param="messages") from exc
        return list(encoded["input_ids"])
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return list(tokenizer(text)["input_ids"])


def _chat_request(raw: Any) -> ChatRequest:
    """A torch model's body, validated as FastAPI validates a ``ChatRequest`` parameter (same errors)."""
    try:
        return ChatRequest.model_validate(raw, from_attributes=True)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()],
                                     body=raw) from None


def _check_size(state: ServingState, chars: int) -> None:
    limit = state.config.max_prompt_chars
    if chars > limit:
        raise ServingError(413, f"The messages hold {chars} characters; this server accepts at most {limit} "
                                "(max_prompt_chars in its serving config)", param="messages",
                           code="prompt_too_large")


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Request, job: Job, sink: QueueSink) -> AsyncIterator[None]:
    """While the block runs, a client disconnect cancels ``job`` and wakes its waiter with ``("gone", None)``.

    The body has been read, so the next ASGI message is ``http.disconnect``: it arrives when the client
    closes its connection (the stream path learns the same from starlette's own disconnect listener).
    """

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancelled = True  # the engine drops the job at its next token, or the worker before it starts
        sink.queue.put_nowait(("gone", None))

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


def _budget(state: ServingState, model: LoadedModel, body: ChatRequest, n_prompt: int) -> int:
    context = model.context_length
    if n_prompt >= context:
        raise ServingError(400, f"The prompt is {n_prompt} tokens long but model '{body.model}' has a "
                                f"context length of {context} tokens", param="messages",
                           code="context_length_exceeded")
    asked = body.token_budget()
    if asked is not None and n_prompt + asked > context:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ServingError(400, f"{field}={asked} plus the {n_prompt}-token prompt exceeds model "
                                f"'{body.model}' context length of {context} tokens", param=field,
                           code="context_length_exceeded")
    return asked if asked is not None else min(state.config.default_max_tokens, context - n_prompt)


async def _submit(state: ServingState, model: LoadedModel, body: ChatRequest) -> tuple[Job, QueueSink]:
    ids = await asyncio.to_thread(_prompt_ids, model, body)  # a long prompt takes seconds to tokenize
    params = SamplingParams(max_tokens=_budget(state, model, body, len(ids)), temperature=body.temperature,
                            top_p=body.top_p, stop=body.stops(), seed=body.seed,
                            ignore_eos=body.ignore_eos)
    name, metrics = body.model, state.metrics
    limit = state.config.max_queued
    if model.worker.queued() >= limit:
        metrics.queue_rejections.labels(name, "batch", "full").inc()
        raise BusyError(f"model '{name}' has {model.worker.queued()} requests waiting for a batch slot "
                        f"(max_queued={limit}); retry later", code="queue_full")
    sink = QueueSink(asyncio.get_running_loop(), on_finish=lambda result: metrics.record_finish(name, result))
    job = Job(ids, params, sink)
    model.worker.submit(job)
    return job, sink


async def _next_event(sink: QueueSink, job: Job, model: str) -> tuple[str, Any]:
    try:
        kind, value = await sink.queue.get()
    except BaseException:
        job.cancelled = True  # the client went away; the engine drops the request at its next token
        raise
    if kind == "gone":
        raise _ClientGone
    if kind == "error" and isinstance(value, ServingError):
        raise value  # the queue's 503 (timed out waiting for a batch slot), as it is
    if kind == "error":
        raise ServingError(500, f"generation failed for model '{model}': {type(value).__name__}: {value}",
                           type_="server_error", code="generation_failed")
    return kind, value


def _extra(result: Finished) -> dict[str, Any] | None:
    return {"expert_load": result.expert_load} if result.expert_load else None


async def _collect(state: ServingState, body: ChatRequest, job: Job, sink: QueueSink) -> dict[str, Any]:
    parts: list[str] = []
    while True:
        kind, value = await _next_event(sink, job, body.model)
        if kind == "delta":
            parts.append(value)
            continue
        result: Finished = value
        state.metrics.requests.labels(body.model, "200").inc()
        return completion_body(new_id(), body.model, "".join(parts), result.finish_reason,
                               usage(result.prompt_tokens, result.completion_tokens), _extra(result))


async def _stream(state: ServingState, body: ChatRequest, job: Job, sink: QueueSink,
                  first: tuple[str, Any]) -> AsyncGenerator[bytes, None]:
    cid, name = new_id(), body.model
    yield sse(chunk_body(cid, name, {"role": "assistant", "content": ""}))
    kind, value = first
    try:
        while kind == "delta":
            yield sse(chunk_body(cid, name, {"content": value}))
            kind, value = await _next_event(sink, job, name)
    except ServingError as exc:
        state.metrics.requests.labels(name, str(exc.status)).inc()
        yield sse(exc.body())
        return
    result: Finished = value
    state.metrics.requests.labels(name, "200").inc()
    yield sse(chunk_body(cid, name, {}, result.finish_reason, extra=_extra(result)))
    if body.stream_options and body.stream_options.include_usage:
        yield sse(chunk_body(cid, name, {}, usage_=usage(result.prompt_tokens, result.completion_tokens),
                             with_choice=False))
    yield SSE_DONE
