"""What both batching modes share: the queue of jobs waiting for a model's generation thread, its bound and
timeout, the worker's metric hooks, and how a job that will never generate is ended.

A job waits from ``submit`` until a batch admits it (or it is dropped). The queue counts those jobs, so the
HTTP layer can answer 503 at once when ``max_queued`` already wait; a job that waited longer than
``queue_timeout_s`` is answered with a 503 when the worker next looks at it. Both 503s carry Retry-After.
Every job ends with exactly one event: finish (also "cancelled") or fail.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from thalamus.serving.engine import Finished, Job
from thalamus.serving.protocol import BusyError


def _ignore(value: float) -> None:
    """Default hook: no metrics."""


@dataclass(frozen=True)
class WorkerHooks:
    """Metric callbacks of one model's worker; each runs in the generation thread."""

    on_batch: Callable[[float], None] = _ignore  # n requests prefilled together
    on_retry: Callable[[float], None] = _ignore  # a failed batch of n requests is retried one by one
    on_join: Callable[[float], None] = _ignore  # n requests joined a batch that was already decoding
    on_running: Callable[[float], None] = _ignore  # rows in the running batch now
    on_queued: Callable[[float], None] = _ignore  # jobs waiting for a batch now
    on_wait: Callable[[float], None] = _ignore  # seconds a job waited before its batch admitted it
    on_timeout: Callable[[float], None] = _ignore  # a job timed out in the queue (value 1)


class JobQueue:
    """Jobs (and the ``None`` stop mark) handed to a generation thread, with a count of those still waiting."""

    def __init__(self, hooks: WorkerHooks) -> None:
        self.hooks = hooks
        self.items: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0

    def put(self, job: Job | None) -> None:
        if job is not None:
            self._count(1)
        self.items.put(job)

    def get(self, timeout: float | None = None) -> Job | None:
        """The next item; raises queue.Empty after ``timeout`` seconds (0: do not wait)."""
        if timeout is not None and timeout <= 0:
            return self.items.get_nowait()
        return self.items.get(timeout=timeout)

    def waiting(self) -> int:
        """Jobs submitted and not yet admitted to a batch, dropped or timed out."""
        return self._waiting

    def left(self, job: Job) -> None:
        """``job`` stopped waiting (admitted, dropped or timed out)."""
        self._count(-1)
        self.hooks.on_wait(time.perf_counter() - job.enqueued_at)

    def _count(self, delta: int) -> None:
        with self._lock:  # the gauge is set under the lock too, so two threads never publish out of order
            self._waiting += delta
            self.hooks.on_queued(self._waiting)


def expire(job: Job, limit_s: float, hooks: WorkerHooks) -> bool:
    """Answer ``job`` with a 503 if it waited more than ``limit_s`` seconds; True when it did."""
    waited = time.perf_counter() - job.enqueued_at
    if waited <= limit_s or job.done:
        return False
    hooks.on_timeout(1)
    fail_job(job, BusyError(f"the request waited {waited:.1f} s for a free batch slot, longer than the "
                            f"server's queue_timeout_s={limit_s:g}; retry later", code="queue_timeout"))
    return True


def fail_job(job: Job, exc: BaseException) -> None:
    if not job.done:
        job.done = True
        job.sink.fail(exc)


def drop_job(job: Job) -> None:
    """End a job cancelled before it generated anything, so its waiter hears back."""
    if not job.done:
        job.done = True
        job.sink.finish(Finished("cancelled", len(job.prompt_ids), 0, ttft_s=0.0, decode_s=0.0))
