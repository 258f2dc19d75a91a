"""One generation thread per loaded model, batching its requests continuously or by window.

``batch_mode: continuous`` (the default, :mod:`thalamus.serving.scheduler`): requests join the running
batch at the next decoding step and leave it when done. ``batch_mode: window``: the first queued request
opens a short window (``batch_window_ms``); whatever else arrives within it, up to ``max_batch_size``, is
generated together to the end, and later requests wait for the next window. With batching off, the window
is zero and the batch size one, which is plain one-at-a-time serving. A model whose KV cache cannot be
padded and stacked (sliding-window layers) is served by window. Generation runs in this thread, never on
the event loop, so health checks and other models stay responsive; events go back to the loop through
:class:`QueueSink`.

One bad request must not fail its batch mates: when a window batch fails, each of its requests that has
not yet produced a token is generated again on its own, so only the request at fault gets the error. A
request that already streamed tokens gets the error too, since running it again would repeat its text.
Every job ends with exactly one event (finish or fail), also a job cancelled while it was still queued.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from thalamus.serving.engine import Engine, Finished, Job
from thalamus.serving.jobqueue import JobQueue, WorkerHooks, drop_job, expire, fail_job
from thalamus.serving.scheduler import ContinuousScheduler

MODES = ("continuous", "window")


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

    def __init__(self, engine: Engine, name: str, window_s: float, max_batch: int, *,
                 mode: str = "continuous", queue_timeout_s: float = 30.0,
                 hooks: WorkerHooks | None = None, threads: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"batch mode {mode!r} is not one of {MODES}")
        self.engine = engine
        self.window_s = window_s
        self.max_batch = max_batch
        self.queue_timeout_s = queue_timeout_s
        self.hooks = hooks or WorkerHooks()
        self.mode = mode if mode == "window" or engine.can_join() else "window"
        self.jobs = JobQueue(self.hooks)
        self.threads = threads
        self.torch_threads = 0  # what the generation thread runs with, once it has started
        self.thread = threading.Thread(target=self._loop, name=f"thalamus-generate-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def queued(self) -> int:
        """Jobs waiting for a batch (submitted, not yet admitted)."""
        return self.jobs.waiting()

    def stop(self) -> None:
        """Finish the batch in progress, then end the thread."""
        self.jobs.put(None)
        self.thread.join()

    def _loop(self) -> None:
        import torch

        if self.threads:  # torch's thread count is per OS thread: set it where the decoding runs
            torch.set_num_threads(self.threads)
        self.torch_threads = torch.get_num_threads()
        if self.mode == "continuous":
            ContinuousScheduler(self.engine, self.jobs, self.hooks, self.window_s, self.max_batch,
                                self.queue_timeout_s).run()
            return
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
                job = self.jobs.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self, batch: list[Job]) -> None:
        for job in batch:
            self.jobs.left(job)
            if job.cancelled:
                drop_job(job)
        live = [job for job in batch if not job.done and not expire(job, self.queue_timeout_s, self.hooks)]
        if not live:
            return
        self.hooks.on_batch(len(live))
        self.hooks.on_running(len(live))
        try:
            self.engine.run(live)
        except Exception as exc:  # whatever failed, the thread keeps serving
            self._isolate(live, exc)
        self.hooks.on_running(0)

    def _isolate(self, batch: list[Job], exc: Exception) -> None:
        """After ``batch`` failed with ``exc``: run its unstarted jobs alone, so only the guilty one fails."""
        pending = [job for job in batch if not job.done]
        if len(batch) > 1 and pending:
            self.hooks.on_retry(len(batch))
        for job in pending:
            if job.cancelled:
                drop_job(job)
            elif len(batch) == 1 or job.started:
                fail_job(job, exc)
            else:
                try:
                    self.engine.run([job])
                except Exception as alone:  # its own failure, answered to it alone
                    fail_job(job, alone)
