"""Routing at wire speed (issue 14): the static embedder + cluster router, speed and quality side by side.

Speed: a ``cluster`` router fitted on a dataset's train split (static embeddings), then
``router.route(text, knob)`` timed one query at a time on its test prompts: text in, decision out
(tokenize, pool the static table, classifier, policy). Quality: ``thalamus.eval.harness.evaluate``
with 5 folds (the same folds, fixed by prompt hash and seed) for every embedder given, so
``static`` and ``minilm`` are compared on identical splits; gap closed and the cost saving at the
best single model's quality are the targets. The machine's load average is recorded at the start
and end (the machine is shared). MiniLM embeddings come from the on-disk cache when present.

    .venv/bin/python benchmarks/static_routing.py --embedders static,minilm \\
        --datasets llmrouter_dcrouter,routerbench_subset --speed-datasets llmrouter_dcrouter,routerbench_subset
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

from thalamus.datasets.registry import load_dataset
from thalamus.eval.harness import evaluate
from thalamus.router.policy import Knob
from thalamus.router.registry import make_router

ROOT = Path(__file__).resolve().parent.parent
KNOB = Knob("lambda", 0.5)
TARGETS = {"p50_ms": 1.0, "p99_ms": 3.0, "gap_points": 1.0, "saving_points": 2.0}
GAP_DATASETS = {"llmrouter_dcrouter", "routerdc_7model"}


def speed(dataset: str, embedder: str, router: str, n: int) -> dict[str, Any]:
    ds = load_dataset(dataset)
    train, test = ds.train_test(test_size=0.3, seed=0)
    fitted = make_router(router, embedder=embedder).fit(train)
    texts = test.texts[:n]
    for t in texts[:20]:  # warm-up: tokenizer, table pages, BLAS
        fitted.route(t, KNOB)
    ms = np.empty(len(texts))
    cpu0 = time.process_time()
    for i, t in enumerate(texts):
        start = time.perf_counter()
        fitted.route(t, KNOB)
        ms[i] = (time.perf_counter() - start) * 1000
    cpu_ms = (time.process_time() - cpu0) * 1000 / len(texts)
    return {"dataset": dataset, "embedder": embedder, "router": router, "n": len(texts),
            **percentiles(ms), "cpu_ms_per_query": cpu_ms}


def quality(dataset: str, embedder: str, router: str, folds: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = evaluate(router, dataset, seed=0, folds=folds, embedder=embedder)
    keep = ("gap_closed", "cost_saving_at_best_single", "aiq", "zero_router_aiq", "quality_at_max", "apgr")
    return {"dataset": dataset, "embedder": embedder, "router": router, "folds": folds,
            **{k: res[k] for k in keep}, "best_single": res["best_single"]["model"],
            "n_test": res["split"]["n_test"], "seconds": round(time.perf_counter() - t0, 1)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def compare(rows: list[dict[str, Any]], base: str, fast: str) -> list[str]:
    """One verdict line per dataset where both embedders were measured."""
    by = {(r["dataset"], r["embedder"]): r for r in rows}
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        a, b = by.get((dataset, base)), by.get((dataset, fast))
        if not (a and b):
            continue
        key, limit = (("gap_closed", TARGETS["gap_points"]) if dataset in GAP_DATASETS
                      else ("cost_saving_at_best_single", TARGETS["saving_points"]))
        gap = 100 * ((a[key] or 0.0) - (b[key] or 0.0))
        lines.append(f"- {dataset}: {key} {fast} {_pct(b[key])} vs {base} {_pct(a[key])}: "
                     f"{gap:+.2f} points behind (target <= {limit:g}) -> {'PASS' if gap <= limit else 'MISS'}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    out = [f"# Static embedder + cluster: speed and quality ({report['when']})", "",
           f"Command: `{report['command']}`. Load average at start {report['load_start']}, "
           f"at end {report['load_end']} (2 cores, shared).", "", "## Routing decision, one query at a time", "",
           "| dataset | embedder | router | n | p50 ms | p90 ms | p99 ms | CPU ms/query | target |",
           "|---|---|---|---|---|---|---|---|---|"]
    for s in report["speed"]:
        ok = s["p50_ms"] <= TARGETS["p50_ms"] and s["p99_ms"] <= TARGETS["p99_ms"]
        out.append(f"| {s['dataset']} | {s['embedder']} | {s['router']} | {s['n']} | {s['p50_ms']:.3f} | "
                   f"{s['p90_ms']:.3f} | {s['p99_ms']:.3f} | {s['cpu_ms_per_query']:.3f} | "
                   f"{'PASS' if ok else 'MISS'} (p50 <= 1, p99 <= 3) |")
    out += ["", "## Quality, 5-fold (same folds for every embedder)", "",
            "| dataset | embedder | router | gap closed | saving at best-single quality | AIQ | zero AIQ | "
            "best quality | s |", "|---|---|---|---|---|---|---|---|---|"]
    for q in report["quality"]:
        out.append(f"| {q['dataset']} | {q['embedder']} | {q['router']} | {_pct(q['gap_closed'])} | "
                   f"{_pct(q['cost_saving_at_best_single'])} | {q['aiq']:.4f} | {q['zero_router_aiq']:.4f} | "
                   f"{q['quality_at_max']:.4f} | {q['seconds']} |")
    out += ["", "## Targets", "", *report["verdicts"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedders", default="static,minilm")
    ap.add_argument("--router", default="cluster")
    ap.add_argument("--datasets", default="llmrouter_dcrouter,routerbench_subset,routerdc_7model,routellm_mmlu")
    ap.add_argument("--speed-datasets", default="llmrouter_dcrouter,routerbench_subset")
    ap.add_argument("--speed-embedder", default="static")
    ap.add_argument("--n", type=int, default=1000, help="timed queries per dataset")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default="static_routing")
    args = ap.parse_args(argv)
    embedders = args.embedders.split(",")
    report: dict[str, Any] = {"when": utc_now(), "command": command("static_routing.py", argv),
                              "load_start": load_average()}
    report["speed"] = [speed(d, args.speed_embedder, args.router, args.n)
                       for d in filter(None, args.speed_datasets.split(","))]
    report["quality"] = [quality(d, e, args.router, args.folds)
                         for d in filter(None, args.datasets.split(",")) for e in embedders]
    report["verdicts"] = compare(report["quality"], embedders[-1], embedders[0]) if len(embedders) > 1 else []
    report["load_end"] = load_average()
    write(ROOT / "benchmarks" / "results" / args.out, report, markdown(report))


if __name__ == "__main__":
    main()
