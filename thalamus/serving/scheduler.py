"""Continuous (iteration-level) batching: requests join the running batch at the next decoding step.

Between two steps the generation thread takes what has arrived, up to ``max_batch`` rows in all, prefills
the newcomers together and merges them into the running batch (:meth:`Batch.merge`: their KV rows are
left-padded to the batch's width); finished rows leave at the step that finishes them. A newcomer's first
token therefore waits for at most one step of the running batch plus its own prefill, not for the batch
to end. When the thread is idle, the first request still opens a ``batch_window_ms`` window, so a burst
that arrives together is prefilled together.

Failure isolation: a prefill that raises is retried one request at a time, so only the request at fault
fails and the running batch is untouched. A decoding step that raises fails the rows of the running batch
(each has streamed tokens, so running it again would repeat its text); the thread goes on serving.
"""

from __future__ import annotations

import queue
import time
from collections import deque

from thalamus.serving.engine import Engine, Job
from thalamus.serving.jobqueue import JobQueue, WorkerHooks, drop_job, expire, fail_job
from thalamus.serving.kvbatch import Batch


class ContinuousScheduler:
    """The loop of one model's generation thread in continuous mode."""

    def __init__(self, engine: Engine, jobs: JobQueue, hooks: WorkerHooks, window_s: float, max_batch: int,
                 queue_timeout_s: float) -> None:
        self.engine, self.jobs, self.hooks = engine, jobs, hooks
        self.window_s, self.max_batch, self.queue_timeout_s = window_s, max_batch, queue_timeout_s
        self.waiting: deque[Job] = deque()  # taken from the queue, not yet admitted (the batch was full)
        self.running: Batch | None = None
        self.stopping = False

    def run(self) -> None:
        """Serve until the stop mark arrives and everything before it has finished."""
        while True:
            idle = self.running is None and not self.waiting
            if idle and (self.stopping or not self._wait_idle()):
                return
            self._drain()
            newcomers = self._admit()
            if newcomers:
                self._join(self._prefill(newcomers))
            if self.running is not None:
                self._step()

    def _wait_idle(self) -> bool:
        """Block for the next job, then gather for the window; False on the stop mark."""
        first = self.jobs.get()
        if first is None:
            return False
        self.waiting.append(first)
        deadline = time.monotonic() + self.window_s
        while len(self.waiting) < self.max_batch:
            try:
                job = self.jobs.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if job is None:
                self.stopping = True
                break
            self.waiting.append(job)
        return True

    def _drain(self) -> None:
        """Move whatever has arrived into ``waiting`` without blocking."""
        while not self.stopping:
            try:
                job = self.jobs.get(timeout=0)
            except queue.Empty:
                return
            if job is None:
                self.stopping = True
            else:
                self.waiting.append(job)

    def _admit(self) -> list[Job]:
        """Take waiting jobs into the free rows; end the cancelled and timed-out ones."""
        for job in list(self.waiting):
            if job.cancelled or expire(job, self.queue_timeout_s, self.hooks):
                self.waiting.remove(job)
                self.jobs.left(job)
                drop_job(job)  # no-op for a timed-out job (already failed)
        room = self.max_batch - (len(self.running.rows) if self.running is not None else 0)
        admitted = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
        for job in admitted:
            self.jobs.left(job)
        return admitted

    def _prefill(self, jobs: list[Job]) -> Batch | None:
        self.hooks.on_batch(len(jobs))
        try:
            return self.engine.prefill(jobs)
        except Exception as exc:  # whatever failed, the thread keeps serving
            return self._isolate(jobs, exc)

    def _isolate(self, jobs: list[Job], exc: Exception) -> Batch | None:
        """``jobs`` failed together with ``exc``: prefill each alone, so only the guilty one fails."""
        if len(jobs) == 1:
            fail_job(jobs[0], exc)
            return None
        self.hooks.on_retry(len(jobs))
        merged: Batch | None = None
        for job in jobs:
            if job.started:
                fail_job(job, exc)
                continue
            if job.done or job.cancelled:
                drop_job(job)
                continue
            try:
                alone = self.engine.prefill([job])
            except Exception as own:  # its own failure, answered to it alone
                fail_job(job, own)
                continue
            merged = _merged(merged, alone)
        return merged

    def _join(self, batch: Batch | None) -> None:
        if batch is None or not batch.rows:
            return
        if self.running is None:
            self.running = batch
        else:
            self.running.merge(batch)
            self.hooks.on_join(len(batch.rows))
        self.hooks.on_running(len(self.running.rows))

    def _step(self) -> None:
        assert self.running is not None
        try:
            self.engine.step(self.running)
        except Exception as exc:  # the cache may be half-updated: nothing of this batch can go on
            for row in self.running.rows:
                fail_job(row.job, exc)
            self.running.rows = []
        if not self.running.rows:
            self.running = None
        self.hooks.on_running(len(self.running.rows) if self.running is not None else 0)


def _merged(into: Batch | None, batch: Batch) -> Batch | None:
    if not batch.rows:
        return into
    if into is None:
        return batch
    into.merge(batch)
    return into
