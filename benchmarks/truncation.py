"""Long prompts (issue 14): head-only vs head + tail truncation, measured on routerbench_subset.

RouterBench's ARC / Winogrande prompts open with a long shared few-shot prefix and put the
question last (median ~470 MiniLM tokens; the encoder keeps 254). Head-only truncation embeds the
prefix, which says the task but not the question. This benchmark evaluates each embedder spec with
``thalamus.eval.harness.evaluate`` over the same 5 folds (fixed by prompt hash and seed), for each
router, so a ``tail=T`` spec and its head-only twin differ only in which tokens are embedded.
The share of prompts longer than each spec's budget is recorded (a spec only changes those).

    .venv/bin/python benchmarks/truncation.py \\
        --specs "static;static:tail=128;static:max_tokens=254;static:max_tokens=254,tail=128;minilm;minilm:tail=128"

Specs are separated by ``;`` (a spec's own options are separated by commas).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_report import command, load_average, utc_now, write

from thalamus.datasets.registry import load_dataset
from thalamus.eval.harness import evaluate
from thalamus.router.embedder_registry import parse_spec

ROOT = Path(__file__).resolve().parent.parent
KEEP = ("gap_closed", "cost_saving_at_best_single", "aiq", "zero_router_aiq", "quality_at_max")


def budget_of(spec: str) -> int:
    """Tokens the spec embeds: MiniLM's 254-token window, or static's ``max_tokens``."""
    name, options = parse_spec(spec)
    return int(options.get("max_tokens", 512)) if name == "static" else 254


def long_share(texts: list[str], budget: int) -> float:
    """Share of prompts over ``budget`` tokens (MiniLM's WordPiece vocabulary, which static shares)."""
    from thalamus.router.embedders import get_embedder

    counter = get_embedder("static:max_tokens=100000", cache=False)
    lengths = np.array([len(ids) for ids in counter.token_ids(texts)])  # type: ignore[attr-defined]
    return float((lengths > budget).mean())


def run(dataset: str, spec: str, router: str, folds: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = evaluate(router, dataset, seed=0, folds=folds, embedder=spec)
    _, options = parse_spec(spec)
    return {"dataset": dataset, "embedder": spec, "tail": int(options.get("tail", 0)), "router": router,
            "folds": folds, **{k: res[k] for k in KEEP}, "best_single": res["best_single"]["model"],
            "n_test": res["split"]["n_test"], "seconds": round(time.perf_counter() - t0, 1)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def markdown(report: dict[str, Any]) -> str:
    out = [f"# Head-only vs head + tail truncation ({report['when']})", "",
           f"Command: `{report['command']}`. Load average at start {report['load_start']}, at end "
           f"{report['load_end']} (2 cores, shared). {report['folds']}-fold, seed 0, the same folds for every row.",
           "", "| dataset | router | embedder | budget (tokens) | prompts over budget | gap closed | "
           "saving at best-single quality | AIQ | zero AIQ | best quality | s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        out.append(f"| {r['dataset']} | {r['router']} | `{r['embedder']}` | {r['budget']} | {_pct(r['over_budget'])} | "
                   f"{_pct(r['gap_closed'])} | {_pct(r['cost_saving_at_best_single'])} | {r['aiq']:.4f} | "
                   f"{r['zero_router_aiq']:.4f} | {r['quality_at_max']:.4f} | {r['seconds']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default="static;static:tail=128;minilm;minilm:tail=128")
    ap.add_argument("--routers", default="cluster,knn")
    ap.add_argument("--dataset", default="routerbench_subset")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default="truncation")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"when": utc_now(), "command": command("truncation.py", argv),
                              "load_start": load_average(), "folds": args.folds}
    texts = load_dataset(args.dataset).texts
    rows = []
    for spec in filter(None, (s.strip() for s in args.specs.split(";"))):
        budget = budget_of(spec)
        share = long_share(texts, budget)
        for router in filter(None, args.routers.split(",")):
            rows.append({**run(args.dataset, spec, router, args.folds), "budget": budget, "over_budget": share})
    report["rows"] = rows
    report["load_end"] = load_average()
    write(ROOT / "benchmarks" / "results" / args.out, report, markdown(report))


if __name__ == "__main__":
    main()
