"""Embedding latency of one routed query: MiniLM in torch fp32, in ONNX Runtime, and torch int8, interleaved.

The embedding is nearly all of a learned router's per-query latency (see speed_*.md), and this
machine's speed drifts by tens of percent within minutes, so comparing separate runs says
little. Here every embedder embeds the same prompt back to back, rotating which goes first,
so drift hits all alike; ratios of their medians are the robust numbers. Also recorded: the
cosine of each variant's vector with torch fp32's (onnx is the same function, int8 an
approximation, which is why routers are trained on int8 vectors and onnx shares fp32's id).

    .venv/bin/python benchmarks/embed_speed.py [--datasets llmrouter_dcrouter routerbench_subset] [--n 500]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_report import command, load_average, percentiles, utc_now, write
from speed import ROOT, TARGET_TOTAL_P50_MS, token_counts

from thalamus.datasets.registry import load_dataset
from thalamus.router.embedders import Embedder, MiniLMEmbedder

BASE = "minilm (torch)"


def embedders() -> dict[str, Embedder]:
    return {BASE: MiniLMEmbedder(progress=False), "minilm (onnx)": MiniLMEmbedder(progress=False, backend="onnx"),
            "minilm-int8": MiniLMEmbedder(progress=False, int8=True)}


def interleaved(embedders: dict[str, Embedder], texts: list[str], warmup: int = 10) -> dict[str, Any]:
    for text in texts[:warmup]:
        for e in embedders.values():
            e.embed([text])
    names = list(embedders)
    ms: dict[str, list[float]] = {name: [] for name in names}
    cos: dict[str, list[float]] = {name: [] for name in names[1:]}
    for i, text in enumerate(texts):
        vecs = {}
        for name in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            vecs[name] = embedders[name].embed([text])[0]
            ms[name].append((time.perf_counter() - t0) * 1000)
        for name in names[1:]:
            cos[name].append(float(vecs[BASE] @ vecs[name]))
    out: dict[str, Any] = {name: percentiles(np.asarray(v)) for name, v in ms.items()}
    for name in names[1:]:
        c = np.asarray(cos[name])
        out[name] |= {"p50_ratio": out[name]["p50_ms"] / out[BASE]["p50_ms"],
                      "cosine_min": float(c.min()), "cosine_median": float(np.median(c))}
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Embedding latency: MiniLM in torch, ONNX Runtime and torch int8 ({report['finished']})", "",
             f"Command: `{report['command']}`", "",
             f"One query at a time, the first {report['n']} test prompts of each dataset, every embedder on every "
             "prompt back to back (order rotating), 2 intra-op threads on this 2-core machine. "
             f"Load average at start {report['load_start']}, at end {report['load_end']}.", "",
             "| dataset | median tokens | embedder | p50 ms | p99 ms | p50 / torch fp32 | cosine with torch fp32 (min, "
             "median) |", "|---|---|---|---|---|---|---|"]
    for ds, r in report["results"].items():
        for name in r["embedders"]:
            e = r[name]
            ratio = f"{e['p50_ratio']:.2f}" if "p50_ratio" in e else "1"
            cosine = f"{e['cosine_min']:.6f}, {e['cosine_median']:.6f}" if "cosine_min" in e else "-"
            lines.append(f"| {ds} | {r['median_tokens']:.0f} | {name} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | "
                         f"{ratio} | {cosine} |")
    lines += ["", f"A router's total routing latency is this embedding plus its prediction (<= 1 ms p50, see "
              f"speed_*.md); the target for the total is p50 <= {TARGET_TOTAL_P50_MS:g} ms. Routing quality with "
              "int8 embeddings (routers trained on them): `quality_minilm-int8.md`; onnx gives torch's vectors.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--datasets", nargs="+", default=["llmrouter_dcrouter", "routerbench_subset"])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embed_speed")
    args = ap.parse_args(argv)
    variants = embedders()
    load_start = load_average()
    results = {}
    for ds in args.datasets:
        texts = load_dataset(ds).train_test()[1].texts[: args.n]
        results[ds] = {"median_tokens": token_counts(variants[BASE], texts)["p50"], "embedders": list(variants),
                       **interleaved(variants, texts)}
        print(ds, results[ds], flush=True)
    report = {"command": command("embed_speed.py", argv), "finished": utc_now(), "n": args.n,
              "load_start": load_start, "load_end": load_average(), "results": results}
    write(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
