"""How busy a local engine is, read from its Prometheus ``/metrics`` text into one typed record per model.

Load-aware routing needs, per model, the requests decoding now, the requests waiting, and (vLLM) how
full the KV cache is. vLLM publishes ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (a 0-1 fraction) labelled by ``model_name``; serve-local publishes
``thalamus_serving_running_requests`` and ``thalamus_serving_queued_requests`` (queue=batch|memory)
labelled by ``model``. :func:`parse_load` reads either; the gateway's polling and pricing of the wait
(gateway/learning/pool_state.py, pool_aware.py) use these records. It sits below both the gateway and
the local server (which may not import each other) so that both read the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV = "vllm:kv_cache_usage_perc"
TORCH_PREFIX = "thalamus_serving"  # the prefix of serve-local's metric names (serving/metrics.py uses it)
TORCH_RUNNING = f"{TORCH_PREFIX}_running_requests"
TORCH_QUEUED = f"{TORCH_PREFIX}_queued_requests"


@dataclass(frozen=True)
class EngineLoad:
    """One model's load: requests decoding, requests queued, KV-cache use (0-1; None where not published)."""

    model: str
    engine: str  # "vllm" | "torch"
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float | None = None

    @property
    def in_flight(self) -> float:
        return self.running + self.waiting


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    try:
        return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
                for s in family.samples]
    except ValueError as exc:
        raise ValueError(f"engine /metrics is not Prometheus text: {exc}") from exc


def parse_load(text: str) -> dict[str, EngineLoad]:
    """Per-model load from a vLLM or serve-local ``/metrics`` body (both engines' names are read)."""
    fields: dict[tuple[str, str], dict[str, float]] = {}
    for name, labels, value in _samples(text):
        if name in (VLLM_RUNNING, VLLM_WAITING, VLLM_KV):
            key, field = (labels.get("model_name", ""), "vllm"), name
        elif name in (TORCH_RUNNING, TORCH_QUEUED):
            key, field = (labels.get("model", ""), "torch"), name
        else:
            continue
        slot = fields.setdefault(key, {})
        if field == VLLM_KV:  # several data-parallel engines: the fullest cache is the one that stalls
            slot[field] = max(slot.get(field, 0.0), value)
        else:  # requests of several engines, or of both serve-local queues, add up
            slot[field] = slot.get(field, 0.0) + value
    return {model: _record(model, engine, values) for (model, engine), values in fields.items()}


def _record(model: str, engine: str, values: dict[str, float]) -> EngineLoad:
    if engine == "vllm":
        return EngineLoad(model, engine, values.get(VLLM_RUNNING, 0.0), values.get(VLLM_WAITING, 0.0),
                          values.get(VLLM_KV))
    return EngineLoad(model, engine, values.get(TORCH_RUNNING, 0.0), values.get(TORCH_QUEUED, 0.0))
