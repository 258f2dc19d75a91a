"""The replay upstream's fault vocabulary: every way an upstream can fail, on demand, so tests need no mocks.

A request picks a fault with a model-name suffix ``::FAULT`` or an ``x-replay-fault: FAULT`` header;
``FAULTxN`` (e.g. ``503x2``) fails only the first N calls for that model string.

Error answers (a JSON error body; the same for stream and non-stream requests):

- ``503``, ``500``, ``429``, ``400``, ``401``: that status
- ``ctx``: 400 ``context_length_exceeded``
- ``429s``: 429 with ``Retry-After: 1`` (delay in seconds)
- ``429date``: 429 with ``Retry-After`` as an HTTP date 2 s ahead
- ``secret``: 400 whose message holds an API key and a bearer token (for redaction)

Transport faults: ``hang`` (never answers, until the client leaves, 120 s at most), ``drop``
(headers, then the connection closes).

Bad 200 answers (non-stream: the body; stream: the first chunk):

- ``badjson``: not JSON
- ``nan``: a ``NaN`` logprob in the body (Python's json writes it; strict parsers refuse it)
- ``list``: a JSON list instead of an object
- ``nullchoices``: ``"choices": null``
- ``utf8``: invalid UTF-8 bytes inside the content string
- ``usagetype``: ``"usage": {"prompt_tokens": "lots", ...}``
- ``errorfirst``: ``{"error": {...}}`` (a stream's first event is an error event)

Stream faults (a non-stream request gets the normal answer):

- ``errormid``: two content chunks, then an error event (its message holds a secret too)
- ``badchunk``: two content chunks, then a JSON list as a chunk
- ``die``: two content chunks, then the connection is aborted (no ``[DONE]``, chunked body unterminated)
- ``cut``: two content chunks, then a clean end without ``finish_reason`` or ``[DONE]``
- ``stall``: two content chunks, then silence until the client leaves (60 s at most)
- ``slow``: a healthy stream with 0.1 s between its chunks (outlasts a short ``timeout``)
- ``hugeline``: a healthy stream whose second chunk is one 600 KiB SSE line
- ``jsonstream``: a stream request answered with the JSON completion body (``application/json``)
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from thalamus.openai_wire import SSE_DONE, error_body, sse

FAULT_STATUS = {"503": 503, "500": 500, "429": 429, "400": 400, "401": 401}
# a fake but key-shaped secret: what an upstream might echo back in an error message
LEAKED_SECRET = "sk-proj-Xq7fakefakefake0123456789abcdefABCDEF"
LEAKED_BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.fakefakefakefake.signature0123456789"
HUGE_LINE_BYTES = 600 * 1024
SLOW_GAP_S = 0.1
STALL_LIMIT_S = 60.0
HANG_LIMIT_S = 120.0

STATUS_FAULTS = frozenset({*FAULT_STATUS, "ctx", "429s", "429date", "secret"})
BODY_FAULTS = frozenset({"badjson", "nan", "list", "nullchoices", "utf8", "usagetype", "errorfirst"})
STREAM_FAULTS = frozenset({"errormid", "badchunk", "die", "cut", "stall", "slow", "hugeline", "jsonstream"})


def status_response(fault: str, model: str) -> Response:
    """The JSON error answer of an error fault."""
    if fault == "ctx":
        msg = (f"This model's maximum context length is 4096 tokens. However, your messages resulted in "
               f"9000 tokens. Please reduce the length of the messages. (replay model {model})")
        return JSONResponse(error_body(msg, "invalid_request_error", "messages", "context_length_exceeded"),
                            status_code=400)
    if fault in ("429s", "429date"):
        after = "1" if fault == "429s" else email.utils.formatdate(time.time() + 2, usegmt=True)
        return JSONResponse(error_body(f"replay fault {fault}: rate limited for model {model}", "requests",
                                       None, "rate_limit_exceeded"), status_code=429, headers={"retry-after": after})
    if fault == "secret":
        msg = f"Incorrect API key provided: {LEAKED_SECRET} (sent as '{LEAKED_BEARER}') for model {model}"
        return JSONResponse(error_body(msg, "invalid_request_error", None, "invalid_api_key"), status_code=400)
    status = FAULT_STATUS.get(fault, 503)
    # a 400 names a field, as OpenAI's do, so tests see the upstream's param reach the client
    return JSONResponse(error_body(f"replay fault {fault} for model {model}", "server_error" if status >= 500
                                   else "invalid_request_error", "temperature" if status == 400 else None,
                                   f"replay_{fault}"), status_code=status)


async def hang(request: Request, limit_s: float = HANG_LIMIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.05)


async def _dropped() -> AsyncIterator[bytes]:
    raise ConnectionAbortedError("replay fault 'drop': closing the connection")
    yield b""  # pragma: no cover - makes this an async generator


def dropped_response() -> Response:
    return StreamingResponse(_dropped(), media_type="application/json")


def _bad_value(fault: str, done: dict[str, Any]) -> bytes:
    """A completion (or chunk) ``done`` spoilt the way ``fault`` says, as the bytes sent."""
    if fault == "badjson":
        return json.dumps(done).encode()[:-7]
    if fault == "list":
        return json.dumps([done]).encode()
    if fault == "errorfirst":
        return json.dumps(error_body("replay fault errorfirst: the model is overloaded", "server_error",
                                     None, "overloaded")).encode()
    spoilt = json.loads(json.dumps(done))
    if fault == "nan":  # where real servers put non-finite numbers: a -inf or NaN logprob
        nan = {"token": "Replay", "logprob": float("nan"), "bytes": None, "top_logprobs": []}
        spoilt["choices"][0]["logprobs"] = {"content": [nan]}
    elif fault == "nullchoices":
        spoilt["choices"] = None
    elif fault == "usagetype":
        spoilt["usage"] = {"prompt_tokens": "lots", "completion_tokens": 3, "total_tokens": 3}
    text = json.dumps(spoilt).encode()  # json.dumps writes NaN unless told not to
    if fault == "utf8":
        text = text.replace(b'"choices": [', b'"bad": "\xff\xfe\xc3", "choices": [', 1)
        return _in_content(text)
    return text


def _in_content(text: bytes) -> bytes:
    """Put invalid UTF-8 inside the first content string too, where a relay would copy it."""
    for key in (b'"content": "', b'"content":"'):
        if key in text:
            return text.replace(key, key + b"\xff\xfe", 1)
    return text


def body_response(fault: str, done: dict[str, Any]) -> Response:
    """A non-stream 200 answer with a bad body."""
    return Response(_bad_value(fault, done), media_type="application/json")


def _error_event(text: str) -> bytes:
    return sse(error_body(f"replay fault errormid: {text} (key {LEAKED_SECRET})", "server_error", None,
                          "stream_failed"))


async def _frames(frames: list[bytes], end: str, gap_s: float = 0.0) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame
        if gap_s:
            await asyncio.sleep(gap_s)
    if end == "done":
        yield SSE_DONE
    elif end == "die":
        raise ConnectionAbortedError("replay fault 'die': closing the connection mid-stream")
    elif end == "stall":
        await asyncio.sleep(STALL_LIMIT_S)  # Starlette cancels this when the client leaves


def _huge(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [dict(c) for c in chunks]
    pad = "x" * HUGE_LINE_BYTES
    out[1] = {**out[1], "choices": [{"index": 0, "delta": {"content": pad}, "finish_reason": None}]}
    return out


def stream_response(fault: str, chunks: list[dict[str, Any]], done: dict[str, Any]) -> Response:
    """The streamed answer of a body or stream fault; ``chunks`` is the healthy stream of ``done``."""
    if fault == "jsonstream":
        return JSONResponse(done)
    frames = [sse(c) for c in chunks]
    end, gap = "done", 0.0
    if fault in BODY_FAULTS:
        first = _bad_value(fault, chunks[0])
        frames = [b"data: " + first + b"\n\n", *frames[1:]]
    elif fault == "errormid":
        frames, end = [*frames[:2], _error_event("the model crashed")], "none"
    elif fault == "badchunk":
        frames, end = [*frames[:2], b"data: [1, 2]\n\n", *frames[2:]], "done"
    elif fault in ("die", "cut", "stall"):
        frames, end = frames[:2], {"die": "die", "cut": "none", "stall": "stall"}[fault]
    elif fault == "slow":
        gap = SLOW_GAP_S
    elif fault == "hugeline":
        frames = [sse(c) for c in _huge(chunks)]
    return StreamingResponse(_frames(frames, end, gap), media_type="text/event-stream")


async def fault_answer(fault: str, model: str, body: dict[str, Any], request: Request,
                       answer: Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]) -> Response | None:
    """The faulty answer, or None when ``fault`` leaves this request healthy (a stream fault on a
    non-stream request). ``answer`` builds the healthy completion and its stream chunks."""
    if fault == "hang":
        await hang(request)
        return JSONResponse(error_body("replay hang ended", "server_error"), status_code=504)
    if fault == "drop":
        return dropped_response()
    if fault in BODY_FAULTS or fault in STREAM_FAULTS:
        done, chunks = answer()
        if body.get("stream"):
            return stream_response(fault, chunks, done)
        return body_response(fault, done) if fault in BODY_FAULTS else None
    return status_response(fault, model)
