"""Online replay: evaluate a learning router the way it would learn in production.

Prompts of a fully observed dataset arrive one at a time in a seeded random order; the
router picks one model (``route_features``), only that model's quality and cost are
revealed, and the router learns from it (``partial_fit``, when it has one; a static router
is simply evaluated). Reward is ``quality - cost / wtp``, the policy's willingness-to-pay
rule, so every router in the comparison optimises the same thing.

Two references score every step under the same knob:

- the per-query oracle: the best reward achievable on that prompt (regret is measured
  against it);
- a supervised router (kNN by default) trained with full information on the same data,
  out of fold: each prompt is scored by a reference fitted on the other folds (plus any
  warm-start rows), so it never sees the prompt it is judged on.

The same loop will drive the gateway's learning loop, so it knows nothing about bandits:
anything with ``route_features`` (and optionally ``partial_fit``) can be replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.router.base import Router
from thalamus.router.policy import Knob, choose
from thalamus.router.registry import make_router


@dataclass
class ReplayResult:
    """Per-step outcomes of one replay, in arrival order, plus what produced them."""

    order: np.ndarray  # stream row index of each step
    chosen: np.ndarray  # model index chosen by the router
    probability: np.ndarray  # the router's probability of its choice (for off-policy use)
    reward: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    oracle_reward: np.ndarray
    reference_reward: np.ndarray | None
    models: list[str]
    wtp: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.order)

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers: cumulative reward and regret, last-half means, choice shares."""
        half = self.n_steps // 2
        out: dict[str, Any] = {
            **self.params, "steps": self.n_steps, "wtp": self.wtp,
            "cumulative_reward": float(self.reward.sum()),
            "oracle_cumulative_reward": float(self.oracle_reward.sum()),
            "regret_vs_oracle": float((self.oracle_reward - self.reward).sum()),
            "mean_reward": float(self.reward.mean()),
            "last_half_mean_reward": float(self.reward[half:].mean()),
            "last_half_oracle_mean_reward": float(self.oracle_reward[half:].mean()),
            "mean_quality": float(self.quality.mean()), "mean_cost": float(self.cost.mean()),
            "last_half_mean_quality": float(self.quality[half:].mean()),
            "last_half_mean_cost": float(self.cost[half:].mean()),
            "choice_share": {m: float(np.mean(self.chosen == j)) for j, m in enumerate(self.models)},
        }
        if self.reference_reward is not None:
            ref_half = float(self.reference_reward[half:].mean())
            out |= {
                "reference_cumulative_reward": float(self.reference_reward.sum()),
                "regret_vs_reference": float((self.reference_reward - self.reward).sum()),
                "last_half_reference_mean_reward": ref_half,
                "last_half_reward_ratio_vs_reference": (
                    float(self.reward[half:].mean() / ref_half) if ref_half > 0 else None),
            }
        return out

    def plot(self, path: str | Path, title: str = "online replay") -> Path:
        """Cumulative reward and cumulative regret curves, written as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from thalamus.eval.plots import save_figure

        steps = np.arange(1, self.n_steps + 1)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        ax1.plot(steps, np.cumsum(self.oracle_reward), label="per-query oracle", color="black", ls="--")
        if self.reference_reward is not None:
            ax1.plot(steps, np.cumsum(self.reference_reward), label="supervised reference")
            ax2.plot(steps, np.cumsum(self.reference_reward - self.reward), label="vs supervised reference")
        ax1.plot(steps, np.cumsum(self.reward), label=str(self.params.get("router", "router")))
        ax2.plot(steps, np.cumsum(self.oracle_reward - self.reward), label="vs per-query oracle")
        ax1.set(xlabel="step", ylabel="cumulative reward", title=f"{title}: reward (wtp={self.wtp:.3g})")
        ax2.set(xlabel="step", ylabel="cumulative regret", title=f"{title}: regret")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend()
        return save_figure(fig, path, dpi=110)


def rewards(quality: np.ndarray, cost: np.ndarray, wtp: float) -> np.ndarray:
    """Reward of every (prompt, model): quality - cost / wtp."""
    return np.asarray(quality - cost / wtp, dtype=np.float64)


def replay(router: Router, stream: RoutingDataset, features: np.ndarray, *,
           warm: RoutingDataset | None = None, warm_features: np.ndarray | None = None,
           wtp: float | None = None, seed: int = 0, reference: str | None = "knn",
           reference_params: dict[str, Any] | None = None, reference_folds: int = 5,
           on_step: Callable[[int, int, float], None] | None = None) -> ReplayResult:
    """Replay ``stream`` (complete rows only) through ``router``; see the module docstring.

    ``warm``: offline rows to fit the router on first (full information); without it the
    router must already be fitted. ``wtp`` defaults to the router's own ``wtp_`` if it has
    one, else its ``cost_scale_``. ``on_step(step, chosen, reward)`` is called after each step.
    """
    features = np.asarray(features)
    if len(features) != stream.n_prompts:
        raise DataError(f"{stream.name}: {len(features)} feature rows for {stream.n_prompts} prompts")
    complete = stream.complete_mask()
    stream, features = stream.subset(complete), features[complete]
    if stream.n_prompts == 0:
        raise DataError(f"{stream.name}: no fully observed prompts to replay")
    if warm is not None:
        router.fit(warm, features=warm_features)
    router.check_fitted()
    if router.models_ != stream.models:
        raise DataError(f"{stream.name}: models {stream.models} differ from the router's {router.models_}")
    wtp = float(wtp if wtp is not None else getattr(router, "wtp_", router.cost_scale_))
    knob = Knob("wtp", wtp)
    order = np.random.default_rng(seed).permutation(stream.n_prompts)
    steps = _run(router, stream, features, order, knob, on_step)
    ref = None
    if reference is not None:
        ref = _reference_rewards(reference, reference_params or {}, router, stream, features,
                                 warm, warm_features, knob, reference_folds, seed)[order]
    all_rewards = rewards(stream.quality, stream.cost, wtp)
    return ReplayResult(
        order=order, chosen=steps[0].astype(int), probability=steps[1], reward=steps[2],
        quality=stream.quality[order, steps[0].astype(int)], cost=stream.cost[order, steps[0].astype(int)],
        oracle_reward=all_rewards[order].max(axis=1), reference_reward=ref, models=list(stream.models),
        wtp=wtp, params={"router": router.name, "dataset": stream.name, "seed": seed,
                         "warm_rows": 0 if warm is None else warm.n_prompts, "reference": reference},
    )


def _run(router: Router, stream: RoutingDataset, features: np.ndarray, order: np.ndarray, knob: Knob,
         on_step: Callable[[int, int, float], None] | None) -> np.ndarray:
    """The online loop; returns (3, n) rows: chosen index, probability, reward."""
    out = np.empty((3, len(order)))
    learn = getattr(router, "partial_fit", None)
    for step, row in enumerate(order):
        x = features[row : row + 1]
        decision = router.route_features(x, knob)
        j = decision.index
        q, c = float(stream.quality[row, j]), float(stream.cost[row, j])
        reward = q - c / knob.value
        out[:, step] = (j, decision.probability, reward)
        if learn is not None:
            learn([(x[0], j, q, c)])
        if on_step is not None:
            on_step(step, j, reward)
    return out


def _reference_rewards(name: str, params: dict[str, Any], router: Router, stream: RoutingDataset,
                       features: np.ndarray, warm: RoutingDataset | None, warm_features: np.ndarray | None,
                       knob: Knob, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold rewards of a supervised router fitted with full information (stream row order)."""
    fold = np.random.default_rng(seed + 1).permutation(stream.n_prompts) % folds
    out = np.empty(stream.n_prompts)
    all_rewards = rewards(stream.quality, stream.cost, knob.value)
    for i in range(folds):
        test = fold == i
        train, X = stream.subset(~test), features[~test]
        if warm is not None and warm_features is not None:
            train = _concat(warm, train)
            X = np.vstack([warm_features, X])
        ref = make_router(name, **{"embedder": router.embedder, "seed": seed, **params}).fit(train, features=X)
        pred_q, pred_c = ref.predict_from_features(features[test])
        picks = choose(pred_q, pred_c, knob, stream.models, cost_scale=ref.cost_scale_)
        out[test] = all_rewards[test][np.arange(test.sum()), picks]
    return out


def _concat(a: RoutingDataset, b: RoutingDataset) -> RoutingDataset:
    import pandas as pd

    if a.models != b.models:
        raise DataError(f"{a.name} and {b.name} have different models")
    # overlapping prompts would be counted twice; RoutingDataset rejects duplicate prompt ids
    return RoutingDataset(
        name=f"{a.name}+{b.name}", prompts=pd.concat([a.prompts, b.prompts], ignore_index=True),
        models=a.models, quality=np.vstack([a.quality, b.quality]), cost=np.vstack([a.cost, b.cost]),
        cost_estimated=a.cost_estimated or b.cost_estimated, prices=a.prices,
    )
