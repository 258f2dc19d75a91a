"""Which embedding path should be the default (issue 24): static, MiniLM, a projection, or a cascade.

For every dataset and router (cluster, kNN) the same 5 folds (fixed by prompt hash, seed 0) are fitted
three ways, and the out-of-fold predictions are scored with ``thalamus.eval.harness.score``:

- ``static``: the ``static:dims=384`` table (MiniLM distilled into token vectors);
- ``minilm``: the MiniLM encoder (the reference the issue's targets are measured against);
- ``ridge``: static vectors mapped into MiniLM's space by a ridge regression fitted on the training
  fold's prompts (static -> MiniLM embedding, alpha ``--alpha``): one extra matrix product per query;
  kNN only (the cluster router's classifier is linear in its input, so a linear map ahead of it adds
  nothing but a change of regularisation: on llmrouter_dcrouter it moved gap closed by +0.09 points);
- ``tokfit``: the static table's token vectors re-fitted on the training fold's prompts so that their
  pooled vectors reproduce MiniLM's (ridge toward the distilled table, strength ``--tokfit-lambda``
  times the mean pooled-vector Gram diagonal; solved in its dual form, one n_train x n_train system);
  still one lookup per token at query time; kNN only, like ``ridge``;
- ``cascade@S``: the static router's predictions where its decision is clear, MiniLM's on the share S
  of prompts with the smallest decision margin (best minus second-best utility, the smallest margin
  over a grid of lambdas). S is set by quantile on the scored prompts, i.e. an upper bound on what a
  threshold calibrated on training folds would reach at that MiniLM share.

The targets: each path's gap closed and cost saving at best-single quality within 0.3 points of
MiniLM's, for both routers, on every dataset. Speed: ``route(text)`` with the cluster router, one query at
a time, every query embedded afresh (no embedding cache), for the static path and MiniLM in torch and in
ONNX Runtime (a cascade's p50 is the static path's while S < 0.5, its p99 MiniLM's once S > 1%).
Large datasets are subsampled by prompt hash (``--subsample NAME=FRACTION``) so MiniLM embeds them in
reasonable time on 2 shared cores; the load average is recorded at the start and end. BLAS and
OpenMP run one thread (set below), for the speed part too.

    .venv/bin/python benchmarks/embedding_paths.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one BLAS/OpenMP thread: on 2 cores shared by several jobs, faiss's and BLAS's thread pools thrash
# (a 5-fold kNN run took >10 minutes with them, under a minute without)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp
from bench_report import command, load_average, percentiles, utc_now, write

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset, hash_fraction
from thalamus.eval.harness import EvalSet, score
from thalamus.eval.sweep import Predictions, predict
from thalamus.router.embedder_registry import make_embedder
from thalamus.router.embedders import get_embedder
from thalamus.router.policy import Knob
from thalamus.router.registry import make_router
from thalamus.router.static import StaticEmbedder

ROOT = Path(__file__).resolve().parent.parent
STATIC, MINILM = "static:dims=384", "minilm"
SPEED_EMBEDDERS = (STATIC, MINILM, "minilm:backend=onnx")  # onnx: same vectors and id, other runtime
LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)  # the margin is the smallest over these knobs
SHARES = (0.25, 0.5)
TARGET_POINTS = 0.3


def subsample(ds: RoutingDataset, fraction: float | None) -> RoutingDataset:
    if not fraction:
        return ds
    keep = np.array([hash_fraction(t, 1) < fraction for t in ds.texts])  # seed 1: independent of the folds
    return ds.subset(keep, f"{ds.name}[{fraction:g}]")


def ridge_map(source: np.ndarray, target: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, source mean, target mean) of the ridge regression target ~ source."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    a = source - mu_s
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (target - mu_t))
    return w, mu_s, mu_t


def pooling_matrix(emb: StaticEmbedder, texts: list[str]) -> sp.csr_matrix:
    """(n, table rows) weights such that ``pooling_matrix @ table`` is the static embedder's pre-norm vectors."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for r, ids in enumerate(emb.token_ids(texts)):
        if ids:
            t = np.asarray(ids)
            w = emb._weights[t] if emb._weights is not None else np.ones(len(t))
            rows += [r] * len(t)
            cols += list(emb._mapping[t] if emb._mapping is not None else t)
            vals += list(w / len(t))
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), emb._table.shape[0]))


def tokfit(pool: sp.csr_matrix, table: np.ndarray, xm: np.ndarray, tr: np.ndarray, lam: float) -> np.ndarray:
    """Every prompt's vector after re-fitting the token table on the ``tr`` prompts (dual ridge)."""
    base = pool @ table
    scale = float(np.median(np.linalg.norm(base, axis=1)))  # MiniLM vectors are unit length; pooled ones not
    gram = (pool[tr] @ pool[tr].T).toarray()
    dual = np.linalg.solve(gram + lam * float(np.mean(np.diag(gram))) * np.eye(len(tr)), scale * xm[tr] - base[tr])
    return np.asarray(base + (pool @ pool[tr].T).toarray() @ dual, dtype=np.float32)


def margin(p: Predictions) -> np.ndarray:
    out = np.full(len(p.quality), np.inf)
    for lam in LAMBDAS:
        u = np.sort((1 - lam) * p.quality - lam * p.cost, axis=1)
        out = np.minimum(out, u[:, -1] - u[:, -2])
    return out


def fold_predictions(ds: RoutingDataset, xs: np.ndarray, xm: np.ndarray, router: str, alpha: float,
                     tokfit_lambda: float) -> tuple[EvalSet, dict[str, Predictions]]:
    fold = ds.fold_ids(5, 0)
    paths = ("static", "minilm", "ridge", "tokfit") if router == "knn" else ("static", "minilm")
    emb = get_embedder(STATIC)
    assert isinstance(emb, StaticEmbedder)
    pool = pooling_matrix(emb, list(ds.texts)) if "tokfit" in paths else None
    tests: list[RoutingDataset] = []
    preds: dict[str, list[Predictions]] = {p: [] for p in paths}
    for i in range(5):
        tr, te = np.flatnonzero(fold != i), np.flatnonzero(fold == i)
        test = ds.subset(te)
        keep = np.flatnonzero(np.isfinite(test.quality).all(1) & np.isfinite(test.cost).all(1))
        features = {"static": xs, "minilm": xm}
        if "ridge" in paths:
            w, mu_s, mu_t = ridge_map(xs[tr].astype(np.float64), xm[tr].astype(np.float64), alpha)
            features["ridge"] = ((xs - mu_s) @ w + mu_t).astype(np.float32)
        if pool is not None:
            features["tokfit"] = tokfit(pool, emb._table.astype(np.float64), xm.astype(np.float64), tr, tokfit_lambda)
        for path, x in features.items():
            fitted = make_router(router, embedder="hashing").fit(ds.subset(tr), features=x[tr])
            preds[path].append(predict(fitted, x[te][keep]))
        tests.append(test.complete_rows())
    return EvalSet.of(tests), {k: Predictions.concat(v) for k, v in preds.items()}


def cascade(s: Predictions, m: Predictions, share: float) -> Predictions:
    wide = margin(s)
    use = wide <= np.quantile(wide, share)
    return Predictions(np.where(use[:, None], m.quality, s.quality), np.where(use[:, None], m.cost, s.cost))


def measure(name: str, fraction: float | None, router: str, alpha: float, tokfit_lambda: float
            ) -> list[dict[str, Any]]:
    ds = subsample(load_dataset(name), fraction)
    xs = get_embedder(STATIC).embed(list(ds.texts))
    xm = get_embedder(MINILM).embed(list(ds.texts))
    ev, preds = fold_predictions(ds, xs, xm, router, alpha, tokfit_lambda)
    paths = {**preds, **{f"cascade@{s:g}": cascade(preds["static"], preds["minilm"], s) for s in SHARES}}
    rows = []
    for path, p in paths.items():
        res = score(ev, p)
        rows.append({"dataset": name, "subsample": fraction, "n": ds.n_prompts, "router": router, "path": path,
                     "gap_closed": res["gap_closed"], "saving": res["cost_saving_at_best_single"],
                     "apgr": res.get("apgr")})
    return rows


def speed(name: str, spec: str, n: int) -> dict[str, Any]:
    """``route(text)`` one query at a time on the test split, embedding every query afresh.

    The router is fitted on cached training vectors, then given an uncached embedder of the same id,
    so no query is answered from the embedding cache.
    """
    train, test = load_dataset(name).train_test(test_size=0.3, seed=0)
    cached = get_embedder(spec.split(":")[0] if spec.startswith("minilm") else spec)
    router = make_router("cluster", embedder=spec).fit(train, features=cached.embed(list(train.texts)))
    router.use_embedder(make_embedder(spec))
    texts, knob = list(test.texts[:n]), Knob("lambda", 0.5)
    for t in texts[:20]:  # warm-up: tokenizer, table pages, BLAS, ONNX session
        router.route(t, knob)
    ms = np.empty(len(texts))
    cpu0 = time.process_time()
    for i, t in enumerate(texts):
        start = time.perf_counter()
        router.route(t, knob)
        ms[i] = (time.perf_counter() - start) * 1000
    return {"dataset": name, "embedder": spec, "n": len(texts), **percentiles(ms),
            "cpu_ms_per_query": (time.process_time() - cpu0) * 1000 / len(texts)}


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    ref = {(r["dataset"], r["router"]): r for r in rows if r["path"] == "minilm"}
    out = []
    for r in rows:
        if r["path"] == "minilm":
            continue
        m = ref[(r["dataset"], r["router"])]
        behind = [100 * ((m[k] or 0.0) - (r[k] or 0.0)) for k in ("gap_closed", "saving", "apgr")]
        worst = max(behind)
        r["points_behind"] = worst
        r["pass"] = worst <= TARGET_POINTS
    for key in dict.fromkeys((r["dataset"], r["path"]) for r in rows if r["path"] != "minilm"):
        cells = [r for r in rows if (r["dataset"], r["path"]) == key]
        ok = all(r["pass"] for r in cells)
        out.append(f"- {key[0]}, {key[1]}: worst {max(r['points_behind'] for r in cells):+.2f} points behind "
                   f"MiniLM (target <= {TARGET_POINTS}) -> {'PASS' if ok else 'MISS'}")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def markdown(report: dict[str, Any]) -> str:
    out = [f"# Embedding paths: static, MiniLM, ridge projection, cascade ({report['when']})", "",
           f"Command: `{report['command']}`. Load average at start {report['load_start']}, at end "
           f"{report['load_end']} (2 cores, shared). 5 folds (seed 0); subsamples: {report['subsample']}.", "",
           "## Quality (out-of-fold, same folds for every path)", "",
           "| dataset | n | router | path | gap closed | saving at best-single quality | APGR | "
           "points behind MiniLM |", "|---|---|---|---|---|---|---|---|"]
    for r in report["quality"]:
        behind = "-" if r["path"] == "minilm" else f"{r['points_behind']:+.2f}"
        apgr = "-" if r["apgr"] is None else f"{r['apgr']:.3f}"
        out.append(f"| {r['dataset']} | {r['n']} | {r['router']} | {r['path']} | {_pct(r['gap_closed'])} | "
                   f"{_pct(r['saving'])} | {apgr} | {behind} |")
    out += ["", "## Routing decision, one query at a time (cluster)", "",
            "| dataset | embedder | n | p50 ms | p90 ms | p99 ms | CPU ms/query |", "|---|---|---|---|---|---|---|"]
    for s in report["speed"]:
        out.append(f"| {s['dataset']} | {s['embedder']} | {s['n']} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | "
                   f"{s['p99_ms']:.3f} | {s['cpu_ms_per_query']:.3f} |")
    out += ["", "## Targets (each of gap closed, saving, APGR within 0.3 points of MiniLM, cluster and kNN)", "",
            *report["verdicts"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="llmrouter_dcrouter,routerbench_subset,routerdc_7model,routellm_mmlu")
    ap.add_argument("--subsample", default="routerdc_7model=0.25,routellm_mmlu=0.3",
                    help="NAME=FRACTION,... prompts kept by hash")
    ap.add_argument("--routers", default="cluster,knn")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--tokfit-lambda", type=float, default=0.1)
    ap.add_argument("--speed-dataset", default="llmrouter_dcrouter")
    ap.add_argument("--n", type=int, default=300, help="timed queries per embedder")
    ap.add_argument("--out", default="embedding_paths")
    args = ap.parse_args(argv)
    fractions = {k: float(v) for k, v in (p.split("=") for p in args.subsample.split(",") if p)}
    report: dict[str, Any] = {"when": utc_now(), "command": command("embedding_paths.py", argv),
                              "load_start": load_average(), "subsample": fractions}
    t0 = time.perf_counter()
    report["quality"] = [row for d in filter(None, args.datasets.split(",")) for r in args.routers.split(",")
                         for row in measure(d, fractions.get(d), r, args.alpha, args.tokfit_lambda)]
    report["verdicts"] = verdicts(report["quality"])
    report["speed"] = [speed(args.speed_dataset, e, args.n) for e in SPEED_EMBEDDERS] if args.n else []
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["load_end"] = load_average()
    write(ROOT / "benchmarks" / "results" / args.out, report, markdown(report))


if __name__ == "__main__":
    main()
