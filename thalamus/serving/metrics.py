"""Prometheus metrics of the local server, in a registry owned by the app (never the global one).

Requests, tokens, time to first token, decode speed, batch sizes, running rows and joins, queues (depth,
waits, rejections), the model pool (loaded models, bytes,
load/unload/switch times) and, for MoE models, tokens routed to each expert of each layer and, when
the experts are offloaded, the expert cache's hits, misses, prefetch hits and bytes read from disk.
"""

from __future__ import annotations

import resource
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from thalamus.engine_metrics import TORCH_PREFIX

PREFIX = TORCH_PREFIX  # one spelling, shared with the gateway's parser of engine metrics
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RATES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_BATCH = (1, 2, 4, 8, 16, 32, 64)


class ServingMetrics:
    """Every metric the server exports; one instance per app."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "Chat completion requests by outcome",
                                ["model", "status"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens", "Tokens generated", ["model"],
                                         registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Queueing plus prefill time",
                              ["model"], buckets=_SECONDS, registry=r)
        self.tokens_per_second = Histogram(f"{PREFIX}_decode_tokens_per_second",
                                           "Per-request decode speed after the first token", ["model"],
                                           buckets=_RATES, registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Requests generated together", ["model"],
                                    buckets=_BATCH, registry=r)
        self.batch_retries = Counter(f"{PREFIX}_batch_retries", "Failed batches whose requests were retried "
                                     "one by one", ["model"], registry=r)
        self.finished = Counter(f"{PREFIX}_finished", "Generations ended, by finish reason (cancelled: the "
                                "client left)", ["model", "reason"], registry=r)
        self._pool_metrics(r)
        self._queue_metrics(r)
        self.expert_tokens = Counter(f"{PREFIX}_expert_tokens", "Tokens routed to each expert (MoE models)",
                                     ["model", "layer", "expert"], registry=r)
        self._offload_metrics(r)

    def _offload_metrics(self, r: CollectorRegistry) -> None:
        def counter(name: str, text: str) -> Counter:
            return Counter(f"{PREFIX}_expert_cache_{name}", text, ["model"], registry=r)

        self.expert_hits = counter("hits", "Experts a forward pass found resident (offloaded MoE models)")
        self.expert_misses = counter("misses", "Experts read from disk on demand")
        self.expert_prefetch_hits = counter("prefetch_hits", "Experts in memory because a prefetch read them")
        self.expert_prefetches = counter("prefetches", "Experts read ahead of need (predict policy)")
        self.expert_bytes_loaded = counter("bytes_loaded", "Bytes of experts read from disk (on demand and "
                                           "prefetched)")

    def record_offload(self, model: str, delta: Any) -> None:
        """Account one forward pass of an offloaded model (an ``OffloadStats`` delta)."""
        for metric, value in ((self.expert_hits, delta.hits), (self.expert_misses, delta.misses),
                              (self.expert_prefetch_hits, delta.prefetch_hits),
                              (self.expert_prefetches, delta.prefetches),
                              (self.expert_bytes_loaded, delta.bytes_loaded)):
            if value > 0:  # a pass cut short by an error settles its prefetches in the next one
                metric.labels(model).inc(value)

    def _pool_metrics(self, r: CollectorRegistry) -> None:
        self.loaded_models = Gauge(f"{PREFIX}_loaded_models", "Models held in memory", registry=r)
        self.model_bytes = Gauge(f"{PREFIX}_model_memory_bytes", "Weight bytes of a loaded model", ["model"],
                                 registry=r)
        self.pool_bytes = Gauge(f"{PREFIX}_pool_memory_bytes", "Weight bytes of all loaded models", registry=r)
        self.budget_bytes = Gauge(f"{PREFIX}_pool_budget_bytes", "Memory budget of the model pool", registry=r)
        self.max_rss_bytes = Gauge(f"{PREFIX}_process_max_rss_bytes", "Peak resident memory of the server",
                                   registry=r)
        self.load_seconds = Histogram(f"{PREFIX}_model_load_seconds", "Time to load a model", ["model"],
                                      buckets=_SECONDS, registry=r)
        self.unload_seconds = Histogram(f"{PREFIX}_model_unload_seconds", "Time to unload a model", ["model"],
                                        buckets=_SECONDS, registry=r)
        self.switch_seconds = Histogram(f"{PREFIX}_model_switch_seconds",
                                        "Evicting other models plus loading this one", ["model"],
                                        buckets=_SECONDS, registry=r)
        self.evictions = Counter(f"{PREFIX}_model_evictions", "Models evicted to make room", ["model"],
                                 registry=r)

    def _queue_metrics(self, r: CollectorRegistry) -> None:
        self.running = Gauge(f"{PREFIX}_running_requests", "Rows in the model's running batch", ["model"],
                             registry=r)
        self.batch_joins = Counter(f"{PREFIX}_batch_joins", "Requests that joined a batch already decoding "
                                   "(continuous batching)", ["model"], registry=r)
        self.queued = Gauge(f"{PREFIX}_queued_requests", "Requests waiting (queue=batch: for a batch slot; "
                            "queue=memory: for room in the memory budget)", ["model", "queue"], registry=r)
        self.queue_wait = Histogram(f"{PREFIX}_queue_wait_seconds", "Time a request waited in a queue",
                                    ["model", "queue"], buckets=_SECONDS, registry=r)
        self.queue_rejections = Counter(f"{PREFIX}_queue_rejections", "Requests answered 503 by a queue "
                                        "(reason=full: at once; reason=timeout: after queue_timeout_s)",
                                        ["model", "queue", "reason"], registry=r)

    def record_finish(self, model: str, result: Any) -> None:
        """Account one finished generation (an engine ``Finished``); called in the generation thread.

        Cancelled generations count their tokens (the work was done) but not toward latency and speed.
        """
        self.finished.labels(model, result.finish_reason).inc()
        if result.finish_reason == "cancelled" and not result.completion_tokens:
            return  # dropped before its prefill: no work was done
        self.prompt_tokens.labels(model).inc(result.prompt_tokens)
        self.completion_tokens.labels(model).inc(result.completion_tokens)
        if result.finish_reason == "cancelled":
            return
        self.ttft.labels(model).observe(result.ttft_s)
        if result.completion_tokens > 1 and result.decode_s > 0:
            self.tokens_per_second.labels(model).observe((result.completion_tokens - 1) / result.decode_s)
        load = result.expert_load
        if load:
            for layer, counts in enumerate(load["layers"]):
                for expert, n in enumerate(counts):
                    if n:
                        self.expert_tokens.labels(model, str(layer), str(expert)).inc(n)

    def render(self) -> bytes:
        # ru_maxrss is in KiB on Linux
        self.max_rss_bytes.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return generate_latest(self.registry)
