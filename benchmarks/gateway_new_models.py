"""Benchmark: a router learns models it was not trained on, through the real gateway, with no probes.

routerbench_subset, split in half by text hash (train / traffic pool). A cluster router (hashing embedder,
groups = the dataset's tasks) is trained on the train half without the ``--k`` best models (highest mean
quality on the train half: new models are usually better ones). The gateway's backends are all models on
the replay upstream (prices such that the logged cost matches the recorded one, as in loop_shift.py), so at
start-up the gateway takes on the k unknown ones from a pooled prior and their configured prices
(gateway/learning/adopt.py). ``--n`` requests (4 in flight) with Thompson exploration on the profile
posterior; the only feedback is the LLM judge (the replay judge, sampled at 1.0: the recorded quality of the
answering model), which updates the served model's profile online (gateway/learning/profile_store.py).

Reward = quality - cost / wtp (wtp = 10 x the largest mean model cost). References on the same request
sequence, offline from the full quality matrix: the frozen known-only router and a full-information cluster
router trained on the train half with every model. Gap recovered = (policy - frozen) / (full - frozen) on the
last 1,000 requests; goal (issue 21): >= 80% within 3,000 requests. Exploration cost = mean reward of the
router's own pick at each request (its deterministic decision, from the row's candidates) minus the served
model's.

    nice -n 10 .venv/bin/python benchmarks/gateway_new_models.py [--n 3000] [--k 2] [--seed 0]
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
import sqlalchemy as sa
from bench_report import command, load_average, utc_now, write
from loop_shift import prices, reward
from tqdm import tqdm

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset, hash_fraction
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger
from thalamus.router.cluster import ClusterRouter
from thalamus.router.policy import Knob, choose

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 250
EMBEDDER = "hashing"


def gateway_config(replay_url: str, pool: RoutingDataset, artifact: Path, ledger: Path, wtp: float,
                   seed: int, scale: float) -> dict[str, Any]:
    price = prices(pool)
    api = replay_url + "/v1"
    backends = [{"name": m, "provider": "openai-compatible", "model": m, "api_base": api,
                 "input_per_m": price[m], "output_per_m": price[m], "timeout": 30.0} for m in pool.models]
    backends.append({"name": "judge", "provider": "openai-compatible", "model": "judge", "api_base": api,
                     "input_per_m": 0.0, "output_per_m": 0.0, "timeout": 30.0, "max_retries": 0})
    router = {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "wtp", "value": wtp},
              "explore": {"kind": "thompson", "value": scale, "seed": seed}, "profile_sync_ms": 500}
    return {"backends": backends, "routers": {"r": router},
            "judge": {"backend": "judge", "sample": 1.0, "seed": seed, "queue_size": 10_000},
            "ledger": {"url": f"sqlite:///{ledger}", "store_prompts": True, "flush_ms": 20}}


async def drive(url: str, idx: list[int], pool: RoutingDataset) -> list[tuple[str, str]]:
    """(request id, served model) per request, 4 in flight; the judge gives the feedback."""
    out = [("", "")] * len(idx)
    sem = asyncio.Semaphore(4)
    bar = tqdm(total=len(idx), desc="requests", mininterval=5)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(k: int) -> None:
            async with sem:
                r = await client.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 8,
                                      "messages": [{"role": "user", "content": pool.texts[idx[k]]}]})
                bar.update()
                if r.status_code == 200:
                    out[k] = (r.headers["x-thalamus-request-id"], r.headers["x-thalamus-model"])
        for start in range(0, len(idx), 20):
            await asyncio.gather(*[one(k) for k in range(start, min(start + 20, len(idx)))])
    bar.close()
    return out


def offline_choice(router: ClusterRouter, texts: list[str], wtp: float) -> list[str]:
    q, c = router.predict_from_features(router.features(texts))
    return [router.models_[j] for j in choose(q, c, Knob("wtp", wtp), router.models_, router.cost_scale_)]


def own_picks(ledger: Path, ids: list[str], wtp: float) -> list[str]:
    """The router's deterministic choice at each request: max utility of the row's candidates."""
    db = Ledger(f"sqlite:///{ledger}")
    try:
        with db.engine.connect() as conn:
            rows: dict[str, str | None] = dict(conn.execute(sa.text("SELECT id, candidates FROM requests")).all())
    finally:
        db.close()
    picks = []
    for rid in ids:
        text = rows.get(rid)
        cands = json.loads(text) if text else {}
        picks.append(max(cands, key=lambda m: cands[m]["quality"] - cands[m]["cost"] / wtp) if cands else "")
    return picks


def windows(r: np.ndarray) -> list[float]:
    n = len(r) // WINDOW * WINDOW
    return [float(x) for x in np.nanmean(r[:n].reshape(-1, WINDOW), axis=1)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="explore.value: the posterior sd's scale")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gateway_new_models")
    args = ap.parse_args(argv)
    load_before = load_average()
    data = load_dataset("routerbench_subset")
    mask = np.array([hash_fraction(t, 11) < 0.5 for t in data.texts])
    train, pool = data.subset(mask, "train"), data.subset(~mask, "pool")
    order = np.argsort(-np.nanmean(train.quality, axis=0))
    new = [train.models[j] for j in order[:args.k]]
    known = [m for m in train.models if m not in new]
    frozen = ClusterRouter(embedder=EMBEDDER).fit(train.select_models(known))
    full = ClusterRouter(embedder=EMBEDDER).fit(train)
    wtp = 10 * full.cost_scale_
    idx = [int(i) for i in np.random.default_rng(args.seed).integers(0, pool.n_prompts, args.n)]
    texts = [pool.texts[i] for i in idx]
    curves = {"frozen known-only router": reward(pool, idx, offline_choice(frozen, texts, wtp), wtp),
              "full-information router": reward(pool, idx, offline_choice(full, texts, wtp), wtp)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadedServer(create_replay_app(pool), log_level="error") as replay:
        art = frozen.save(Path(tmp) / "known")
        ledger = Path(tmp) / "ledger.sqlite"
        cfg = config_from_dict(gateway_config(replay.url, pool, art, ledger, wtp, args.seed, args.scale))
        with ThreadedServer(create_app(cfg)) as gw:
            served = asyncio.run(drive(gw.url, idx, pool))
            time.sleep(3)  # the judge's last scores
            learned = gw.server.config.app.state.service.learning.profiles.stores["r"].router  # type: ignore[union-attr]
            end_picks = offline_choice(learned, texts, wtp)
            judged = gw.server.config.app.state.service.learning.profiles.stores["r"].observed  # type: ignore[union-attr]
        seconds = time.perf_counter() - t0
        picks = own_picks(ledger, [rid for rid, _ in served], wtp)
    models = [m for _, m in served]
    curves["gateway: served (Thompson exploration + judge feedback)"] = reward(pool, idx, models, wtp)
    curves["gateway: its own pick at each request (no exploration)"] = reward(pool, idx, picks, wtp)
    curves["gateway's router at the end, own picks (whole sequence)"] = reward(pool, idx, end_picks, wtp)
    last = slice(max(args.n - 1000, 0), args.n)
    f_last = float(np.nanmean(curves["frozen known-only router"][last]))
    u_last = float(np.nanmean(curves["full-information router"][last]))
    summary: dict[str, dict[str, Any]] = {
        name: {"mean_reward": float(np.nanmean(r)), "last_1000_reward": float(np.nanmean(r[last])),
               "windows": windows(r),
               "gap_recovered_last_1000": float((np.nanmean(r[last]) - f_last) / (u_last - f_last))
               if u_last != f_last else None} for name, r in curves.items()}
    new_share = [float(np.mean([m in new for m in models[s:s + WINDOW]])) for s in range(0, args.n, WINDOW)]
    explore_cost = float(np.nanmean(curves["gateway: its own pick at each request (no exploration)"]
                                    - curves["gateway: served (Thompson exploration + judge feedback)"]))
    explored = float(np.mean([m != p for m, p in zip(models, picks, strict=True)]))
    served_gap = summary["gateway: served (Thompson exploration + judge feedback)"]["gap_recovered_last_1000"]
    report = {"when": utc_now(), "command": command("gateway_new_models.py", argv), "load_before": load_before,
              "load_after": load_average(), "n": args.n, "k": args.k, "new_models": new, "known_models": known,
              "wtp": wtp, "scale": args.scale, "embedder": EMBEDDER, "summary": summary,
              "new_model_share_per_window": new_share,
              "exploration_cost_per_request": explore_cost, "explored_share": explored, "judge_scores_learned": judged,
              "seconds": seconds, "goal_met": served_gap is not None and served_gap >= 0.8}
    lines = [f"# A router learns models it was not trained on, through the real gateway ({report['when']})", "",
             f"Command: `{report['command']}`", "",
             f"routerbench_subset; cluster router ({EMBEDDER} embedder, task groups) trained on the train half "
             f"without the {args.k} best models ({', '.join(new)}); the gateway serves all {len(pool.models)} "
             f"and takes the new ones on from a pooled prior and their prices. {args.n} requests (4 in flight) "
             f"through the real gateway (replay upstream), Thompson exploration on the profile posterior "
             f"(sd scale {args.scale:g}), feedback "
             f"only from the replay judge ({judged} scores learned); reward = quality - cost / {wtp:.4g}. "
             f"{seconds:.0f} s; load average before {load_before}, after {report['load_after']}.", "",
             "| policy | mean reward | reward, last 1000 | gap recovered (last 1000) |", "|---|---|---|---|"]
    for name, s in summary.items():
        gap = s["gap_recovered_last_1000"]
        lines.append(f"| {name} | {s['mean_reward']:.4f} | {s['last_1000_reward']:.4f} | "
                     f"{'' if gap is None else f'{gap:.0%}'} |")
    lines += ["", f"Reward per {WINDOW} requests:", "",
              "| window | " + " | ".join(summary) + " | share to new models |", "|---" * (len(summary) + 2) + "|"]
    for w in range(len(new_share)):
        cells = [f"{s['windows'][w]:.4f}" if w < len(s["windows"]) else "" for s in summary.values()]
        lines.append(f"| {(w + 1) * WINDOW} | " + " | ".join(cells) + f" | {new_share[w]:.0%} |")
    lines += ["", f"Exploration cost: {explore_cost:.4f} reward per request (the router's own pick minus the served "
              f"model, over all {args.n}); {explored:.0%} of requests served by another model than the router's "
              "own pick.", "",
              f"Goal (>= 80% of the gap recovered within {args.n} requests, served traffic): "
              f"{'met' if report['goal_met'] else 'NOT met'}.", ""]
    write(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
