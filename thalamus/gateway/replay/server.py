"""The replay upstream: an OpenAI-compatible server answering with recorded responses.

It lets the real gateway route real prompts to "GPT-4", "Mixtral", ... offline. For a
request to model X whose routing text (protocol.routing_text) is a prompt of the
RoutingDataset, it answers with X's recorded response; any other prompt or model gets a
deterministic synthetic answer. Token usage: prompt tokens are estimated from the message
text (4 characters per token + 4 per message), completion tokens are the recorded output
token count when the dataset has one, else estimated from the answer text the same way.

Fault injection, so reliability tests need no mocks: a model name suffix ``::FAULT`` or an
``x-replay-fault`` header; the vocabulary (error statuses, hangs, dropped connections, bad bodies,
error events, streams that die, stall or carry huge lines) is in :mod:`thalamus.gateway.replay.faults`.
``aliases`` (``--as NAME=RECORDED``) present a recorded model under another name, so a config written for a
team's own models (gpt-4o, ...) runs offline: a request to NAME gets RECORDED's answers.
A model named ``judge`` (``judges`` of ``create_replay_app``) grades the recorded answer a prompt quotes
with its recorded quality (:mod:`thalamus.gateway.replay.judge`): the LLM judge's offline stand-in.
Requests with ``tools`` get a tool call to the chosen (or first) tool; a
conversation ending in a tool result gets a text answer that quotes it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from thalamus.datasets.schema import RoutingDataset, stable_hash
from thalamus.gateway.replay.faults import fault_answer
from thalamus.gateway.replay.judge import DEFAULT_JUDGES, ReplayJudge
from thalamus.gateway.wire.protocol import (
    SSE_DONE,
    RequestError,
    content_text,
    error_body,
    estimate_prompt_tokens,
    estimate_tokens,
    routing_text,
    sse,
)
from thalamus.gateway.wire.responses import encode, events, from_chat, to_chat

MAX_DIMENSIONS = 8192  # OpenAI's largest embedding has 3,072; a larger request is a client mistake


@dataclass
class ReplayAnswer:
    text: str
    completion_tokens: int
    recorded: bool


class ReplayBook:
    """Recorded answers by (prompt hash, model)."""

    def __init__(self, dataset: RoutingDataset | None = None, judges: tuple[str, ...] = DEFAULT_JUDGES,
                 aliases: dict[str, str] | None = None) -> None:
        self.rows: dict[str, int] = {}
        self.dataset = dataset
        self.columns: dict[str, int] = {}
        if dataset is not None:
            for i, t in enumerate(dataset.texts):  # a repeated prompt is its first row, as the replay judge reads it
                self.rows.setdefault(stable_hash(t), i)
            self.columns = {m: j for j, m in enumerate(dataset.models)}
        self.columns.update(alias_columns(aliases or {}, self.columns))
        self.judges = frozenset(judges) - set(self.columns)  # a dataset's own model answers as recorded
        self.judge = ReplayJudge(dataset) if self.judges else None

    def answer(self, text: str, model: str) -> ReplayAnswer:
        if self.judge is not None and model in self.judges:
            graded = self.judge.grade(text)
            return ReplayAnswer(graded, estimate_tokens(graded), False)
        row = self.rows.get(stable_hash(text))
        ds = self.dataset
        if ds is not None and ds.responses is not None and row is not None and model in self.columns:
            col = self.columns[model]
            recorded = ds.responses[row, col]
            if isinstance(recorded, str) and recorded:
                tokens = ds.output_tokens[row, col] if ds.output_tokens is not None else np.nan
                n = int(tokens) if np.isfinite(tokens) and tokens > 0 else estimate_tokens(recorded)
                return ReplayAnswer(recorded, n, True)
        synthetic = f"Replay answer {stable_hash(model + chr(0) + text)[:10]} from {model}."
        return ReplayAnswer(synthetic, estimate_tokens(synthetic), False)


def alias_columns(aliases: dict[str, str], columns: dict[str, int]) -> dict[str, int]:
    """The recorded column each alias answers from; an alias of an unknown model is an error naming it."""
    unknown = sorted(recorded for recorded in aliases.values() if recorded not in columns)
    if unknown:
        raise ValueError(f"replay aliases name models the dataset does not record: {', '.join(unknown)}; "
                         f"its models are: {', '.join(columns) or 'none'}")
    return {name: columns[recorded] for name, recorded in aliases.items()}


def parse_aliases(specs: list[str]) -> dict[str, str]:
    """``["gpt-4o=gpt-4-1106-preview", ...]`` -> ``{"gpt-4o": "gpt-4-1106-preview", ...}``."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, recorded = spec.partition("=")
        if not sep or not name.strip() or not recorded.strip():
            raise ValueError(f"replay alias {spec!r}: write NAME=RECORDED_MODEL, e.g. gpt-4o=gpt-4-1106-preview")
        out[name.strip()] = recorded.strip()
    return out


def _parse_fault(model: str, header: str | None) -> tuple[str, str | None, int | None]:
    """(model without suffix, fault, limit)."""
    fault = header
    if "::" in model:
        model, fault = model.split("::", 1)
    if not fault:
        return model, None, None
    if "x" in fault and fault.split("x", 1)[1].isdigit():
        kind, count = fault.split("x", 1)
        return model, kind, int(count)
    return model, fault, None


def _tool_arguments(tool: dict[str, Any]) -> str:
    params = tool.get("function", {}).get("parameters", {}) or {}
    defaults = {"string": "replay", "number": 1, "integer": 1, "boolean": True, "array": [], "object": {}}
    props = params.get("properties", {}) or {}
    return json.dumps({k: defaults.get(props.get(k, {}).get("type", "string"), "replay")
                       for k in params.get("required", [])})


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or choice == "none" or body["messages"][-1].get("role") == "tool":
        return None
    tool = tools[0]
    if isinstance(choice, dict):
        wanted = choice.get("function", {}).get("name")
        tool = next((t for t in tools if t.get("function", {}).get("name") == wanted), tool)
    name = tool.get("function", {}).get("name", "tool")
    call_id = "call_" + stable_hash(json.dumps(body["messages"], sort_keys=True))[:16]
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": _tool_arguments(tool)}}


class ReplayState:
    """What one replay server instance holds: the book, the delay, fault counters, a request log."""

    def __init__(self, book: ReplayBook, delay_ms: float = 0.0, log_size: int = 1000) -> None:
        self.book = book
        self.delay_s = delay_ms / 1000
        self.fault_counts: dict[str, int] = defaultdict(int)
        self.requests: deque[dict[str, Any]] = deque(maxlen=log_size)
        self.headers: deque[dict[str, str]] = deque(maxlen=log_size)  # of each request, in the same order

    def fault_active(self, key: str, fault: str | None, limit: int | None) -> bool:
        if fault is None:
            return False
        self.fault_counts[key] += 1
        return limit is None or self.fault_counts[key] <= limit


def _completion(body: dict[str, Any], model: str, book: ReplayBook) -> dict[str, Any]:
    messages = body["messages"]
    last = messages[-1]
    text = routing_text(messages)
    call = _tool_call(body)
    if last.get("role") == "tool":
        answer = ReplayAnswer(f"Tool result received: {content_text(last.get('content'))}", 0, False)
        answer.completion_tokens = estimate_tokens(answer.text)
    else:
        answer = book.answer(text, model)
    message: dict[str, Any] = {"role": "assistant", "content": None if call else answer.text}
    if call:
        message["tool_calls"] = [call]
    n = int(body.get("n") or 1)
    prompt_tokens = estimate_prompt_tokens(messages)
    completion_tokens = (estimate_tokens(json.dumps(call)) if call else answer.completion_tokens) * n
    return {
        "id": "chatcmpl-" + stable_hash(model + text)[:24], "object": "chat.completion",
        "created": int(time.time()), "model": model, "system_fingerprint": "replay",
        "choices": [{"index": i, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if call else "stop"} for i in range(n)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _chunk(done: dict[str, Any], choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
    out = {"id": done["id"], "object": "chat.completion.chunk", "created": done["created"],
           "model": done["model"], "system_fingerprint": "replay", "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def _stream_chunks(done: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for choice in done["choices"]:
        i, msg = choice["index"], choice["message"]
        chunks.append(_chunk(done, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                      "finish_reason": None}]))
        if msg.get("tool_calls"):
            calls = [{"index": k, **c} for k, c in enumerate(msg["tool_calls"])]
            chunks.append(_chunk(done, [{"index": i, "delta": {"tool_calls": calls}, "finish_reason": None}]))
        else:
            words = msg["content"].split(" ")
            step = max(1, len(words) // 4)
            for k in range(0, len(words), step):
                piece = " ".join(words[k:k + step]) + (" " if k + step < len(words) else "")
                chunks.append(_chunk(done, [{"index": i, "delta": {"content": piece}, "finish_reason": None}]))
        chunks.append(_chunk(done, [{"index": i, "delta": {}, "finish_reason": choice["finish_reason"]}]))
    if include_usage:
        chunks.append(_chunk(done, [], done["usage"]))
    return chunks


def _answer(body: dict[str, Any], model: str, book: ReplayBook) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The healthy completion and its stream chunks (usage chunk when ``stream_options`` asks)."""
    done = _completion(body, model, book)
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    return done, _stream_chunks(done, include)


async def _stream(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield sse(chunk)
    yield SSE_DONE


def create_replay_app(dataset: RoutingDataset | None = None, delay_ms: float = 0.0,
                      judges: tuple[str, ...] = DEFAULT_JUDGES, aliases: dict[str, str] | None = None) -> FastAPI:
    """The replay server as an ASGI app; ``app.state.replay`` exposes its request log. ``judges``: model
    names that grade answers (replay/judge.py); ``aliases``: served name -> recorded model."""
    app = FastAPI(title="thalamus replay upstream")
    state = ReplayState(ReplayBook(dataset, judges, aliases), delay_ms)
    app.state.replay = state

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [*(dataset.models if dataset is not None else []), *(aliases or {})]
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "replay"} for m in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        raw_model = str(body.get("model", ""))
        model, fault, limit = _parse_fault(raw_model, request.headers.get("x-replay-fault"))
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return JSONResponse(error_body("'messages' is required", "invalid_request_error", "messages"), 400)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.fault_active(raw_model, fault, limit):
            assert fault is not None
            faulty = await fault_answer(fault, model, body, request, lambda: _answer(body, model, state.book))
            if faulty is not None:
                return faulty
        done, chunks = _answer(body, model, state.book)
        if body.get("stream"):
            return StreamingResponse(_stream(chunks), media_type="text/event-stream")
        return JSONResponse(done)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """Deterministic unit vectors from the text's hash (``dimensions``, default 8)."""
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts:
            return JSONResponse(error_body("'input' is required", "invalid_request_error", "input"), 400)
        dims = 8 if body.get("dimensions") is None else body["dimensions"]
        if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= MAX_DIMENSIONS:
            return JSONResponse(error_body(f"'dimensions' must be an integer in [1, {MAX_DIMENSIONS}]",
                                           "invalid_request_error", "dimensions", "invalid_value"), 400)
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(t), dims)} for i, t in enumerate(texts)]
        tokens = sum(estimate_tokens(str(t)) for t in texts)
        return JSONResponse({"object": "list", "data": data, "model": body.get("model"),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """Legacy text completions: the chat answer to the prompt as a user message."""
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return JSONResponse(error_body("'prompt' must be a string", "invalid_request_error", "prompt"), 400)
        model = str(body.get("model", ""))
        done, _ = _answer({"messages": [{"role": "user", "content": prompt}]}, model, state.book)
        text = done["choices"][0]["message"]["content"] or ""
        out = {"id": "cmpl-" + done["id"][9:], "object": "text_completion", "created": done["created"],
               "model": model, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
               "usage": done["usage"]}
        if body.get("stream"):
            pieces = [w + " " for w in text.split(" ")[:-1]] + text.split(" ")[-1:]
            chunks = [{**out, "choices": [{"index": 0, "text": w, "logprobs": None, "finish_reason": None}]}
                      for w in pieces] + [{**out, "choices": [{"index": 0, "text": "", "logprobs": None,
                                                               "finish_reason": "stop"}]}]
            return StreamingResponse(_stream(chunks), media_type="text/event-stream")
        return JSONResponse(out)

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        """The Responses API, natively: answers as the chat endpoint would, in Responses shapes (ids
        ``resp_replay...``, so a test can tell a forwarded request from a translated one)."""
        body = await request.json()
        state.requests.append(body)
        try:
            chat = to_chat(body)
        except RequestError as exc:
            return JSONResponse(exc.body(), exc.status)
        model = str(chat["model"])
        done, chunks = _answer(chat, model, state.book)
        rid = "resp_replay" + stable_hash(model + json.dumps(chat["messages"]))[:16]
        if body.get("stream"):
            return StreamingResponse(_response_events(chunks, body, rid, model), media_type="text/event-stream")
        return JSONResponse(from_chat(done, body, rid, model))

    return app


def _vector(text: str, dims: int) -> list[float]:
    seed = bytes.fromhex(stable_hash(text))
    vec = np.frombuffer((seed * (dims // len(seed) + 1))[:dims], dtype=np.uint8).astype(float) - 127.5
    return [float(x) for x in vec / (np.linalg.norm(vec) or 1.0)]


async def _response_events(chunks: list[dict[str, Any]], body: dict[str, Any], rid: str,
                           model: str) -> AsyncIterator[bytes]:
    async def source() -> AsyncIterator[dict[str, Any]]:
        for chunk in chunks:
            yield chunk

    seq = 0
    async for event in events(source(), body, rid, model):
        yield encode(event, seq)
        seq += 1
