"""What a request's span tree costs the gateway, in process: the spans one routed request builds (the request
span, ``thalamus.route``, one ``thalamus.attempt``) and their end, timed per request.

Three set-ups, interleaved round by round so drift on a shared machine hits all alike:
- ``off``: no provider (no ``OTEL_*`` exporter, no global provider): the gateway builds no spans (``tracer_for``
  returns None), so the cost is the ``call.trace is None`` checks;
- ``noop``: the API's no-op tracer (what the gateway would pay had it kept a span tree with tracing off);
- ``sdk``: the SDK with a ``BatchSpanProcessor`` and an exporter that drops the spans (the in-process cost of
  tracing on; the export runs in the processor's thread).

    .venv/bin/python benchmarks/tracing_overhead.py [--n 20000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_report import command, load_average, utc_now, write
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from thalamus.gateway.stats.tracing import RequestTrace, tracer_for
from thalamus.ledger.row import LedgerRow

ROOT = Path(__file__).resolve().parent.parent
ROW = LedgerRow(id="thl-bench", created_at=0.0, status=200, requested_model="auto", chosen_model="weak",
                router="best", cost_usd=3e-6, prompt_tokens=14, completion_tokens=9, total_ms=31.0)


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def one_request(tracer: trace.Tracer | None) -> None:
    """The span work of one routed request, as core/service.py, routing.py and attempts.py do it."""
    rt = RequestTrace(tracer, "/chat/completions") if tracer is not None else None
    if rt is not None:
        with rt.child("thalamus.route", {"thalamus.router": "best"}) as span:
            span.set_attributes({"thalamus.chosen_model": "weak", "thalamus.candidates": 3,
                                 "thalamus.predicted_quality": 0.8, "thalamus.knob": '{"kind": "lambda"}'})
        with rt.child("thalamus.attempt", {"thalamus.model": "weak", "thalamus.attempt.number": 1,
                                           "thalamus.fallback": False}):
            pass
        rt.end(ROW, None)


def run(n: int) -> dict[str, Any]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=65536))
    setups = {"off": tracer_for(None), "noop": trace.NoOpTracer(), "sdk": tracer_for(provider)}
    assert setups["off"] is None and setups["sdk"] is not None
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(n):
        for name, tracer in setups.items():
            t0 = time.perf_counter()
            one_request(tracer)
            times[name].append((time.perf_counter() - t0) * 1e6)
    provider.shutdown()
    return {name: {"p50_us": float(np.percentile(v, 50)), "p99_us": float(np.percentile(v, 99)),
                   "mean_us": float(np.mean(v))} for name, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args(argv)
    load_before = load_average()
    result = run(args.n)
    report = {"command": command("tracing_overhead.py", argv), "when": utc_now(), "n": args.n,
              "load_average_before": load_before, "load_average_after": load_average(), "per_request": result}
    lines = ["# Tracing overhead per request (span tree of one routed request, in process)", "",
             f"`{report['command']}` on {report['when']}; {args.n} requests per set-up, interleaved; load average "
             f"before {load_before}, after {report['load_average_after']} (2 shared cores).", "",
             "| set-up | p50 (us) | p99 (us) | mean (us) |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['mean_us']:.1f} |" for name, r in result.items()]
    write(ROOT / "benchmarks" / "results" / "tracing_overhead", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
