"""Why DR misses 0.01 in benchmarks/ope_accuracy.py: would a better direct-method reward model help?

A simulation of that benchmark's setting without the gateway (cheap: a few minutes): the same dataset
split, logging router (kNN k=50, lambda 0.1, epsilon 0.1) and candidates; per seed 5,000 prompts from
the pool, actions drawn from the logged distribution, reward = recorded quality. DR is computed with
several reward models ``rhat`` and with weight clipping, against the truth on the same rows:

- ``shift``: the logger's predictions shifted per model (thalamus.training.ope.calibrated, what ships)
- ``linear``: a per-model linear calibration of the logger's predictions on the logged rows
- ``xknn``: a per-model kNN regression (k=50, cosine) on the logged rows, cross-fitted in two folds
- ``blend``: the mean of ``shift`` and ``xknn``

It also reports each reward model's residual standard deviation: DR's variance is
mean(w^2 (r - rhat)^2) / n, so a reward model can only help as far as it explains per-prompt quality.

    .venv/bin/python benchmarks/ope_dm_study.py [--seeds 0-9] [--n 5000]
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_report import command, load_average, utc_now, write
from ope_accuracy import CANDIDATES, DATASET, LOGGER, parse_seeds, split

from thalamus.datasets.registry import load_dataset
from thalamus.router.embedders import get_embedder
from thalamus.router.policy import choose
from thalamus.router.registry import make_router
from thalamus.training.ope import calibrated

ROOT = Path(__file__).resolve().parent.parent
EPSILON = 0.1
CLIPS = (None, 30.0, 10.0)


def linear(pred: np.ndarray, observed: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Per model: observed ~ a + b * pred on the rows it answered (a shift where too few rows)."""
    out = np.array(pred, dtype=np.float64)
    for j in range(out.shape[1]):
        rows = action == j
        if rows.sum() >= 5:
            coef, *_ = np.linalg.lstsq(np.c_[np.ones(rows.sum()), out[rows, j]], observed[rows], rcond=None)
            out[:, j] = coef[0] + coef[1] * out[:, j]
        elif rows.any():
            out[:, j] += float(np.mean(observed[rows] - out[rows, j]))
    return np.clip(out, 0.0, 1.0)


def crossfit_knn(X: np.ndarray, observed: np.ndarray, action: np.ndarray, m: int, rng: np.random.Generator,
                 k: int = 50, folds: int = 2) -> np.ndarray:
    """Per-model kNN mean of the logged rewards of that model, never using a row's own fold."""
    n = len(action)
    out = np.zeros((n, m))
    fold = rng.integers(0, folds, n)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    for f in range(folds):
        train, test = fold != f, fold == f
        for j in range(m):
            rows = np.flatnonzero(train & (action == j))
            if len(rows) < k:
                out[test, j] = observed[train].mean()
                continue
            sims = Xn[test] @ Xn[rows].T
            nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            out[test, j] = observed[rows][nearest].mean(axis=1)
    return out


def setting() -> dict[str, Any]:
    """Pool quality, logger predictions and greedy choice, each candidate's choice, pool embeddings."""
    train, pool = split(load_dataset(DATASET))
    embedder = get_embedder("minilm")
    Xt, Xp = embedder.embed(train.texts), embedder.embed(pool.texts)
    logger = make_router(LOGGER[0], embedder="minilm", **LOGGER[1]).fit(train, features=Xt)
    qhat, chat = logger.predict_from_features(Xp)
    models = logger.models_
    picks = {}
    for label, (name, params, knob) in CANDIDATES.items():
        router = make_router(name, embedder="minilm", **params).fit(train, features=Xt)
        q, c = router.predict_from_features(Xp)
        chosen = choose(q, c, knob, router.models_, router.cost_scale_)
        picks[label] = np.array([models.index(router.models_[j]) for j in chosen])
    return {"Q": pool.quality[:, [pool.models.index(x) for x in models]], "qhat": qhat, "X": Xp, "picks": picks,
            "greedy": choose(qhat, chat, LOGGER[2], models, logger.cost_scale_), "m": len(models)}


def reward_models(s: dict[str, Any], rows: np.ndarray, r: np.ndarray, act: np.ndarray,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    shift = calibrated(s["qhat"][rows], r, act)
    xknn = crossfit_knn(s["X"][rows], r, act, s["m"], rng)
    return {"shift": shift, "linear": linear(s["qhat"][rows], r, act), "xknn": xknn, "blend": (shift + xknn) / 2}


def run_seed(s: dict[str, Any], seed: int, n: int, errors: dict[str, list[float]],
             resid: dict[str, list[float]]) -> None:
    rng = np.random.default_rng(seed)
    m, idx = s["m"], np.arange(n)
    rows = rng.integers(0, len(s["Q"]), n)
    p = np.full((n, m), EPSILON / m)
    p[idx, s["greedy"][rows]] += 1 - EPSILON
    act = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    Q = s["Q"][rows]
    r, mu = Q[idx, act], p[idx, act]
    for name, vhat in reward_models(s, rows, r, act, rng).items():
        resid[name].append(float(np.std(r - vhat[idx, act])))
        for label in CANDIDATES:
            pi = np.zeros((n, m))
            pi[idx, s["picks"][label][rows]] = 1.0
            truth, dm = float((pi * Q).sum(axis=1).mean()), (pi * vhat).sum(axis=1)
            errors[f"{name} DM only"].append(float(dm.mean()) - truth)
            w = pi[idx, act] / mu
            for clip in CLIPS:
                wc = w if clip is None else np.minimum(w, clip)
                key = f"{name} DR" + ("" if clip is None else f" clip {clip:g}")
                errors[key].append(float((dm + wc * (r - vhat[idx, act])).mean()) - truth)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Reward models for DR: a simulation of the OPE accuracy setting ({report['when']})", "",
             f"Command: `{report['command']}`", "",
             f"{DATASET}, logger kNN k=50 lambda 0.1 with epsilon {EPSILON}, {report['n']} rows per seed, seeds "
             f"{report['seeds']} x {len(CANDIDATES)} candidates; no gateway (actions drawn from the logged "
             f"distribution). Load average at the end: {report['load']}.", "",
             "Residual std of the logged reward (r - rhat on the logged action); raw std of r: "
             f"{report['raw_std']:.3f}",
             "", "| reward model | residual std |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in report["residual_std"].items()]
    lines += ["", "| estimator | mean abs error | bias | share within 0.01 |", "|---|---|---|---|"]
    for key, v in report["summary"].items():
        lines.append(f"| {key} | {v['mean_abs_error']:.4f} | {v['bias']:+.4f} | {v['share_within_0.01']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ope_dm_study")
    args = ap.parse_args(argv)
    s = setting()
    errors: dict[str, list[float]] = defaultdict(list)
    resid: dict[str, list[float]] = defaultdict(list)
    for seed in parse_seeds(args.seeds):
        run_seed(s, seed, args.n, errors, resid)
    summary = {k: {"mean_abs_error": float(np.mean(np.abs(e))), "bias": float(np.mean(e)),
                   "share_within_0.01": float(np.mean(np.abs(e) <= 0.01))} for k, e in sorted(errors.items())}
    report = {"when": utc_now(), "command": command("ope_dm_study.py", argv), "n": args.n, "seeds": args.seeds,
              "load": load_average(), "raw_std": float(np.std(s["Q"])),
              "residual_std": {k: float(np.mean(v)) for k, v in resid.items()}, "summary": summary}
    write(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
