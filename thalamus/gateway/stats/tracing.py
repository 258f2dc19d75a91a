"""OpenTelemetry traces of the gateway: one span per request, its routing decision and every upstream try.

The span tree of one request (``core/service.py``, ``core/routing.py``, ``core/attempts.py``)::

    thalamus.request            SERVER span: request id, key, team, requested / chosen model, status, cost
      thalamus.route            the router's decision: router, knob, chosen model, predicted quality, candidates
      thalamus.attempt          the first candidate's tries (thalamus.attempt.number 1, 2, ...)
      thalamus.fallback         a try on a later candidate (the router's next choice, a configured fallback)

Exporting follows the standard ``OTEL_*`` environment variables, read when the app starts:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (setting one turns OTLP on), their ``_HEADERS`` / ``_TIMEOUT``,
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_BSP_*``;
``OTEL_SDK_DISABLED=true`` turns everything off. With none of them set the gateway builds no exporter and
uses the process's global tracer provider when something (``opentelemetry-instrument``) set one before the
app started; otherwise requests build no spans at all.
The provider the gateway builds belongs to its app (closed by the lifespan); the global one is never replaced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from thalamus.errors import ConfigError
from thalamus.ledger.row import LedgerRow

TRACER_NAME = "thalamus.gateway"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
Attrs = Mapping[str, str | bool | int | float]


def exporter_name(env: Mapping[str, str] | None = None) -> str | None:
    """The trace exporter the ``OTEL_*`` variables ask for: ``otlp``, ``console`` or None (none)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        return "otlp" if any(env.get(v) for v in _ENDPOINTS) else None
    if names == ["none"]:
        return None
    unknown = [n for n in names if n not in ("otlp", "console")]
    if unknown or len(names) > 1:
        raise ConfigError(f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: the gateway exports to one of "
                          "'otlp', 'console' or 'none'")
    return names[0]


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    if protocol not in ("", "http/protobuf"):
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the gateway ships the OTLP exporter over "
                          "HTTP ('http/protobuf'); point it at the collector's HTTP port (4318)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout and compression from the OTEL_* variables


def provider_from_env(env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider exporting as the ``OTEL_*`` variables say, or None when they ask for no exporter."""
    env = os.environ if env is None else env
    name = exporter_name(env)
    if name is None:
        return None
    exporter = _otlp_exporter(env) if name == "otlp" else ConsoleSpanExporter()
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "thalamus-gateway"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracer_for(provider: trace.TracerProvider | None) -> Tracer | None:
    """The gateway's tracer on ``provider``, else on the global provider when one was set before the app
    started (``opentelemetry-instrument``); None when nothing would record: requests then build no spans at
    all (a no-op span tree still costs time: benchmarks/results/tracing_overhead.md)."""
    chosen = provider or trace.get_tracer_provider()
    if isinstance(chosen, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return chosen.get_tracer(TRACER_NAME)


class RequestTrace:
    """The span of one request and the parent of its children; ended once, by ``end`` (at the row's finish)."""

    def __init__(self, tracer: Tracer, endpoint: str) -> None:
        self.tracer = tracer
        self.span: Span = tracer.start_span("thalamus.request", kind=SpanKind.SERVER,
                                            attributes={"thalamus.endpoint": endpoint})
        self.context = trace.set_span_in_context(self.span)

    @contextlib.contextmanager
    def child(self, name: str, attributes: Attrs) -> Iterator[Span]:
        """A child span of the request; an exception leaving it marks it failed (and goes on)."""
        with self.tracer.start_as_current_span(name, context=self.context, attributes=attributes,
                                               record_exception=True, set_status_on_exception=True) as span:
            yield span

    def end(self, row: LedgerRow, team: str | None) -> None:
        span = self.span
        if not span.is_recording():
            return
        span.set_attributes(request_attributes(row, team))
        if row.status >= 500:
            span.set_status(Status(StatusCode.ERROR, row.error_type or str(row.status)))
        span.end()


def request_attributes(row: LedgerRow, team: str | None) -> dict[str, Any]:
    """The request span's attributes, from the finished row (what the client saw)."""
    values: dict[str, Any] = {
        "thalamus.request_id": row.id, "thalamus.key": row.api_key_id, "thalamus.team": team,
        "gen_ai.request.model": row.requested_model, "gen_ai.response.model": row.chosen_model,
        "thalamus.router": row.router, "http.response.status_code": row.status,
        "thalamus.error": row.error_type, "thalamus.cost_usd": row.cost_usd,
        "gen_ai.usage.input_tokens": row.prompt_tokens, "gen_ai.usage.output_tokens": row.completion_tokens,
        "thalamus.fallback": bool(row.fallback_chain), "thalamus.upstream_failures": len(row.fallback_chain),
        "thalamus.stream": row.stream, "thalamus.cache": row.cache, "thalamus.total_ms": row.total_ms,
    }
    return {k: v for k, v in values.items() if v is not None}


def set_error(span: Span, status: int, code: str | None, message: str) -> None:
    """Mark an upstream try failed: its status and code as attributes, the span's status ERROR."""
    span.set_attributes({"http.response.status_code": status, "thalamus.error": code or "upstream_error"})
    span.set_status(Status(StatusCode.ERROR, message[:200]))
