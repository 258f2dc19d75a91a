"""Dynamic batching: one generation thread per loaded model gathers queued requests into batches.

The first queued request opens a short window (``batch_window_ms``); whatever else arrives for the same
model within it, up to ``max_batch_size``, is generated together. With batching off, the window is zero
and the batch size one, which is plain one-at-a-time serving. Generation runs in this thread, never on the
event loop, so health checks and other models stay responsive; events go back to the loop through
:class:`QueueSink`.

One bad request must not fail its batch mates: when a batch fails, each of its requests that has not yet
produced a token is generated again on its own, so only the request at fault gets the error. A request
that already streamed tokens gets the error too, since running it again would repeat its text. Every job
ends with exactly one event (finish or fail), also a job cancelled while it was still queued.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from thalamus.serving.engine import Engine, Finished, Job


class QueueSink:
    """Carries a request's events from the generation thread to an asyncio queue on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_finish: Callable[[Finished], None] = lambda result: None) -> None:
        self.loop = loop
        self.on_finish = on_finish  # runs in the generation thread: accounting that must not need the loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def _put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def delta(self, text: str) -> None:
        self._put("delta", text)

    def finish(self, result: Finished) -> None:
        self.on_finish(result)
        self._put("finish", result)

    def fail(self, exc: BaseException) -> None:
        self._put("error", exc)


class BatchWorker:
    """Owns the generation thread of one loaded model."""

    def __init__(self, engine: Engine, name: str, window_s: float, max_batch: int,
                 on_batch: Callable[[int], None] = lambda n: None,
                 on_retry: Callable[[int], None] = lambda n: None) -> None:
        self.engine = engine
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.on_retry = on_retry  # a failed batch of n requests is retried one by one
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"thalamus-generate-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        """Finish the batch in progress, then end the thread."""
        self.jobs.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch, stopping = self._gather(first)
            self._run(batch)
            if stopping:
                return

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                remaining = deadline - time.monotonic()
                job = self.jobs.get(timeout=remaining) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self, batch: list[Job]) -> None:
        live = [job for job in batch if not job.cancelled]
        for job in batch:
            if job.cancelled:
                _drop(job)
        if not live:
            return
        self.on_batch(len(live))
        try:
            self.engine.run(live)
        except Exception as exc:  # whatever failed, the thread keeps serving
            self._isolate(live, exc)

    def _isolate(self, batch: list[Job], exc: Exception) -> None:
        """After ``batch`` failed with ``exc``: run its unstarted jobs alone, so only the guilty one fails."""
        pending = [job for job in batch if not job.done]
        if len(batch) > 1 and pending:
            self.on_retry(len(batch))
        for job in pending:
            if job.cancelled:
                _drop(job)
            elif len(batch) == 1 or job.started:
                _fail(job, exc)
            else:
                try:
                    self.engine.run([job])
                except Exception as alone:  # its own failure, answered to it alone
                    _fail(job, alone)


def _fail(job: Job, exc: BaseException) -> None:
    if not job.done:
        job.done = True
        job.sink.fail(exc)


def _drop(job: Job) -> None:
    """End a job cancelled before it generated anything, so its waiter hears back."""
    if not job.done:
        job.done = True
        job.sink.finish(Finished("cancelled", len(job.prompt_ids), 0, ttft_s=0.0, decode_s=0.0))
