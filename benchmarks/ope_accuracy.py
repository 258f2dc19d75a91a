"""Benchmark 1 of the learning loop: are the off-policy estimates right, where the truth is known?

llmrouter_dcrouter records every model's quality on every prompt. Half of its prompts (by text hash)
train the routers; the other half is the traffic pool. Per seed, 5,000 requests drawn from the pool
go through the real gateway (uvicorn on 127.0.0.1, openai-compatible backends on the replay upstream,
a SQLite ledger) routed by a kNN router with exploration on; each answer gets feedback = the recorded
quality of the model that answered (POST /v1/feedback). Then ``thalamus.training.ope`` (the code of
``thalamus ope``) estimates several candidate routers (other routers, other knobs) from that ledger,
and each estimate is compared with the candidate's true value on the same requests, computed from
the full quality matrix. Goals (issue 13): DR within 0.01 of the truth in mean quality, and the truth
inside the DR 95% interval for >= 90% of (candidate, seed) pairs.

    .venv/bin/python benchmarks/ope_accuracy.py [--seeds 0-9] [--n 5000] [--explore epsilon:0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import numpy as np
from bench_report import command, load_average, utc_now, write

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset, hash_fraction
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger
from thalamus.router.base import Router
from thalamus.router.policy import Knob
from thalamus.router.registry import make_router
from thalamus.training.ope import evaluate
from thalamus.training.ope_ledger import candidate_policy, knob_utility, load_log

ROOT = Path(__file__).resolve().parent.parent
DATASET = "llmrouter_dcrouter"
LOGGER = ("knn", {"k": 50}, Knob("lambda", 0.1))
CANDIDATES: dict[str, tuple[str, dict[str, Any], Knob]] = {
    "knn k=50 lambda=0": ("knn", {"k": 50}, Knob("lambda", 0.0)),
    "knn k=50 lambda=0.3": ("knn", {"k": 50}, Knob("lambda", 0.3)),
    "knn k=10 lambda=0.1": ("knn", {"k": 10}, Knob("lambda", 0.1)),
    "mf lambda=0.1": ("mf", {}, Knob("lambda", 0.1)),
    "cluster lambda=0.1": ("cluster", {}, Knob("lambda", 0.1)),
    "best-single lambda=0": ("best-single", {}, Knob("lambda", 0.0)),
}
CONCURRENCY = 16


def split(dataset: RoutingDataset) -> tuple[RoutingDataset, RoutingDataset]:
    train = np.array([hash_fraction(t, 11) < 0.5 for t in dataset.texts])
    return dataset.subset(train, "train"), dataset.subset(~train, "pool")


def train_all(train: RoutingDataset, X: np.ndarray, out: Path) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    for label, (name, params, _) in {"logger": LOGGER, **CANDIDATES}.items():
        router = make_router(name, embedder="minilm", **params).fit(train, features=X)
        dirs[label] = router.save(out / label.replace(" ", "_"))
    return dirs


def gateway_config(replay_url: str, dataset: RoutingDataset, artifact: Path, ledger: Path, explore: dict[str, Any]
                   ) -> dict[str, Any]:
    backends = [{"name": m, "provider": "openai-compatible", "model": m, "api_base": replay_url + "/v1",
                 "input_per_m": dataset.prices[m].input_per_m, "output_per_m": dataset.prices[m].output_per_m,
                 "timeout": 30.0} for m in dataset.models]
    knob = LOGGER[2]
    return {"backends": backends,
            "routers": {"logger": {"artifact": str(artifact), "aliases": ["auto"], "explore": explore,
                                   "knob": {"kind": knob.kind, "value": knob.value}}},
            "ledger": {"url": f"sqlite:///{ledger}", "store_prompts": True, "flush_ms": 50}}


async def drive(url: str, texts: list[str], quality: dict[tuple[str, str], float]) -> int:
    """Every text through the gateway, each answer fed back with its recorded quality; returns failures."""
    sem = asyncio.Semaphore(CONCURRENCY)
    failures = 0
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(text: str) -> None:
            nonlocal failures
            async with sem:
                r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": [
                    {"role": "user", "content": text}], "max_tokens": 16})
                if r.status_code != 200:
                    failures += 1
                    return
                score = quality[(text, r.headers["x-thalamus-model"])]
                f = await client.post("/v1/feedback", json={"request_id": r.headers["x-thalamus-request-id"],
                                                            "score": score})
                failures += f.status_code != 200
        await asyncio.gather(*[one(t) for t in texts])
    return failures


def score_seed(ledger_url: str, pool: RoutingDataset, dirs: dict[str, Path], seed: int) -> list[dict[str, Any]]:
    db = Ledger(ledger_url)
    try:
        ll = load_log(db.rows_with_feedback(), db.where)
    finally:
        db.close()
    row_of = {t: i for i, t in enumerate(pool.texts)}
    prompt = np.array([row_of[t] for t in ll.texts if t is not None])
    out = []
    for label, (_, _, knob) in CANDIDATES.items():
        router = Router.load(dirs[label])
        log, pi = candidate_policy(router, knob, ll)
        res = evaluate(log, pi, knob_utility(knob, router.cost_scale_), n_boot=500, seed=seed)
        q = np.stack([pool.quality[prompt, pool.models.index(m)] for m in log.models], axis=1)
        truth = float((pi * q).mean(axis=0).sum())
        est = res.estimates["quality"]
        out.append({"seed": seed, "candidate": label, "truth": truth, "ess": res.ess, "n": res.n,
                    "agreement_with_logger": float(pi[np.arange(log.n), log.action].mean()),
                    **{f"{e}": est[e].value for e in est}, **{f"{e}_lo": est[e].lo for e in est},
                    **{f"{e}_hi": est[e].hi for e in est}})
    return out


def run_seed(seed: int, n: int, pool: RoutingDataset, dirs: dict[str, Path], replay_url: str,
             explore: dict[str, Any], work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    texts = [pool.texts[i] for i in rng.integers(0, pool.n_prompts, n)]
    quality = {(t, m): float(pool.quality[i, j]) for i, t in enumerate(pool.texts) for j, m in enumerate(pool.models)}
    ledger = work / f"ledger-{seed}.sqlite"
    config = config_from_dict(gateway_config(replay_url, pool, dirs["logger"], ledger, explore | {"seed": seed}))
    t0 = time.perf_counter()
    with ThreadedServer(create_app(config)) as gw:
        failures = asyncio.run(drive(gw.url, texts, quality))
    seconds = time.perf_counter() - t0
    rows = score_seed(f"sqlite:///{ledger}", pool, dirs, seed)
    print(f"seed {seed}: {n} requests in {seconds:.0f} s ({failures} failures)", flush=True)
    for r in rows:
        print(f"  {r['candidate']:24s} truth {r['truth']:.4f} DR {r['dr']:.4f} [{r['dr_lo']:.4f}, {r['dr_hi']:.4f}]"
              f" IPS {r['ips']:.4f} SNIPS {r['snips']:.4f} ESS {r['ess']:.0f}", flush=True)
    return rows, {"seed": seed, "seconds": seconds, "failures": failures}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in ("ips", "snips", "dr"):
        err = np.array([r[e] - r["truth"] for r in rows])
        covered = np.array([r[f"{e}_lo"] <= r["truth"] <= r[f"{e}_hi"] for r in rows])
        out[e] = {"mean_abs_error": float(np.abs(err).mean()), "max_abs_error": float(np.abs(err).max()),
                  "bias": float(err.mean()), "share_within_0.01": float((np.abs(err) <= 0.01).mean()),
                  "coverage_95": float(covered.mean()),
                  "mean_interval_width": float(np.mean([r[f"{e}_hi"] - r[f"{e}_lo"] for r in rows]))}
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"# OPE accuracy ({report['when']})", "", f"Command: `{report['command']}`", "",
             f"Dataset {DATASET}: routers trained on {report['n_train']} prompts, traffic drawn from the other "
             f"{report['n_pool']}; {report['n']} requests per seed through the real gateway, exploration "
             f"{report['explore']}, feedback = recorded quality. Logging router: kNN k=50, lambda 0.1. "
             f"Seeds {report['seeds']}. Load average at the end: {report['load']}.", "",
             "| estimator | mean abs error | max abs error | bias | share within 0.01 | 95% coverage | mean CI width |",
             "|---|---|---|---|---|---|---|"]
    for e in ("dr", "snips", "ips"):
        v = s[e]
        lines.append(f"| {e.upper()} | {v['mean_abs_error']:.4f} | {v['max_abs_error']:.4f} | {v['bias']:+.4f} | "
                     f"{v['share_within_0.01']:.0%} | {v['coverage_95']:.0%} | {v['mean_interval_width']:.4f} |")
    lines += ["", "| candidate | mean truth | mean DR | DR mean abs error | DR coverage | mean ESS "
              "| agreement with logger |",
              "|---|---|---|---|---|---|---|"]
    for label in CANDIDATES:
        rs = [r for r in report["rows"] if r["candidate"] == label]
        lines.append(f"| {label} | {np.mean([r['truth'] for r in rs]):.4f} | {np.mean([r['dr'] for r in rs]):.4f} | "
                     f"{np.mean([abs(r['dr'] - r['truth']) for r in rs]):.4f} | "
                     f"{np.mean([r['dr_lo'] <= r['truth'] <= r['dr_hi'] for r in rs]):.0%} | "
                     f"{np.mean([r['ess'] for r in rs]):.0f} | "
                     f"{np.mean([r['agreement_with_logger'] for r in rs]):.0%} |")
    goal_err, goal_cov = s["dr"]["mean_abs_error"] <= 0.01, s["dr"]["coverage_95"] >= 0.9
    lines += ["", "![DR estimates vs truth](ope_accuracy.png)"]
    lines += ["", f"Goal: DR within 0.01 of the truth: mean abs error {s['dr']['mean_abs_error']:.4f} "
              f"({'met' if goal_err else 'NOT met'}; {s['dr']['share_within_0.01']:.0%} of pairs individually "
              f"within 0.01); truth inside the DR 95% interval for >= 90% of pairs: {s['dr']['coverage_95']:.0%} "
              f"({'met' if goal_cov else 'NOT met'}).", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Each (candidate, seed): the DR estimate and its 95% interval against the true value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thalamus.eval.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 6))
    for k, label in enumerate(CANDIDATES):
        rs = [r for r in rows if r["candidate"] == label]
        truth = np.array([r["truth"] for r in rs])
        dr = np.array([r["dr"] for r in rs])
        err = np.array([[r["dr"] - r["dr_lo"] for r in rs], [r["dr_hi"] - r["dr"] for r in rs]])
        ax.errorbar(truth, dr, yerr=err, fmt="o", ms=4, capsize=2, alpha=0.7, color=f"C{k}", label=label)
    lo = min(min(r["dr_lo"] for r in rows), min(r["truth"] for r in rows))
    hi = max(max(r["dr_hi"] for r in rows), max(r["truth"] for r in rows))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="estimate = truth")
    ax.fill_between([lo, hi], [lo - 0.01, hi - 0.01], [lo + 0.01, hi + 0.01], color="grey", alpha=0.2,
                    label="within 0.01")
    ax.set(xlabel="true mean quality (full matrix)", ylabel="DR estimate (95% bootstrap interval)",
           title="off-policy estimates vs truth, 10 seeds x 6 candidates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=100)


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--explore", default="epsilon:0.1", help="KIND:VALUE (epsilon or softmax)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ope_accuracy")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON in --out")
    args = ap.parse_args(argv)
    if args.replot:
        plot(json.loads(args.out.with_suffix(".json").read_text())["rows"], args.out.with_suffix(".png"))
        return
    kind, value = args.explore.split(":")
    explore = {"kind": kind, "value": float(value)}
    dataset = load_dataset(DATASET)
    train, pool = split(dataset)
    from thalamus.router.embedders import get_embedder

    X = get_embedder("minilm").embed(train.texts)
    rows: list[dict[str, Any]] = []
    runs = []
    with tempfile.TemporaryDirectory() as tmp, ThreadedServer(create_replay_app(pool), log_level="error") as replay:
        dirs = train_all(train, X, Path(tmp))
        for seed in parse_seeds(args.seeds):
            seed_rows, run = run_seed(seed, args.n, pool, dirs, replay.url, explore, Path(tmp))
            rows += seed_rows
            runs.append(run)
    report = {"when": utc_now(), "command": command("ope_accuracy.py", argv), "explore": args.explore,
              "n": args.n, "seeds": args.seeds, "n_train": train.n_prompts, "n_pool": pool.n_prompts,
              "load": load_average(), "runs": runs, "rows": rows, "summary": summarise(rows)}
    write(args.out, report, markdown(report))
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
