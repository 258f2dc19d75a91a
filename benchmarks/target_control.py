"""Benchmark 3 of the learning loop: the controller holds the strong-model share when traffic drifts.

llmrouter_dcrouter: a kNN router (k=50, MiniLM) trained on half of the prompts (by text hash), routing
between llama-3.3-nemotron-super-49b (strong) and qwen2.5-7b (weak), the knob's allowed pair; the
other half is the traffic pool. A prompt is "hard" when the strong model's recorded quality is at
least 0.25 above the weak one's. (routerbench_subset was tried first: with its binary outcomes every
router's strong share moves in steps of 20-50 points as lambda moves, so no knob value gives 30%.)
Traffic: ``--n`` requests with 20% hard
prompts, then ``--n`` with 40% (the share doubles). Two real gateways (uvicorn on 127.0.0.1, the
replay upstream) get the same request sequence, both starting at the lambda calibrated to a 30%
strong share on a phase-1 sample: one with the knob fixed, one with the controller
(target strong_share 0.3). Goal (issue 13): the controlled share within +-3 points of 30% after 500
requests of the new mix, where the fixed knob drifts.

    .venv/bin/python benchmarks/target_control.py [--n 1500] [--seed 0]
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
from thalamus.gateway.learning.controller import smallest_lambda
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger
from thalamus.router.embedders import get_embedder
from thalamus.router.knn import KNNRouter
from thalamus.router.policy import Knob, choose

ROOT = Path(__file__).resolve().parent.parent
DATASET = "llmrouter_dcrouter"
STRONG = "llama-3.3-nemotron-super-49b-v1"
WEAK = "qwen2.5-7b-instruct"  # the router routes between this pair (RouteLLM's setting)
HARD_MARGIN = 0.25  # a prompt is hard when the strong model scores this much above the weak one
TARGET = 0.30
SHARES = (0.2, 0.4)
WINDOW = 200


def traffic(pool: RoutingDataset, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    margin = pool.quality[:, pool.models.index(STRONG)] - pool.quality[:, pool.models.index(WEAK)]
    hard = margin >= HARD_MARGIN
    rng = np.random.default_rng(seed)
    picks = []
    for share in SHARES:
        is_hard = rng.random(n) < share
        picks += [int(rng.choice(np.flatnonzero(hard if h else ~hard))) for h in is_hard]
    return [pool.texts[i] for i in picks], hard[picks]


def config(replay_url: str, pool: RoutingDataset, artifact: Path, ledger: Path, knob: float,
           controlled: bool) -> dict[str, Any]:
    backends = [{"name": m, "provider": "openai-compatible", "model": m, "api_base": replay_url + "/v1",
                 "input_per_m": 1.0, "output_per_m": 1.0, "timeout": 30.0} for m in pool.models]
    router: dict[str, Any] = {"artifact": str(artifact), "aliases": ["auto"],
                              "knob": {"kind": "lambda", "value": knob, "allowed": [STRONG, WEAK]}}
    if controlled:
        router["controller"] = {"target": "strong_share", "value": TARGET, "strong": STRONG, "window": WINDOW,
                                "min_rows": 50, "interval_s": 1.0, "max_step": 0.05}
    return {"backends": backends, "routers": {"r": router},
            "ledger": {"url": f"sqlite:///{ledger}", "flush_ms": 50}}


async def drive(url: str, texts: list[str]) -> list[str]:
    """The requests in order (4 in flight), returning the model that answered each."""
    out: list[str] = [""] * len(texts)
    sem = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(i: int) -> None:
            async with sem:
                r = await client.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 8,
                                      "messages": [{"role": "user", "content": texts[i]}]})
                out[i] = r.headers.get("x-thalamus-model", "") if r.status_code == 200 else ""
        for start in range(0, len(texts), 50):  # in blocks, so arrival order is kept within 50 requests
            await asyncio.gather(*[one(i) for i in range(start, min(start + 50, len(texts)))])
    return out


def rolling(strong: np.ndarray, window: int = WINDOW) -> np.ndarray:
    c = np.cumsum(np.insert(strong.astype(float), 0, 0))
    return (c[window:] - c[:-window]) / window


def run_gateway(replay: ThreadedServer, pool: RoutingDataset, artifact: Path, work: Path, knob: float,
                controlled: bool, texts: list[str]) -> dict[str, Any]:
    ledger = work / f"{'ctl' if controlled else 'fixed'}.sqlite"
    cfg = config_from_dict(config(replay.url, pool, artifact, ledger, knob, controlled))
    t0 = time.perf_counter()
    with ThreadedServer(create_app(cfg)) as gw:
        models = asyncio.run(drive(gw.url, texts))
        state = httpx.get(gw.url + "/api/controller").json()["controllers"]
    db = Ledger(f"sqlite:///{ledger}")
    rows = db.recent(limit=10**6).sort_values("created_at")
    db.close()
    return {"models": models, "seconds": time.perf_counter() - t0, "controller": state,
            "knobs": [json.loads(k)["value"] for k in rows["knob"]]}


def plot(res: dict[str, dict[str, Any]], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thalamus.eval.plots import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, r in res.items():
        share = rolling(np.array([m == STRONG for m in r["models"]]))
        a.plot(np.arange(WINDOW, len(r["models"]) + 1), share, label=name)
        b.plot(r["knobs"], label=name)
    a.axhspan(TARGET - 0.03, TARGET + 0.03, color="green", alpha=0.15, label="target +-3 points")
    for ax in (a, b):
        ax.axvline(n, color="grey", ls=":", label="hard share 20% -> 40%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set(xlabel="request", ylabel=f"strong-model share (last {WINDOW})", title="strong share under drift")
    b.set(xlabel="request", ylabel="lambda used", title="knob")
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/target_control")
    args = ap.parse_args(argv)
    data = load_dataset(DATASET)
    train_mask = np.array([hash_fraction(t, 11) < 0.5 for t in data.texts])
    train, pool = data.subset(train_mask, "train"), data.subset(~train_mask, "pool")
    router = KNNRouter(k=50, embedder="minilm").fit(train, features=get_embedder("minilm").embed(train.texts))
    texts, hard = traffic(pool, args.n, args.seed)
    q, c = router.predict_quality(texts[: args.n]), router.predict_cost(texts[: args.n])
    s = router.models_.index(STRONG)
    knob = smallest_lambda(lambda lam: float(np.mean(choose(q, c, Knob("lambda", lam, allowed=(STRONG, WEAK)),
                                                            router.models_, router.cost_scale_) == s)), TARGET)
    res: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadedServer(create_replay_app(pool), log_level="error") as replay:
        artifact = router.save(Path(tmp) / "knn")
        for name, controlled in (("fixed knob", False), ("controller", True)):
            res[name] = run_gateway(replay, pool, artifact, Path(tmp), knob, controlled, texts)
            print(f"{name}: {len(texts)} requests in {res[name]['seconds']:.0f} s", flush=True)
    summary = {}
    for name, r in res.items():
        strong = np.array([m == STRONG for m in r["models"]])
        after = rolling(strong)[args.n + 500 - WINDOW:]  # windows ending >= 500 requests into the new mix
        summary[name] = {"phase1_share": float(strong[: args.n].mean()), "phase2_share": float(strong[args.n:].mean()),
                         "share_after_500": float(strong[args.n + 500:].mean()),
                         "max_window_deviation_after_500": float(np.abs(after - TARGET).max()),
                         "final_knob": r["knobs"][-1], "seconds": r["seconds"]}
    plot(res, args.n, args.out.with_suffix(".png"))
    ctl = summary["controller"]
    met = abs(ctl["share_after_500"] - TARGET) <= 0.03
    report = {"when": utc_now(), "command": command("target_control.py", argv), "load": load_average(),
              "start_knob": knob, "hard_share": [float(hard[: args.n].mean()), float(hard[args.n:].mean())],
              "summary": summary, "goal_met": met, "controller_state": res["controller"]["controller"]}
    lines = [f"# Target control under drift ({report['when']})", "", f"Command: `{report['command']}`", "",
             f"{DATASET}, kNN k=50 (MiniLM) between {STRONG} and {WEAK}; target share {TARGET:.0%}. "
             f"{args.n} requests at {report['hard_share'][0]:.0%} hard prompts then {args.n} at "
             f"{report['hard_share'][1]:.0%}; both gateways start at lambda {knob:.4f}. "
             f"Load average: {report['load']}.",
             "", "| gateway | share phase 1 | share phase 2 | share after 500 of phase 2 | max rolling-200 deviation "
             "after 500 | final lambda |", "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['phase1_share']:.1%} | {s['phase2_share']:.1%} | {s['share_after_500']:.1%} | "
                     f"{s['max_window_deviation_after_500'] * 100:.1f} points | {s['final_knob']:.4f} |")
    lines += ["", f"Goal (controlled share within +-3 points of 30% after 500 requests of the new mix): "
              f"{'met' if met else 'NOT met'}. Plot: ![target control](target_control.png)", ""]
    write(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
