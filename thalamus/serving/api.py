"""HTTP handlers of the local server: thin, OpenAI-shaped, generation handed to the model's worker thread."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from thalamus.openai_wire import SSE_DONE, sse
from thalamus.serving.batching import QueueSink
from thalamus.serving.config import ServingConfig
from thalamus.serving.engine import Finished, Job, SamplingParams
from thalamus.serving.metrics import ServingMetrics
from thalamus.serving.pool import LoadedModel, ModelPool
from thalamus.serving.protocol import ChatRequest, ServingError, chunk_body, completion_body, new_id, usage

router = APIRouter()


@dataclass
class ServingState:
    config: ServingConfig
    pool: ModelPool
    metrics: ServingMetrics


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
    pool = _state(request).pool
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "thalamus-local",
             "loaded": name in pool.loaded} for name in sorted(pool.specs)]
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse:
    state = _state(request)
    label = body.model if body.model in state.pool.specs else "unknown"
    lease = AsyncExitStack()
    handed_over = False
    try:
        model = await lease.enter_async_context(state.pool.lease(body.model))
        job, sink = _submit(state, model, body)
        if not body.stream:
            return JSONResponse(await _collect(state, body, job, sink))
        first = await _next_event(sink, job, body.model)
        response = _LeasedStream(_stream(state, body, job, sink, first), lease, job)
        handed_over = True  # from here the response releases the lease, however it ends
        return response
    except ServingError as exc:
        state.metrics.requests.labels(label, str(exc.status)).inc()
        raise
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


def _submit(state: ServingState, model: LoadedModel, body: ChatRequest) -> tuple[Job, QueueSink]:
    import asyncio

    ids = _prompt_ids(model, body)
    params = SamplingParams(max_tokens=_budget(state, model, body, len(ids)), temperature=body.temperature,
                            top_p=body.top_p, stop=body.stops(), seed=body.seed,
                            ignore_eos=body.ignore_eos)
    sink = QueueSink(asyncio.get_running_loop())
    job = Job(ids, params, sink)
    model.worker.submit(job)
    return job, sink


async def _next_event(sink: QueueSink, job: Job, model: str) -> tuple[str, Any]:
    try:
        kind, value = await sink.queue.get()
    except BaseException:
        job.cancelled = True  # the client went away; the engine drops the request at its next token
        raise
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
        _account(state, body.model, result)
        return completion_body(new_id(), body.model, "".join(parts), result.finish_reason,
                               usage(result.prompt_tokens, result.completion_tokens), _extra(result))


def _account(state: ServingState, model: str, result: Finished) -> None:
    state.metrics.record_finish(model, result)
    state.metrics.requests.labels(model, "200").inc()


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
    _account(state, name, result)
    yield sse(chunk_body(cid, name, {}, result.finish_reason, extra=_extra(result)))
    if body.stream_options and body.stream_options.include_usage:
        yield sse(chunk_body(cid, name, {}, usage_=usage(result.prompt_tokens, result.completion_tokens),
                             with_choice=False))
    yield SSE_DONE
