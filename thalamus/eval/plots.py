"""Pareto plots of evaluation results: one figure per dataset, routers overlaid.

Drawn from the JSON-able results of ``thalamus.eval.harness.evaluate``, so a saved
results file can be re-plotted without re-running anything. Cost is on a log axis;
every reference (each single model, best single, random, per-query oracle, dataset
oracle, zero-router hull) is drawn. Two-model results get a second panel: PGR against
the share of calls to the strong model. matplotlib is imported inside the functions (Agg
backend), so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Result = Mapping[str, Any]


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it as a PNG (creating the folder) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_dataset(results: Sequence[Result], path: str | Path) -> Path:
    """Write the PNG for one dataset's results (every router on that dataset) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("plot_dataset needs at least one result")
    two = bool(results[0].get("two_model"))
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(18 if two else 12, 6.5), squeeze=False)
    pareto = axes[0][0]
    _references(pareto, results[0])
    for i, res in enumerate(results):
        _router(pareto, res, f"C{i % 10}")
    pareto.set_xscale("log", nonpositive="clip")
    pareto.set_xlabel("mean cost per prompt (USD, log scale)")
    pareto.set_ylabel("mean quality")
    split = results[0].get("split", {})
    pareto.set_title(f"{results[0]['dataset']}: quality vs cost (n_test={split.get('n_test')}, "
                     f"seed={results[0].get('seed')})")
    pareto.grid(True, which="both", alpha=0.3)
    # outside the axes: inside, it hides points of real datasets whatever corner it takes
    pareto.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if two:
        _pgr_panel(axes[0][1], results)
    return save_figure(fig, path)


def _hull_line(hull: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Sample a piecewise-linear hull densely so it draws truthfully on a log axis."""
    cost = np.asarray(hull["cost"], dtype=float)
    quality = np.asarray(hull["quality"], dtype=float)
    lo = cost[cost > 0].min() if (cost > 0).any() else 1e-9
    xs = np.unique(np.concatenate([np.geomspace(lo, max(cost.max(), lo), 200), cost[cost > 0]]))
    return xs, np.interp(xs, cost, quality)


def _references(ax: Any, res: Result) -> None:
    xs, ys = _hull_line(res["zero_router_hull"])
    # on top of the routers' hulls (zorder): a router that only mixes whole models coincides with it
    ax.plot(xs, ys, "--", color="black", lw=1.2, zorder=6, alpha=0.7,
            label=f"zero router (AIQ {res['zero_router_aiq']:.3f})")
    costs = np.log([max(p["cost"], 1e-12) for p in res["single_models"].values()])
    right = costs.min() + 0.8 * (costs.max() - costs.min())
    for (model, p), log_cost in zip(res["single_models"].items(), costs, strict=True):
        ax.scatter(p["cost"], p["quality"], color="grey", s=25, zorder=3)
        flip = log_cost > right  # labels of the dearest models go left, inside the axes
        ax.annotate(model, (p["cost"], p["quality"]), fontsize=7, xytext=(-4 if flip else 4, -9),
                    textcoords="offset points", ha="right" if flip else "left")
    refs = (("best_single", "*", "gold", 180), ("random", "X", "black", 70),
            ("oracle", "D", "green", 60), ("dataset_oracle", "s", "purple", 60))
    names = {"best_single": f"best single ({res['best_single']['model']})",
             "random": "random reference (uniform over models)",
             "oracle": "per-query oracle", "dataset_oracle": "dataset oracle (best per task)"}
    for key, marker, color, size in refs:
        p = res[key]
        ax.scatter(p["cost"], p["quality"], marker=marker, color=color, s=size, zorder=4,
                   edgecolors="black", linewidths=0.5, label=names[key])


def _router(ax: Any, res: Result, color: str) -> None:
    pts = res["points"]
    ax.scatter([p["cost"] for p in pts], [p["quality"] for p in pts], color=color, s=10, alpha=0.5, zorder=2)
    aiq = res.get("aiq")
    label = f"{res['router']} (AIQ {aiq:.3f})" if aiq is not None else str(res["router"])
    if len(res["hull"]["cost"]) == 1:  # one operating point: nothing to draw a line through
        ax.scatter(res["hull"]["cost"], res["hull"]["quality"], color=color, s=90, marker="o",
                   edgecolors="black", linewidths=0.5, zorder=5, label=label)
        return
    xs, ys = _hull_line(res["hull"])
    ax.plot(xs, ys, color=color, lw=2, label=label)


def _pgr_panel(ax: Any, results: Sequence[Result]) -> None:
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random reference (APGR 0.500)")
    for i, res in enumerate(results):
        curve = res.get("pgr_curve")
        if not curve:
            continue
        apgr = res.get("apgr")
        label = f"{res['router']} (APGR {apgr:.3f})" if apgr is not None else str(res["router"])
        ys = [np.nan if v is None else v for v in curve["pgr"]]
        ax.plot(curve["call_share"], ys, color=f"C{i % 10}", lw=2, label=label)
    res0 = results[0]
    ax.set_xlabel(f"share of calls to the strong model ({res0.get('strong')})")
    ax.set_ylabel(f"PGR (0 = {res0.get('weak')}, 1 = {res0.get('strong')})")
    ax.set_title("performance gap recovered vs call share")
    ax.set_xlim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def plot_all(results: Sequence[Result], path: str | Path) -> list[Path]:
    """One PNG per dataset; with several datasets the file name gets ``-<dataset>`` appended.

    Results are grouped by ``source`` (the dataset as it was asked for), so two files that
    carry the same dataset name still get separate plots (named after the file then).
    """
    path = Path(path)
    groups: dict[str, list[Result]] = {}
    for res in results:
        groups.setdefault(str(res.get("source", res["dataset"])), []).append(res)
    if len(groups) == 1:
        return [plot_dataset(next(iter(groups.values())), path)]
    names = [str(g[0]["dataset"]) for g in groups.values()]
    unique = len(set(names)) == len(names)
    return [plot_dataset(group, path.with_name(
                f"{path.stem}-{_slug(name if unique else Path(source).stem)}{path.suffix or '.png'}"))
            for (source, group), name in zip(groups.items(), names, strict=True)]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
