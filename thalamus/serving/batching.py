"""Dynamic batching: one generation thread per loaded model gathers queued requests into batches.

The first queued request opens a short window (``batch_window_ms``); whatever else arrives for the same
model within it, up to ``max_batch_size``, is generated together. With batching off, the window is zero
and the batch size one, which is plain one-at-a-time serving. Generation runs in this thread, never on the
event loop, so health checks and other models stay responsive; events go back to the loop through
:class:`QueueSink`.
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

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def _put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def delta(self, text: str) -> None:
        self._put("delta", text)

    def finish(self, result: Finished) -> None:
        self._put("finish", result)

    def fail(self, exc: BaseException) -> None:
        self._put("error", exc)


class BatchWorker:
    """Owns the generation thread of one loaded model."""

    def __init__(self, engine: Engine, name: str, window_s: float, max_batch: int,
                 on_batch: Callable[[int], None] = lambda n: None) -> None:
        self.engine = engine
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
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
        if not live:
            return
        self.on_batch(len(live))
        try:
            self.engine.run(live)
        except Exception as exc:  # a failed batch fails its requests; the thread keeps serving
            for job in live:
                if not job.done:
                    job.done = True
                    job.sink.fail(exc)
