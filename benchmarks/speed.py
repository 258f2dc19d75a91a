"""Routing speed: per-query latency (one query at a time) and batched throughput of every router.

Each router is fitted on a dataset's train split (``--dataset``, default routerbench_subset) and
queried with its test prompts. Token counts of the timed prompts are recorded, since MiniLM's cost
grows with prompt length up to its 256-token window.
Per query, two latencies are timed: ``total`` is ``router.route(text, knob)`` with a FRESH
MiniLM embedding (the on-disk embedding cache is switched off for routing with
``THALAMUS_EMBED_CACHE=0``, so every routed prompt goes through the transformer), and
``predict`` is ``router.route_features(x, knob)`` on the already-computed embedding (prediction
plus policy, the part after embedding). ``embed`` alone is timed too. Batched throughput is one
batch of ``--batch`` prompts: fresh embedding + ``predict_from_features``
+ the vectorised policy, and the same without the embedding. ``bert`` reads raw text, so its
``predict`` is its whole model and equals ``total`` minus Python overhead; it is fitted with a
small config (1 epoch, max_seq_length 128, ``--bert-train-prompts`` prompts) and reported, not
targeted. The machine's load average is recorded at the start and at the end.

    .venv/bin/python benchmarks/speed.py [--dataset routerbench_subset] [--n 500] [--routers knn,mf,...]
    THALAMUS_MINILM_BACKEND=onnx .venv/bin/python benchmarks/speed.py ...   # MiniLM in ONNX Runtime
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["THALAMUS_EMBED_CACHE"] = "0"  # routing must embed fresh; training features use an explicit cache

import numpy as np
from bench_report import command, load_average, percentiles, utc_now, write

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.router.base import Router
from thalamus.router.embedders import CachedEmbedder, Embedder, get_embedder
from thalamus.router.policy import Knob, choose
from thalamus.router.registry import make_router

ROOT = Path(__file__).resolve().parent.parent
ROUTERS = ["knn", "mf", "xgb", "carrot", "linucb", "thompson", "cluster", "bert"]
TARGETED = {"knn", "mf", "xgb", "carrot", "linucb"}
TARGET_TOTAL_P50_MS = 15.0
TARGET_PREDICT_P50_MS = 1.0
KNOB = Knob("lambda", 0.5)


def time_each(fn: Callable[[int], object], n: int, warmup: int = 10) -> tuple[np.ndarray, float]:
    """Wall milliseconds of fn(i) for i in range(n) after ``warmup`` untimed calls, and mean CPU ms per call.

    CPU time (all threads of this process) does not count waiting for a core, so it shows what
    the work costs when the machine is shared.
    """
    for i in range(min(warmup, n)):
        fn(i)
    out = np.empty(n)
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - t0) * 1000
    return out, (time.process_time() - cpu0) * 1000 / n


def timed(fn: Callable[[int], object], n: int) -> dict[str, float]:
    ms, cpu = time_each(fn, n)
    return {**percentiles(ms), "cpu_ms_mean": cpu}


def fit(name: str, train: RoutingDataset, X_train: np.ndarray, bert_prompts: int, embedder: str
        ) -> tuple[Router, float]:
    params: dict[str, Any] = {"embedder": embedder, "seed": 0}
    if name == "bert":
        params |= {"epochs": 1, "max_seq_length": 128, "max_train_prompts": bert_prompts}
    router = make_router(name, **params)
    t0 = time.perf_counter()
    router.fit(train, features=None if name == "bert" else X_train)
    return router, time.perf_counter() - t0


def batched_seconds(router: Router, texts: list[str], X: np.ndarray, embed_s: float) -> tuple[float, float]:
    """(seconds with fresh embedding, seconds without) for one batch through predict + policy.

    The fresh MiniLM embedding of the batch is the same work for every embedding router, so it
    is timed once (``embed_s``) and added; bert embeds nothing and is timed as it runs.
    """
    def predict(features: Any) -> None:
        q, c = router.predict_from_features(features)
        choose(q, c, KNOB, router.models_, cost_scale=router.cost_scale_)

    t0 = time.perf_counter()
    predict(X if router.uses_embeddings else texts)
    seconds = time.perf_counter() - t0
    return (seconds + embed_s if router.uses_embeddings else seconds), seconds


def measure(router: Router, texts: list[str], X: np.ndarray, batch: int, embed_s: float) -> dict[str, Any]:
    feats: Any = [[t] for t in texts] if not router.uses_embeddings else [X[i : i + 1] for i in range(len(X))]
    total = timed(lambda i: router.route(texts[i], KNOB), len(texts))
    predict = timed(lambda i: router.route_features(feats[i], KNOB), len(texts))
    b_total, b_predict = batched_seconds(router, texts[:batch], X[:batch], embed_s)
    n_b = len(texts[:batch])
    return {"total": total, "predict": predict,
            "batch": {"size": n_b, "qps_total": n_b / b_total, "qps_predict": n_b / b_predict,
                      "seconds_total": b_total, "seconds_predict": b_predict}}


def embed_latency(embedder: Embedder, texts: list[str], batch: int) -> dict[str, Any]:
    one = timed(lambda i: embedder.embed([texts[i]]), len(texts))
    t0 = time.perf_counter()
    embedder.embed(texts[:batch])
    seconds = time.perf_counter() - t0
    return {**one, "batch_seconds": seconds, "batch_qps": len(texts[:batch]) / seconds}


def token_counts(embedder: Embedder, texts: list[str]) -> dict[str, float]:
    """Tokens per prompt before MiniLM's truncation (median, p90, share over its window)."""
    model = getattr(embedder, "_model", None)
    if model is None:
        return {}
    counts = np.array([len(model.tokenizer(t)["input_ids"]) for t in texts])
    window = int(model.max_seq_length)
    return {"p50": float(np.median(counts)), "p90": float(np.percentile(counts, 90)),
            "share_over_window": float(np.mean(counts > window)), "window": window}


def run(dataset: str, routers: list[str], n: int, batch: int, bert_prompts: int, embedder: str) -> dict[str, Any]:
    fresh = get_embedder(embedder)  # THALAMUS_EMBED_CACHE=0: the bare MiniLM embedder
    if isinstance(fresh, CachedEmbedder):
        raise RuntimeError("expected a fresh (uncached) embedder; is THALAMUS_EMBED_CACHE overridden?")
    cached = CachedEmbedder(fresh)  # training/test features from the on-disk cache, not timed
    train, test = load_dataset(dataset).train_test()
    texts = test.texts[:n]
    if len(texts) < n:
        raise RuntimeError(f"{test.name} has only {len(texts)} prompts; asked for {n}")
    X_train, X_test = cached.embed(train.texts), cached.embed(texts)
    results: dict[str, Any] = {"embed_only": embed_latency(fresh, texts, batch), "tokens": token_counts(fresh, texts),
                               "train_prompts": train.n_prompts}
    print(f"embed p50 {results['embed_only']['p50_ms']:.2f} ms", flush=True)
    for name in routers:
        router, fit_s = fit(name, train, X_train, bert_prompts, embedder)
        results[name] = {"fit_seconds": fit_s,
                         **measure(router, texts, X_test, batch, results["embed_only"]["batch_seconds"])}
        r = results[name]
        print(f"{name}: total p50 {r['total']['p50_ms']:.2f} p99 {r['total']['p99_ms']:.2f} | predict p50 "
              f"{r['predict']['p50_ms']:.3f} p99 {r['predict']['p99_ms']:.3f} | batch {r['batch']['qps_total']:.0f}"
              f" q/s ({r['batch']['qps_predict']:.0f} q/s w/o embedding)", flush=True)
    return results


def checks(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in TARGETED & set(results):
        t, p = results[name]["total"]["p50_ms"], results[name]["predict"]["p50_ms"]
        out[name] = {"total_p50_ok": t <= TARGET_TOTAL_P50_MS, "predict_p50_ok": p <= TARGET_PREDICT_P50_MS}
    return out


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    emb, tok = res["embed_only"], res["tokens"]
    lines = [
        f"# Routing speed ({report['finished']})", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs; load average (1, 5, 15 min) at start "
        f"{report['load_start']}, at end {report['load_end']}. {report['load_note']}", "",
        f"Data: {report['dataset']}, fitted on its train split ({res['train_prompts']:,} prompts), queried with "
        f"the first {report['n']} test prompts one at a time (MiniLM tokens per prompt: median "
        f"{tok.get('p50', float('nan')):.0f}, p90 {tok.get('p90', float('nan')):.0f}, "
        f"{tok.get('share_over_window', float('nan')):.0%} over the {tok.get('window', 256)}-token window, "
        f"which truncates them), knob lambda=0.5. Embedder: `{report['embedder']}` (all-MiniLM-L6-v2, "
        f"CPU{', int8 linear layers' if report['embedder'].endswith('int8') else ', fp32'}, run by "
        f"{'ONNX Runtime' if report.get('backend') == 'onnx' else 'torch'}), "
        "embedded FRESH for every routed query (`THALAMUS_EMBED_CACHE=0`; the cache only supplies the "
        "training features and the pre-computed features of the `predict` column).", "",
        "- total = `router.route(text, knob)`: fresh embedding + prediction + policy.",
        "- predict = `router.route_features(x, knob)` on the precomputed embedding: prediction + policy "
        "(bert reads text, so its predict is the whole fine-tuned encoder).",
        f"- batch = one batch of {report['batch']} prompts through embedding + `predict_from_features` + "
        "vectorised policy; 'w/o emb.' skips the embedding. The batch's fresh MiniLM "
        "embedding is the same work for every embedding router, so it is timed once and added to each "
        "router's predict time; bert's batch is timed end to end.",
        f"- MiniLM embedding alone, one query: p50 {emb['p50_ms']:.2f} ms, p99 {emb['p99_ms']:.2f} ms; "
        f"batched {emb['batch_qps']:.0f} prompts/s; torch threads {report['torch_threads']}. CPU ms/q is this "
        "process's CPU time (all threads) per query: it excludes waiting for a core on the shared machine.",
        f"- bert: fine-tuned with a small config (1 epoch, max_seq_length 128, {report['bert_train_prompts']} "
        "training prompts chosen by text hash); reported, not targeted.", "",
        f"Targets (knn, mf, xgb, carrot, linucb): total p50 <= {TARGET_TOTAL_P50_MS:g} ms, predict p50 <= "
        f"{TARGET_PREDICT_P50_MS:g} ms.", "",
        "| router | total p50 ms | total p99 ms | total CPU ms/q | predict p50 ms | predict p99 ms | batch q/s | "
        "batch q/s w/o emb. | fit s | targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in report["routers"]:
        r, c = res[name], report["checks"].get(name)
        verdict = "n/a (reported)" if c is None else ("met" if all(c.values()) else
                                                      "MISSED: " + ", ".join(k for k, v in c.items() if not v))
        lines.append(f"| {name} | {r['total']['p50_ms']:.2f} | {r['total']['p99_ms']:.2f} | "
                     f"{r['total']['cpu_ms_mean']:.1f} | "
                     f"{r['predict']['p50_ms']:.3f} | {r['predict']['p99_ms']:.3f} | {r['batch']['qps_total']:.0f} "
                     f"| {r['batch']['qps_predict']:.0f} | {r['fit_seconds']:.1f} | {verdict} |")
    lines += ["", f"Full numbers (also p90 and means) are in `{report['stem']}.json`.", ""]
    return "\n".join(lines)


def load_note(start: str, end: str, threads: int) -> str:
    peak = max(float(v.strip()) for v in (start.split(",")[0], end.split(",")[0]))
    cores = os.cpu_count() or 1
    note = f"The load average counts this benchmark's own {threads} torch threads."
    if peak > max(cores, threads) + 0.5:
        note += (f" It peaked at {peak:.1f} on {cores} cores, so other work competed for the CPU and latencies "
                 "include waiting for it.")
    return note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dataset", default="routerbench_subset", help="catalog name whose prompts are routed")
    ap.add_argument("--n", type=int, default=500, help="test queries timed one at a time")
    ap.add_argument("--batch", type=int, default=500, help="batch size for throughput")
    ap.add_argument("--routers", default=",".join(ROUTERS))
    ap.add_argument("--bert-train-prompts", type=int, default=512)
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "minilm-int8"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--out", type=Path, default=None, help="output stem (default benchmarks/results/speed_DATASET)")
    args = ap.parse_args(argv)
    from thalamus.config import Settings

    backend = Settings().minilm_backend if args.embedder == "minilm" else "torch"
    suffix = ("" if args.embedder == "minilm" else f"_{args.embedder}") + ("_onnx" if backend == "onnx" else "")
    args.out = args.out or ROOT / "benchmarks" / "results" / f"speed_{args.dataset}{suffix}"
    routers = [r for r in args.routers.split(",") if r]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = load_average()
    results = run(args.dataset, routers, args.n, args.batch, args.bert_train_prompts, args.embedder)
    load_end = load_average()
    report = {
        "command": ("THALAMUS_MINILM_BACKEND=onnx " if backend == "onnx" else "") + command("speed.py", argv),
        "finished": utc_now(), "dataset": args.dataset, "stem": Path(args.out).name,
        "n": args.n, "batch": args.batch,
        "routers": routers, "bert_train_prompts": args.bert_train_prompts, "knob": {"kind": "lambda", "value": 0.5},
        "embedder": args.embedder, "backend": backend, "embedding": "fresh (THALAMUS_EMBED_CACHE=0)",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_start": load_start, "load_end": load_end,
        "load_note": load_note(load_start, load_end, torch.get_num_threads()),
        "results": results, "checks": checks(results),
    }
    write(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
