"""Micro-batching: concurrent ``embed`` calls from many threads share one forward pass.

The gateway routes each request in a worker thread (``router.route`` via ``asyncio.to_thread``),
so under load many threads embed one prompt each at the same moment. A transformer encoder costs
far less per text in one batch of 32 than in 32 batches of one; ``BatchingEmbedder`` wraps an
embedder so that those calls are gathered and embedded together, each caller receiving its own
rows. It is a drop-in Embedder (same ``id``, same vectors), so routers need no change.

One background thread does the embedding. It takes the first waiting call and, only when calls are
arriving concurrently (the last batch held more than one call, or another is already queued), waits
up to ``window_ms`` for more, up to ``max_texts`` texts: a lone request is never delayed by the
window. An exception in a batch is raised in every caller of that batch; the thread carries on.
``window_ms=0`` gathers only the calls already queued.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from thalamus.errors import ConfigError
from thalamus.router.embedders import Embedder

if TYPE_CHECKING:
    from thalamus.router.base import Router


@dataclass
class _Call:
    texts: list[str]
    result: Future[np.ndarray] = field(default_factory=Future)


class BatchingEmbedder:
    """Gathers concurrent ``embed`` calls (from any threads) into one call of ``inner``."""

    def __init__(self, inner: Embedder, window_ms: float = 2.0, max_texts: int = 64) -> None:
        if window_ms < 0 or max_texts < 1:
            raise ConfigError(f"batching: window_ms must be >= 0 and max_texts >= 1, got {window_ms}, {max_texts}")
        self.inner = inner
        self.id, self.dim = inner.id, inner.dim
        self.window_s = window_ms / 1000.0
        self.max_texts = max_texts
        self.calls = 0  # how many inner.embed calls were made (for metrics and tests)
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._busy = False  # the last batch held more than one call: requests are arriving together
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"embed-batcher-{inner.id}", daemon=True)
        self._thread.start()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._closed:
            raise ConfigError(f"batching embedder {self.id!r} is closed")
        call = _Call(list(texts))
        if not call.texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._queue.put(call)
        return call.result.result()

    def close(self) -> None:
        """Stop the thread after the calls already queued; later calls raise."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._embed(batch)
            if stop:
                return

    def _gather(self, first: _Call) -> tuple[list[_Call], bool]:
        """``first`` plus the calls that arrive within the window (see the module docstring)."""
        batch, n = [first], len(first.texts)
        deadline = time.monotonic() + (self.window_s if self._busy else 0.0)
        while n < self.max_texts:
            remaining = deadline - time.monotonic()
            try:
                call = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if call is None:
                return batch, True
            if len(batch) == 1 and not self._busy:  # a second caller is here: wait the window for more
                deadline = time.monotonic() + self.window_s
            batch.append(call)
            n += len(call.texts)
        self._busy = len(batch) > 1
        return batch, False

    def _embed(self, batch: list[_Call]) -> None:
        texts = [t for call in batch for t in call.texts]
        try:
            vectors = np.asarray(self.inner.embed(texts), dtype=np.float32)
        except BaseException as exc:  # every caller of this batch sees the failure; the thread lives on
            for call in batch:
                call.result.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.calls += 1
        start = 0
        for call in batch:
            call.result.set_result(vectors[start : start + len(call.texts)])
            start += len(call.texts)


def attach_batching(routers: Sequence[Router], window_ms: float, max_texts: int = 64) -> list[BatchingEmbedder]:
    """Give every embedding router a batching wrapper, one per embedder id, shared by the routers
    that embed alike. Embedders with ``batchable = False`` (a lookup table) are left as they are.
    Returns the wrappers, for the caller to ``close`` at shutdown."""
    wrappers: dict[str, BatchingEmbedder] = {}
    for router in routers:
        if not router.uses_embeddings:
            continue
        inner = router.embedder_in_use()
        if not getattr(inner, "batchable", True):
            continue
        if inner.id not in wrappers:
            wrappers[inner.id] = BatchingEmbedder(inner, window_ms, max_texts)
        router.use_embedder(wrappers[inner.id])
    return list(wrappers.values())
