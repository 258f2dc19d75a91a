"""Embedding latency of one routed query: fp32 MiniLM against its int8 variant, interleaved.

The embedding is nearly all of a learned router's per-query latency (see speed_*.md), and this
machine's speed drifts by tens of percent within minutes, so comparing two separate runs says
little. Here both embedders embed the same prompt back to back, alternating which goes first,
so drift hits both alike; the ratio of their medians is the robust number. Also recorded: the
cosine between the two vectors of each prompt (int8 is an approximation of the same model).

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
from bench_report import command, utc_now, write
from speed import ROOT, TARGET_TOTAL_P50_MS, load_average, percentiles

from thalamus.datasets.registry import load_dataset
from thalamus.router.embedders import Embedder, get_embedder

EMBEDDERS = ("minilm", "minilm-int8")


def interleaved(embedders: dict[str, Embedder], texts: list[str], warmup: int = 10) -> dict[str, Any]:
    for text in texts[:warmup]:
        for e in embedders.values():
            e.embed([text])
    ms: dict[str, list[float]] = {name: [] for name in embedders}
    cos = []
    names = list(embedders)
    for i, text in enumerate(texts):
        vecs = {}
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            vecs[name] = embedders[name].embed([text])[0]
            ms[name].append((time.perf_counter() - t0) * 1000)
        cos.append(float(vecs[names[0]] @ vecs[names[1]]))
    stats = {name: percentiles(np.asarray(v)) for name, v in ms.items()}
    c = np.asarray(cos)
    return {**stats, "p50_ratio": stats[names[1]]["p50_ms"] / stats[names[0]]["p50_ms"],
            "cosine": {"min": float(c.min()), "p1": float(np.percentile(c, 1)), "median": float(np.median(c))}}


def tokens(embedder: Embedder, texts: list[str]) -> float:
    model = getattr(embedder, "_model", None)
    return float(np.median([len(model.tokenizer(t)["input_ids"]) for t in texts])) if model else float("nan")


def markdown(report: dict[str, Any]) -> str:
    a, b = EMBEDDERS
    lines = [f"# Embedding latency, fp32 vs int8 MiniLM ({report['finished']})", "",
             f"Command: `{report['command']}`", "",
             f"One query at a time, the first {report['n']} test prompts of each dataset, both embedders on every "
             "prompt back to back (order alternating), torch threads as torch sets them on this 2-core machine. "
             f"Load average at start {report['load_start']}, at end {report['load_end']}.", "",
             f"| dataset | median tokens | {a} p50 ms | {a} p99 ms | {b} p50 ms | {b} p99 ms | int8/fp32 p50 | "
             "cosine min | cosine median |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ds, r in report["results"].items():
        lines.append(f"| {ds} | {r['median_tokens']:.0f} | {r[a]['p50_ms']:.2f} | {r[a]['p99_ms']:.2f} | "
                     f"{r[b]['p50_ms']:.2f} | {r[b]['p99_ms']:.2f} | {r['p50_ratio']:.2f} | "
                     f"{r['cosine']['min']:.3f} | {r['cosine']['median']:.3f} |")
    lines += ["", f"A router's total routing latency is this embedding plus its prediction (<= 1 ms p50, see "
              f"speed_*.md); the target for the total is p50 <= {TARGET_TOTAL_P50_MS:g} ms. Routing quality with "
              "int8 embeddings (routers trained on them): `quality_minilm-int8.md`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--datasets", nargs="+", default=["llmrouter_dcrouter", "routerbench_subset"])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embed_speed")
    args = ap.parse_args(argv)
    embedders = {name: get_embedder(name, cache=False) for name in EMBEDDERS}
    load_start = load_average()
    results = {}
    for ds in args.datasets:
        texts = load_dataset(ds).train_test()[1].texts[: args.n]
        results[ds] = {"median_tokens": tokens(embedders["minilm"], texts), **interleaved(embedders, texts)}
        print(ds, {k: v for k, v in results[ds].items() if k != "cosine"}, flush=True)
    report = {"command": command("embed_speed.py", argv), "finished": utc_now(), "n": args.n,
              "load_start": load_start, "load_end": load_average(), "results": results}
    write(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
