"""Leave models out (issue 21): can a cluster router take models it was not trained on from a few probes?

Per dataset: a cluster router is trained on the train split without k models (the known-only router),
and with every model (the full-information router). The k held-out models are then onboarded into a
copy of the known-only router (pooled prior, router/profiles.py) from N probes of the train split,
stratified over the router's groups (training/probes.choose_probes) and graded offline through the
same functions as ``thalamus onboard``: ``recorded`` (training/graders.recorded_scores: the dataset's
recorded quality) and ``agreement`` (graders.agreement_scores on the recorded answers, for datasets that
record answer texts). Each router then routes the test split among its models.

Reported per draw and N: quality at lambda 0 and the share of the known-only -> full-information gap it
recovers, and the cost saving at the best single model's quality (eval/metrics on the lambda sweep's
hull). Draw 0 holds out the best k models (by mean train quality), as when better models come out;
the others hold out k random models. Goals: recorded@200 >= 90 % recovered, agreement@200 >= 50 %,
and no N in no draw worse than known-only.

    nice -n 10 .venv/bin/python benchmarks/leave_models_out.py
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_report import command, load_average, utc_now, write

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset, hash_fraction
from thalamus.eval.metrics import best_single, cost_saving, operating_point, upper_hull
from thalamus.eval.sweep import predict, sweep_lambda
from thalamus.router.cluster import ClusterRouter
from thalamus.router.embedders import get_embedder
from thalamus.router.policy import Knob, choose
from thalamus.training.graders import agreement_scores, recorded_scores
from thalamus.training.probes import ProbeSet, assignments, choose_probes

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {"llmrouter_dcrouter": 2, "routerdc_7model": 2, "routerbench_subset": 3}  # k held out
NS = (0, 25, 50, 100, 200, 500)
HARD = True
CAUTION = 1.0  # --caution
TOL = 0.002  # a quality loss below this (0.2 points) is counted as noise, not as worse


def split(name: str, max_train: int, max_test: int) -> tuple[RoutingDataset, RoutingDataset]:
    """A 60/40 split by prompt hash (llmrouter_dcrouter's own test split has 500 prompts: too few to see
    a 0.01 difference), capped in size to keep the run short."""
    ds = load_dataset(name).complete_rows()
    is_test = np.array([hash_fraction(t, 21) < 0.4 for t in ds.texts])
    train, test = ds.subset(~is_test, f"{name}[train]"), ds.subset(is_test, f"{name}[test]")
    rng = np.random.default_rng(0)
    if train.n_prompts > max_train:
        train = train.subset(np.sort(rng.choice(train.n_prompts, max_train, replace=False)))
    if test.n_prompts > max_test:
        test = test.subset(np.sort(rng.choice(test.n_prompts, max_test, replace=False)))
    return train, test


def evaluate(router: ClusterRouter, X: np.ndarray, test: RoutingDataset, ref: dict[str, Any]) -> dict[str, Any]:
    """Quality at lambda 0 and the cost saving at best-single quality on the test split."""
    cols = [test.models.index(m) for m in router.models_]
    q, c = test.quality[:, cols], test.cost[:, cols]
    pred = predict(router, X)
    top = operating_point(q, c, choose(pred.quality, pred.cost, Knob("lambda", 0.0), router.models_, 1.0))
    points = sweep_lambda(pred, q, c, router.models_)
    hull = upper_hull(np.array([p.point.cost for p in points]), np.array([p.point.quality for p in points]))
    return {"quality": top.quality, "cost": top.cost,
            "saving": cost_saving(hull, ref["best_quality"], ref["best_cost"])}


def draws(train: RoutingDataset, k: int, n_draws: int, seed: int) -> list[list[str]]:
    means = np.nanmean(train.quality, axis=0)
    out = [[train.models[j] for j in np.argsort(-means)[:k]]]
    rng = np.random.default_rng(seed)
    while len(out) < n_draws:
        pick = sorted(train.models[j] for j in rng.choice(train.n_models, k, replace=False))
        if pick not in [sorted(d) for d in out]:
            out.append(pick)
    return out


def graded(grader: str, known: ClusterRouter, probes: ProbeSet, model: str, rows: np.ndarray,
           probs: np.ndarray) -> np.ndarray:
    if grader == "recorded":
        return recorded_scores(probes, model, rows)
    ds = probes.dataset
    assert ds is not None and ds.responses is not None
    col = ds.models.index(model)
    answers = [a if isinstance(a := ds.responses[r, col], str) and a else None for r in rows]
    return agreement_scores(known, probes, model, rows, answers, probs, known.embedder_in_use())


def onboarded(known: ClusterRouter, held: list[str], scores: dict[str, np.ndarray], costs: dict[str, np.ndarray],
              probs: np.ndarray, n: int) -> ClusterRouter:
    router = copy.deepcopy(known)
    for model in held:
        router.add_model(model, "pooled")
        if n:
            router.observe(model, probs[:n], scores[model][:n], costs[model][:n])
    return router


def recovered(value: float | None, low: float | None, high: float | None) -> float | None:
    if value is None or low is None or high is None or high - low < 0.005:
        return None
    return (value - low) / (high - low)


def run_draw(train: RoutingDataset, test: RoutingDataset, Xtr: np.ndarray, Xte: np.ndarray, held: list[str],
             graders: list[str], full: dict[str, Any], ref: dict[str, Any], embedder: str,
             seed: int) -> dict[str, Any]:
    known_models = [m for m in train.models if m not in held]
    known = ClusterRouter(embedder=embedder, seed=seed, caution=CAUTION).fit(train.select_models(known_models), Xtr)
    base = evaluate(known, Xte, test, ref)
    probes = ProbeSet(train.name, train.texts, train)
    rows, probs = choose_probes(known, probes, max(NS), seed)
    probs_full = assignments(known, probs, [str(t) for t in train.tasks[rows]]) if HARD else probs
    costs = {m: train.cost[rows, train.models.index(m)] for m in held}
    out: dict[str, Any] = {"held_out": held, "known_only": base, "full": full, "graders": {}}
    for grader in graders:
        scores = {m: graded(grader, known, probes, m, rows, probs_full) for m in held}
        per_n = []
        for n in NS:
            res = evaluate(onboarded(known, held, scores, costs, probs_full, n), Xte, test, ref)
            res |= {"n": n, "quality_recovered": recovered(res["quality"], base["quality"], full["quality"]),
                    "saving_recovered": recovered(res["saving"], base["saving"], full["saving"]),
                    "worse_than_known": res["quality"] < base["quality"] - TOL}
            per_n.append(res)
        out["graders"][grader] = per_n
    return out


def run_dataset(name: str, k: int, n_draws: int, embedder: str, max_train: int, max_test: int,
                seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    train, test = split(name, max_train, max_test)
    emb = get_embedder(embedder)
    Xtr, Xte = emb.embed(train.texts), emb.embed(test.texts)
    b = best_single(test.quality, test.cost)
    ref = {"best_model": test.models[b], "best_quality": float(test.quality[:, b].mean()),
           "best_cost": float(test.cost[:, b].mean())}
    full_router = ClusterRouter(embedder=embedder, seed=seed).fit(train, Xtr)
    full = evaluate(full_router, Xte, test, ref)
    graders = ["recorded"] + (["agreement"] if train.responses is not None else [])
    results = [run_draw(train, test, Xtr, Xte, held, graders, full, ref, embedder, seed)
               for held in draws(train, k, n_draws, seed)]
    return {"dataset": name, "k": k, "train": train.n_prompts, "test": test.n_prompts, "models": train.models,
            "groups": list(full_router.group_names_), "reference": ref, "graders": graders,
            "answer_texts": train.responses is not None, "draws": results,
            "seconds": time.perf_counter() - started}


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.0f}%" if pct else f"{x:.3f}"


def summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dataset, grader and N: recovered shares over the draws (where the gap is defined)."""
    rows = []
    for ds in report["datasets"]:
        for grader in ds["graders"]:
            for i, n in enumerate(NS):
                res = [d["graders"][grader][i] for d in ds["draws"]]
                qr = [r["quality_recovered"] for r in res if r["quality_recovered"] is not None]
                sr = [r["saving_recovered"] for r in res if r["saving_recovered"] is not None]
                rows.append({"dataset": ds["dataset"], "grader": grader, "n": n,
                             "quality_recovered_mean": float(np.mean(qr)) if qr else None,
                             "quality_recovered_min": float(np.min(qr)) if qr else None,
                             "best_held_out_recovered": res[0]["quality_recovered"],
                             "saving_recovered_mean": float(np.mean(sr)) if sr else None,
                             "worse_draws": int(sum(r["worse_than_known"] for r in res)),
                             "min_delta_vs_known": float(min(r["quality"] - d["known_only"]["quality"]
                                                             for r, d in zip(res, ds["draws"], strict=True)))})
    return rows


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    at = {(r["dataset"], r["grader"]): r for r in rows if r["n"] == 200}
    rec = {d: r["quality_recovered_min"] for (d, g), r in at.items() if g == "recorded"}
    agr = {d: r["quality_recovered_min"] for (d, g), r in at.items() if g == "agreement"}
    return {"recorded_200_min_recovered": rec, "recorded_200_goal_met": all(v is not None and v >= 0.9
                                                                            for v in rec.values()),
            "agreement_200_min_recovered": agr, "agreement_200_goal_met": bool(agr) and all(
                v is not None and v >= 0.5 for v in agr.values()),
            "worse_than_known_cases": int(sum(r["worse_draws"] for r in rows)),
            "never_worse_goal_met": all(r["worse_draws"] == 0 for r in rows)}


def markdown(report: dict[str, Any]) -> str:
    g = report["goals"]
    lines = [f"# Leave models out: onboarding models a cluster router was not trained on ({report['when']})", "",
             f"Command: `{report['command']}`", "",
             f"Embedder `{report['embedder']}`, cluster caution {report.get('caution', 1.0):g}; "
             f"load average {report['load_start']} at the start, "
             f"{report['load_end']} at the end; {report['seconds']:.0f} s.", "",
             "Recovered = (onboarded - known-only) / (full information - known-only), on the test split; "
             "quality at lambda 0 (min and mean over draws where the gap is >= 0.005; draw 0 holds out the "
             "best models) and cost saving at the best single model's quality (mean). 'worse' counts draws "
             f"where the onboarded router's quality is below known-only by more than {TOL}.", "",
             f"Goals: recorded@200 >= 90 % in every draw: **{'met' if g['recorded_200_goal_met'] else 'not met'}** "
             f"({', '.join(f'{d} {_fmt(v, True)}' for d, v in g['recorded_200_min_recovered'].items())}); "
             f"agreement@200 >= 50 %: **{'met' if g['agreement_200_goal_met'] else 'not met'}** "
             f"({', '.join(f'{d} {_fmt(v, True)}' for d, v in g['agreement_200_min_recovered'].items())}); "
             f"never worse than known-only: **{'met' if g['never_worse_goal_met'] else 'not met'}** "
             f"({g['worse_than_known_cases']} cases).", ""]
    for ds in report["datasets"]:
        lines += [f"## {ds['dataset']} ({ds['train']} train / {ds['test']} test prompts, {len(ds['models'])} "
                  f"models, {len(ds['groups'])} groups, k = {ds['k']})", ""]
        if not ds["answer_texts"]:
            lines += ["No answer texts are recorded in this dataset, so the `agreement` grader cannot run on it "
                      "(it needs the models' answers); only `recorded` is measured.", ""]
        lines += ["| draw | held out | known-only q | full q | known-only saving | full saving |",
                  "|---|---|---|---|---|---|"]
        for i, d in enumerate(ds["draws"]):
            lines.append(f"| {i} | {', '.join(d['held_out'])} | {_fmt(d['known_only']['quality'])} | "
                         f"{_fmt(d['full']['quality'])} | {_fmt(d['known_only']['saving'], True)} | "
                         f"{_fmt(d['full']['saving'], True)} |")
        lines += ["", "| grader | N | q recovered min | mean | best held out | saving recovered mean | worse | "
                  "min delta vs known |", "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in report["summary"] if r["dataset"] == ds["dataset"]):
            lines.append(f"| {r['grader']} | {r['n']} | {_fmt(r['quality_recovered_min'], True)} | "
                         f"{_fmt(r['quality_recovered_mean'], True)} | {_fmt(r['best_held_out_recovered'], True)} | "
                         f"{_fmt(r['saving_recovered_mean'], True)} | {r['worse_draws']} | "
                         f"{r['min_delta_vs_known']:+.4f} |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d["dataset"] for d in report["datasets"]]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for grader, color in (("recorded", "tab:blue"), ("agreement", "tab:orange")):
            rows = [r for r in report["summary"] if r["dataset"] == name and r["grader"] == grader]
            if not rows:
                continue
            ns = [r["n"] for r in rows]
            mean = [np.nan if r["quality_recovered_mean"] is None else 100 * r["quality_recovered_mean"] for r in rows]
            low = [np.nan if r["quality_recovered_min"] is None else 100 * r["quality_recovered_min"] for r in rows]
            ax.plot(ns, mean, "o-", color=color, label=f"{grader} (mean)")
            ax.plot(ns, low, "--", color=color, alpha=0.6, label=f"{grader} (min over draws)")
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("symlog", linthresh=25)
        ax.set_title(name)
        ax.set_xlabel("probes per new model")
        ax.set_ylabel("gap recovered, quality at lambda 0 (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--embedder", default="static:dims=384")
    ap.add_argument("--max-train", type=int, default=6000)
    ap.add_argument("--max-test", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caution", type=float, default=1.0, help="cluster caution: sd below the mean for new models")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "leave_models_out"))
    args = ap.parse_args(argv)
    global CAUTION
    CAUTION = args.caution
    started, load_start = time.perf_counter(), load_average()
    datasets = [run_dataset(name, DATASETS[name], args.draws, args.embedder, args.max_train, args.max_test,
                            args.seed) for name in args.datasets.split(",")]
    report: dict[str, Any] = {"when": utc_now(), "command": command("leave_models_out.py", argv),
                              "embedder": args.embedder, "caution": args.caution, "ns": list(NS),
                              "load_start": load_start, "datasets": datasets}
    report["summary"] = summary(report)
    report["goals"] = goals(report["summary"])
    report |= {"load_end": load_average(), "seconds": time.perf_counter() - started}
    out = Path(args.out)
    write(out, report, markdown(report))
    plot(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
