"""Benchmark 2 of the learning loop: does the loop recover under distribution shift?

routerbench_subset, split in half by text hash (train / traffic pool). The starting routers know one
task only (arc-challenge rows of the train half); the traffic (``--n`` requests drawn from the pool)
has every task (arc-challenge, winogrande, mbpp). Reward = quality - cost / wtp (wtp = 10 x the
largest mean model cost), the same for every policy. Through the real gateway (uvicorn on 127.0.0.1,
replay upstream, SQLite ledger; feedback = recorded quality of the answering model):

- ``online linucb``: a LinUCB router warm-started on the arc rows, learning from every feedback in
  the gateway process;
- ``retrain kNN every N``: a kNN router (arc rows) with epsilon 0.1 exploration; every ``--every``
  requests a kNN is fitted on the arc rows plus the ledger and the gateway hot-reloads it through its
  admin endpoint. Two methods: ``ips`` (sparse logged rows repeated by clipped inverse propensity,
  ``thalamus.training.retrain``) and ``shrink`` (every model of every logged prompt = the starting
  kNN's prediction corrected by the feedback near it, ``thalamus.training.shrink``; the default of
  ``thalamus retrain``). Each is also scored on its own picks before exploration (the artifact's
  decision), and the frozen kNN under the same exploration is a reference (its expected reward).

References on the same request sequence (offline, from the full quality matrix): the frozen starting
kNN and a kNN trained with full information on the whole train half. Goal (issue 13): a loop
recovers >= 80% of the frozen-to-full gap within 3,000 requests (measured on the last 1,000).

    .venv/bin/python benchmarks/loop_shift.py [--n 3000] [--every 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
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
from thalamus.router.bandit import LinUCBRouter
from thalamus.router.embedders import get_embedder
from thalamus.router.knn import KNNRouter
from thalamus.router.policy import Knob, choose
from thalamus.training.retrain import training_set
from thalamus.training.shrink import shrunk_training_set

ROOT = Path(__file__).resolve().parent.parent
START_TASK = "arc-challenge"
WINDOW = 250
ADMIN = {"Authorization": "Bearer bench"}


def prices(pool: RoutingDataset) -> dict[str, float]:
    """USD per million tokens per model such that the gateway's logged cost (tokens x price) matches the
    dataset's recorded cost on the median prompt: the loop must learn the costs the reward uses."""
    from thalamus.gateway.wire.protocol import estimate_prompt_tokens, estimate_tokens

    prompt = np.array([estimate_prompt_tokens([{"role": "user", "content": t}]) for t in pool.texts], dtype=float)
    out = {}
    for j, m in enumerate(pool.models):
        if pool.output_tokens is not None:
            completion = pool.output_tokens[:, j].astype(float)
        else:
            completion = np.array([estimate_tokens(str(r)) for r in pool.responses[:, j]], dtype=float)
        out[m] = float(np.nanmedian(pool.cost[:, j] / (prompt + completion)) * 1e6)
    return out


def gateway_config(replay_url: str, pool: RoutingDataset, artifact: Path, ledger: Path, wtp: float,
                   explore: bool) -> dict[str, Any]:
    price = prices(pool)
    backends = [{"name": m, "provider": "openai-compatible", "model": m, "api_base": replay_url + "/v1",
                 "input_per_m": price[m], "output_per_m": price[m], "timeout": 30.0} for m in pool.models]
    router: dict[str, Any] = {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "wtp", "value": wtp},
                              "checkpoint_every": 10**6}
    if explore:
        router["explore"] = {"kind": "epsilon", "value": 0.1, "seed": 0}
    return {"backends": backends, "routers": {"r": router}, "admin": {"enabled": True, "key": "bench"},
            "ledger": {"url": f"sqlite:///{ledger}", "store_prompts": True, "flush_ms": 20}}


async def drive(url: str, idx: list[int], pool: RoutingDataset) -> list[str]:
    """Requests in blocks of 20 (4 in flight), each fed back with its recorded quality."""
    out = [""] * len(idx)
    sem = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(k: int) -> None:
            async with sem:
                i = idx[k]
                r = await client.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 8,
                                      "messages": [{"role": "user", "content": pool.texts[i]}]})
                if r.status_code != 200:
                    return
                model = r.headers["x-thalamus-model"]
                out[k] = model
                await client.post("/v1/feedback", json={"request_id": r.headers["x-thalamus-request-id"],
                                                        "score": float(pool.quality[i, pool.models.index(model)])})
        for start in range(0, len(idx), 20):
            await asyncio.gather(*[one(k) for k in range(start, min(start + 20, len(idx)))])
    return out


def offline_choice(router: KNNRouter, X: np.ndarray, wtp: float) -> list[str]:
    q, c = router.predict_from_features(X)
    return [router.models_[j] for j in choose(q, c, Knob("wtp", wtp), router.models_, router.cost_scale_)]


def reward(pool: RoutingDataset, idx: list[int], models: list[str], wtp: float) -> np.ndarray:
    out = np.full(len(idx), np.nan)
    for k, (i, m) in enumerate(zip(idx, models, strict=True)):
        if m:
            j = pool.models.index(m)
            out[k] = pool.quality[i, j] - pool.cost[i, j] / wtp
    return out


def run_online(replay: ThreadedServer, pool: RoutingDataset, warm: RoutingDataset, Xw: np.ndarray,
               idx: list[int], wtp: float, work: Path) -> list[str]:
    art = LinUCBRouter(embedder="minilm", alpha=0.5, wtp=wtp).fit(warm, features=Xw).save(work / "linucb")
    cfg = config_from_dict(gateway_config(replay.url, pool, art, work / "online.sqlite", wtp, explore=False))
    with ThreadedServer(create_app(cfg)) as gw:
        return asyncio.run(drive(gw.url, idx, pool))


def run_retrain(replay: ThreadedServer, pool: RoutingDataset, warm: RoutingDataset, Xw: np.ndarray,
                idx: list[int], Xs: np.ndarray, wtp: float, every: int, method: str, work: Path
                ) -> tuple[list[str], list[str]]:
    """(served models, the serving artifact's own picks before exploration) over the request sequence."""
    start_router = KNNRouter(k=50, embedder="minilm").fit(warm, features=Xw)
    art = start_router.save(work / f"{method}-0")
    ledger = work / f"retrain-{method}.sqlite"
    cfg = config_from_dict(gateway_config(replay.url, pool, art, ledger, wtp, explore=True))
    models: list[str] = []
    greedy: list[str] = []
    serving = start_router
    with ThreadedServer(create_app(cfg)) as gw:
        for start in range(0, len(idx), every):
            greedy += offline_choice(serving, Xs[start:start + every], wtp)
            models += asyncio.run(drive(gw.url, idx[start:start + every], pool))
            db = Ledger(f"sqlite:///{ledger}")
            rows = db.rows_with_feedback()
            db.close()
            serving = KNNRouter(k=50, embedder="minilm")
            ts = (training_set(rows, serving, base=warm, clip=10.0) if method == "ips"
                  else shrunk_training_set(rows, serving, prior=start_router, base=warm))
            out = serving.fit(ts.dataset, features=ts.features).save(work / f"{method}-{start + every}")
            r = httpx.post(gw.url + "/admin/routers/r/reload", json={"artifact": str(out)}, headers=ADMIN, timeout=60)
            r.raise_for_status()
            print(f"  {method}: retrained on {ts.logged_requests} logged requests at {start + every}", flush=True)
    return models, greedy


def explored(pool: RoutingDataset, idx: list[int], picks: list[str], wtp: float, epsilon: float) -> np.ndarray:
    """Expected reward of ``picks`` under the gateway's epsilon exploration (a uniform model otherwise)."""
    uniform = np.nanmean(pool.quality[idx] - pool.cost[idx] / wtp, axis=1)
    return (1 - epsilon) * reward(pool, idx, picks, wtp) + epsilon * uniform


def plot(curves: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thalamus.eval.plots import save_figure

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, r in curves.items():
        n = len(r) // WINDOW * WINDOW
        w = np.nanmean(r[:n].reshape(-1, WINDOW), axis=1)
        ax.plot(np.arange(1, len(w) + 1) * WINDOW, w, marker="o", label=name)
    ax.set(xlabel="request", ylabel=f"mean reward per {WINDOW} requests", title="the loop under distribution shift")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loop_shift")
    args = ap.parse_args(argv)
    data = load_dataset("routerbench_subset")
    mask = np.array([hash_fraction(t, 11) < 0.5 for t in data.texts])
    train, pool = data.subset(mask, "train"), data.subset(~mask, "pool")
    warm = train.subset(train.tasks == START_TASK, "warm")
    emb = get_embedder("minilm")
    Xw, Xt = emb.embed(warm.texts), emb.embed(train.texts)
    idx = [int(i) for i in np.random.default_rng(args.seed).integers(0, pool.n_prompts, args.n)]
    Xs = emb.embed([pool.texts[i] for i in idx])
    frozen = KNNRouter(k=50, embedder="minilm").fit(warm, features=Xw)
    wtp = 10 * frozen.cost_scale_
    full = KNNRouter(k=50, embedder="minilm").fit(train, features=Xt)
    bandit = LinUCBRouter(embedder="minilm", alpha=0.5, wtp=wtp).fit(warm, features=Xw)
    frozen_bandit = [bandit.route_features(Xs[k:k + 1], Knob("wtp", wtp)).model for k in range(len(idx))]
    curves = {"frozen start (kNN, arc only)": reward(pool, idx, offline_choice(frozen, Xs, wtp), wtp),
              "frozen start (linucb, arc only, no updates)": reward(pool, idx, frozen_bandit, wtp),
              "full information (kNN, all tasks)": reward(pool, idx, offline_choice(full, Xs, wtp), wtp)}
    curves["frozen start (kNN) with epsilon 0.1 (expected)"] = explored(pool, idx, offline_choice(frozen, Xs, wtp),
                                                                          wtp, 0.1)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadedServer(create_replay_app(pool), log_level="error") as replay:
        t0 = time.perf_counter()
        curves["online linucb"] = reward(pool, idx, run_online(replay, pool, warm, Xw, idx, wtp, Path(tmp)), wtp)
        seconds["online linucb"] = time.perf_counter() - t0
        for method in ("ips", "shrink"):
            name = f"retrain kNN every {args.every} ({method})"
            t0 = time.perf_counter()
            served, greedy = run_retrain(replay, pool, warm, Xw, idx, Xs, wtp, args.every, method, Path(tmp))
            curves[name] = reward(pool, idx, served, wtp)
            curves[f"{name}: its own picks, before exploration"] = reward(pool, idx, greedy, wtp)
            seconds[name] = time.perf_counter() - t0
            print(f"{name}: {seconds[name]:.0f} s", flush=True)
    last = slice(max(args.n - 1000, 0), args.n)
    f_last = float(np.nanmean(curves["frozen start (kNN, arc only)"][last]))
    u_last = float(np.nanmean(curves["full information (kNN, all tasks)"][last]))
    summary = {name: {"mean_reward": float(np.nanmean(r)), "last_1000_reward": float(np.nanmean(r[last])),
                      "gap_recovered_last_1000": float((np.nanmean(r[last]) - f_last) / (u_last - f_last))
                      if u_last != f_last else None} for name, r in curves.items()}
    plot(curves, args.out.with_suffix(".png"))
    best = max(v["gap_recovered_last_1000"] or -np.inf for k, v in summary.items()
               if not k.startswith(("frozen", "full")))
    report = {"when": utc_now(), "command": command("loop_shift.py", argv), "load": load_average(), "wtp": wtp,
              "n": args.n, "every": args.every, "summary": summary, "seconds": seconds, "goal_met": best >= 0.8}
    lines = [f"# The loop under distribution shift ({report['when']})", "", f"Command: `{report['command']}`", "",
             f"routerbench_subset; start routers trained on {warm.n_prompts} {START_TASK} prompts; {args.n} requests "
             f"over every task through the real gateway; reward = quality - cost / {wtp:.4g}. "
             f"Load average: {report['load']}.", "",
             "| policy | mean reward | reward, last 1000 | share of the frozen-to-full gap recovered (last 1000) |",
             "|---|---|---|---|"]
    for name, s in summary.items():
        gap = s["gap_recovered_last_1000"]
        lines.append(f"| {name} | {s['mean_reward']:.4f} | {s['last_1000_reward']:.4f} | "
                     f"{'' if gap is None else f'{gap:.0%}'} |")
    lines += ["", f"Goal (>= 80% of the gap recovered within {args.n} requests): "
              f"{'met' if report['goal_met'] else 'NOT met'}. Plot: ![loop under shift](loop_shift.png)", ""]
    write(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
