"""A request's model lease is released on every exit path: errors, cancellation and clients that leave.

A held lease makes its model unevictable, so a leak shows as ``in_use`` staying above zero.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from servehelpers import ask, serve_app, tiny_config
from starlette.types import Message

from thalamus.serving import api
from thalamus.serving.app import create_app
from thalamus.serving.batching import BatchWorker, QueueSink
from thalamus.serving.engine import Finished, Job

CHAT = "/v1/chat/completions"
MODEL = "tiny-mixtral"


def _in_use(app: FastAPI) -> int:
    model = app.state.serving.pool.loaded.get(MODEL)
    return 0 if model is None else int(model.in_use)


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> list[Job]:
    """Every job submitted to a model's worker, in order."""
    seen: list[Job] = []
    submit = BatchWorker.submit

    def record(self: BatchWorker, job: Job) -> None:
        seen.append(job)
        submit(self, job)

    monkeypatch.setattr(BatchWorker, "submit", record)
    return seen


def _asgi_call(app: FastAPI, body: dict[str, Any], sent: list[Message],
               after_body: Callable[[], Awaitable[Message]] | None = None,
               send: Callable[[Message], Awaitable[None]] | None = None) -> Coroutine[Any, Any, None]:
    """POST ``body`` to the chat endpoint straight through ASGI, with uvicorn's HTTP/1.1 scope.

    After the body, ``receive`` answers with ``after_body`` (default: never returns); ``send`` defaults
    to appending to ``sent``.
    """
    messages = iter([{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}])

    async def receive() -> Message:
        message = next(messages, None)
        if message is not None:
            return message
        if after_body is not None:
            return await after_body()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def record(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    return app(scope, receive, send or record)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_lease_released_after_unexpected_error(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                               stream: bool) -> None:
    """An error other than ServingError, raised once the lease is held, releases it before the 500."""

    def explode(model: object, body: object) -> list[int]:
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(api, "_prompt_ids", explode)
    app = create_app(tiny_config(tiny_dir))
    sent: list[Message] = []

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            with pytest.raises(RuntimeError, match="tokenizer exploded"):  # re-raised to the server to log
                await _asgi_call(app, {"model": MODEL, "messages": ask("hi"), "stream": stream}, sent)
            assert MODEL in app.state.serving.pool.loaded
            assert _in_use(app) == 0

    asyncio.run(scenario())
    assert sent[0]["status"] == 500 and b"tokenizer exploded" in sent[1]["body"]


def test_lease_released_when_request_task_is_cancelled(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.CancelledError (a BaseException) while waiting for the first token releases the lease."""
    held: list[Job] = []
    monkeypatch.setattr(BatchWorker, "submit", lambda self, job: held.append(job))  # never generates
    app = create_app(tiny_config(tiny_dir))
    sent: list[Message] = []

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            body = {"model": MODEL, "messages": ask("hi"), "stream": True}
            task = asyncio.create_task(_asgi_call(app, body, sent))
            while not held:
                await asyncio.sleep(0.01)
            assert _in_use(app) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _in_use(app) == 0

    asyncio.run(scenario())
    assert held[0].cancelled and sent == []


def test_lease_released_when_client_leaves_during_a_stalled_send(tiny_dir: Path, jobs: list[Job]) -> None:
    """The client stops reading (the socket is full) and then leaves: the stream is abandoned at a ``yield``.

    Starlette cancels the send that is stuck and never closes the body generator, so anything that only
    the generator would release stays held until the garbage collector finalizes it.
    """
    app = create_app(tiny_config(tiny_dir))
    stalled = asyncio.Event()
    sent: list[Message] = []

    async def stalled_send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            stalled.set()
            await asyncio.Event().wait()  # never drains

    async def client_leaves() -> Message:
        await stalled.wait()
        return {"type": "http.disconnect"}

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            body = {"model": MODEL, "messages": ask("hi"), "stream": True, "max_tokens": 400, "ignore_eos": True}
            await _asgi_call(app, body, sent, after_body=client_leaves, send=stalled_send)
            assert _in_use(app) == 0

    asyncio.run(scenario())
    assert len(sent) == 2  # the response start and the stalled first chunk
    assert len(jobs) == 1 and jobs[0].cancelled  # the engine stopped generating for nobody


def test_lease_released_when_stream_client_disconnects(tiny_dir: Path, jobs: list[Job],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A real client closes its connection mid-stream (uvicorn on loopback)."""
    results: list[Finished] = []
    delta, finish = QueueSink.delta, QueueSink.finish

    def slow_delta(self: QueueSink, text: str) -> None:
        time.sleep(0.01)  # in the generation thread: a full answer would take seconds
        delta(self, text)

    def record_finish(self: QueueSink, result: Finished) -> None:
        results.append(result)
        finish(self, result)

    monkeypatch.setattr(QueueSink, "delta", slow_delta)
    monkeypatch.setattr(QueueSink, "finish", record_finish)
    body = {"model": MODEL, "messages": ask("Tell me a long story"), "stream": True, "max_tokens": 400,
            "ignore_eos": True, "temperature": 0}
    app = create_app(tiny_config(tiny_dir))
    with serve_app(app) as url:
        with httpx.stream("POST", f"{url}{CHAT}", json=body, timeout=60) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection
            assert next(line for line in lines if line.startswith("data: {"))
            assert _in_use(app) == 1
        # leaving the block closed the connection mid-stream
        assert _wait(lambda: _in_use(app) == 0), "the lease is still held after the client left"
        assert _wait(lambda: bool(results)), "the generation did not end"
    assert results[0].finish_reason == "cancelled" and results[0].completion_tokens < 400
    assert len(jobs) == 1 and jobs[0].cancelled
