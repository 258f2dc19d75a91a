"""Prometheus metrics of the gateway, fed from the finished ledger row (served by ``GET /metrics``, http/metrics.py).

One call, ``metrics.observe(row)`` in ``GatewayService.finish``, turns each request's ``LedgerRow`` into
counters and histograms, so the metrics and the ledger can never disagree on what a request was. The
ledger writer's queue depth and write failures are read from the writer (``writer_state``) when a row is
observed and when Prometheus scrapes.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (before the process starts, as
prometheus_client requires) every worker writes its values to files there and a scrape of any worker
sums all of them (``MultiProcessCollector``); the queue-depth gauge sums the live workers. Without it,
each app owns a private registry (several gateways in one process do not mix their numbers).

Key and team labels (``thalamus_key_*``) have a bounded cardinality: the first ``max_keys`` keys (and
``max_keys`` teams) a process sees get their own label value, seeded at start with the busiest keys of the
last 30 days (``seed_keys``), and every later one is counted under ``other``; a series never moves between
labels, so counters stay monotonic. Feedback scores (client and judge, ``source``) are a histogram.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from thalamus.gateway.config.judge import is_judge_source
from thalamus.gateway.stats.aggregates import grouped
from thalamus.gateway.stats.sql import LATENCY_BOUNDS_MS, Filters
from thalamus.ledger.row import LedgerRow

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)  # the stats API's buckets: Grafana and the page agree
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MAX_KEY_LABELS = 50
OTHER = "other"


class BoundedLabels:
    """Label values with a cap: the first ``limit`` distinct values keep their name, the rest are ``other``."""

    def __init__(self, limit: int, seed: list[str] | None = None) -> None:
        self.limit = limit
        self._known: set[str] = set()
        for value in seed or []:
            self(value)

    def __call__(self, value: str | None) -> str:
        name = value if value is not None else "none"
        if name in self._known:
            return name
        if len(self._known) < self.limit and name != OTHER:
            self._known.add(name)
            return name
        return OTHER


def busiest_keys(ledger: Any, limit: int = MAX_KEY_LABELS, days: float = 30) -> list[str]:
    """The API keys with the most requests over the last ``days`` (the key labels' seed); [] when the
    ledger cannot say (a metrics label never stops a gateway from starting)."""
    try:
        rows = grouped(ledger.engine, Filters(since=time.time() - days * 86400), "key")
    except Exception as exc:  # any database failure: start with first-come labels
        log.warning("metrics: could not read the busiest keys for the key labels: %s", type(exc).__name__)
        return []
    ranked = sorted(rows, key=lambda r: -int(r["requests"]))
    return [str(r["key"]) for r in ranked if r["key"] is not None][:limit]


def feedback_source(source: str | None) -> str:
    """The bounded ``source`` label of a feedback score: ``judge`` (the LLM judge) or ``client``."""
    return "judge" if is_judge_source(source) else "client"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def writer_state(writer: Any) -> tuple[int, int]:
    """(rows queued, failed writes so far) of a ledger writer: its ``health()`` when it has one, else the
    queue and the ``failed_batches`` counter. The one place that knows the writer's shape."""
    health = getattr(writer, "health", None)
    if callable(health):
        h = health()
        return int(getattr(h, "queued", 0)), int(getattr(h, "failed", 0))
    queue = getattr(writer, "_queue", None)
    return (queue.qsize() if queue is not None else 0), int(getattr(writer, "failed_batches", 0))


class GatewayMetrics:
    """The gateway's metric families; one per app, owned by its lifespan."""

    def __init__(self, writer: Any = None, max_keys: int = MAX_KEY_LABELS, seed_keys: list[str] | None = None
                 ) -> None:
        self.writer = writer
        self.key_label, self.team_label = BoundedLabels(max_keys, seed_keys), BoundedLabels(max_keys)
        self._failed_seen = 0
        multi = multiprocess_dir() is not None
        # in multiprocess mode values live in the shared files; registering them too would count twice
        self.registry = CollectorRegistry()
        reg = None if multi else self.registry
        labels = ("model", "router")
        self.requests = Counter("thalamus_requests_total", "Requests answered, by the model that answered, "
                                "router and HTTP status", (*labels, "status"), registry=reg)
        self.tokens = Counter("thalamus_tokens_total", "Tokens, prompt or completion", (*labels, "kind"),
                              registry=reg)
        self.cost = Counter("thalamus_cost_usd_total", "Spend in USD", labels, registry=reg)
        self.counterfactual = Counter("thalamus_counterfactual_cost_usd_total", "What the same requests would "
                                      "have cost on the baseline model, USD", labels, registry=reg)
        self.fallbacks = Counter("thalamus_fallbacks_total", "Requests with at least one failed upstream attempt "
                                 "(then retried or sent to another model)", labels, registry=reg)
        self.upstream_failures = Counter("thalamus_upstream_failures_total", "Failed upstream attempts",
                                         ("model", "error"), registry=reg)
        self.routing = Histogram("thalamus_routing_latency_seconds", "Time the router took to decide",
                                 ("router",), buckets=_SECONDS, registry=reg)
        self.ttft = Histogram("thalamus_time_to_first_token_seconds", "Request start to the first byte of the "
                              "answer", ("model",), buckets=_SECONDS, registry=reg)
        self.latency = Histogram("thalamus_request_latency_seconds", "Request start to the end of the answer",
                                 ("model",), buckets=_SECONDS, registry=reg)
        self.overhead = Histogram("thalamus_gateway_overhead_seconds", "Total latency minus the time spent "
                                  "waiting on upstreams", ("model",), buckets=_SECONDS, registry=reg)
        key_labels = ("key", "team")
        self.key_requests = Counter("thalamus_key_requests_total", "Requests per API key and team (at most "
                                    f"{max_keys} of each, the rest under 'other'), by status class",
                                    (*key_labels, "status_class"), registry=reg)
        self.key_cost = Counter("thalamus_key_cost_usd_total", "Spend in USD per API key and team", key_labels,
                                registry=reg)
        self.key_tokens = Counter("thalamus_key_tokens_total", "Tokens (prompt + completion) per API key and team",
                                  key_labels, registry=reg)
        self.feedback = Histogram("thalamus_feedback_score", "Feedback scores in [0, 1], by the model that "
                                  "answered and the source (client or judge)", ("model", "source"),
                                  buckets=SCORE_BUCKETS, registry=reg)
        self.queue = Gauge("thalamus_ledger_queue_depth", "Ledger rows waiting to be written",
                           registry=reg, multiprocess_mode="livesum")
        self.write_failures = Counter("thalamus_ledger_write_failures_total", "Ledger writes that failed after "
                                      "their retries", registry=reg)

    def observe(self, row: LedgerRow, team: str | None = None) -> None:
        """Count one finished request (its row is final: status, tokens, cost, timings)."""
        model, router = row.chosen_model or "none", row.router or "none"
        self._per_key(row, team)
        self.requests.labels(model, router, str(row.status)).inc()
        for kind, value in (("prompt", row.prompt_tokens), ("completion", row.completion_tokens)):
            if value:
                self.tokens.labels(model, router, kind).inc(value)
        if row.cost_usd:
            self.cost.labels(model, router).inc(row.cost_usd)
        if row.baseline_cost_usd:
            self.counterfactual.labels(model, router).inc(row.baseline_cost_usd)
        if row.fallback_chain:
            self.fallbacks.labels(model, router).inc()
        for attempt in row.fallback_chain:
            self.upstream_failures.labels(str(attempt.get("model")), str(attempt.get("error"))).inc()
        self._timings(row, model, router)
        self.sync_writer()

    def _per_key(self, row: LedgerRow, team: str | None) -> None:
        key, team_name = self.key_label(row.api_key_id), self.team_label(team)
        self.key_requests.labels(key, team_name, f"{row.status // 100}xx").inc()
        if row.cost_usd:
            self.key_cost.labels(key, team_name).inc(row.cost_usd)
        tokens = (row.prompt_tokens or 0) + (row.completion_tokens or 0)
        if tokens:
            self.key_tokens.labels(key, team_name).inc(tokens)

    def observe_feedback(self, model: str | None, score: float, source: str | None) -> None:
        """One stored feedback score (client or judge) of a request answered by ``model``."""
        self.feedback.labels(model or "none", feedback_source(source)).observe(score)

    def _timings(self, row: LedgerRow, model: str, router: str) -> None:
        if row.routing_ms is not None:
            self.routing.labels(router).observe(row.routing_ms / 1000)
        if row.ttft_ms is not None:
            self.ttft.labels(model).observe(row.ttft_ms / 1000)
        if row.total_ms is not None:
            self.latency.labels(model).observe(row.total_ms / 1000)
            if row.upstream_ms is not None:
                self.overhead.labels(model).observe(max(row.total_ms - row.upstream_ms, 0.0) / 1000)

    def sync_writer(self) -> None:
        """Copy the writer's queue depth and new write failures into the metrics."""
        if self.writer is None:
            return
        queued, failed = writer_state(self.writer)
        self.queue.set(queued)
        if failed > self._failed_seen:
            self.write_failures.inc(failed - self._failed_seen)
            self._failed_seen = failed

    def scrape(self) -> bytes:
        """The Prometheus text of this app (of every worker, in multiprocess mode)."""
        self.sync_writer()
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
        return generate_latest(registry)
