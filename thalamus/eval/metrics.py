"""Routing metrics, defined once (../shared/DESIGN.md section 8) as pure numpy functions.

Everything here works on the observed outcome matrices of an evaluated prompt set:
``quality`` and ``cost`` of shape (n_prompts, n_models), with every entry observed. The
harness evaluates on complete rows only (prompts where every model's quality and cost are
known) because a chosen model with an unknown outcome has no defined quality or cost, and
dropping only those choices would compare routers on different prompts.

Two families of metrics:

- many models (RouterBench): operating points (mean quality, mean USD cost) over the knob,
  their non-decreasing upper convex hull (any point between two settings is reachable by
  mixing them per prompt at random), AIQ, the zero router, quality at a budget and the cost
  saving at the best single model's quality;
- two models (RouteLLM): call share, PGR, APGR and CPT on the exact curve obtained by
  sending the prompts with the largest predicted margin to the strong model first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# quality comparisons against a reference tolerate float noise from averaging
TOL = 1e-9


@dataclass(frozen=True)
class OperatingPoint:
    """Mean quality and mean USD cost per prompt of one routing setting."""

    quality: float
    cost: float

    def to_dict(self) -> dict[str, float]:
        return {"quality": self.quality, "cost": self.cost}


def operating_point(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> OperatingPoint:
    """Mean realised quality and cost when prompt i goes to model ``choice[i]``.

    The realised values are the observed matrices' entries, whatever a router predicted.
    """
    rows = np.arange(len(choice))
    return OperatingPoint(float(np.mean(quality[rows, choice])), float(np.mean(cost[rows, choice])))


# -- the hull ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hull:
    """A non-decreasing, concave, piecewise-linear quality-of-cost function.

    Vertices have strictly increasing cost and strictly increasing quality. Evaluated
    outside [cost[0], cost[-1]] it holds the end value: below its cheapest vertex a router
    is credited with that vertex's quality (the convention of RouterBench-style AIQ, and a
    generous one), above its last vertex it stays at its best quality (spending more buys
    nothing, but never hurts: the router can ignore the extra budget).
    """

    cost: np.ndarray
    quality: np.ndarray

    def __call__(self, cost: np.ndarray | float) -> np.ndarray:
        return np.interp(np.asarray(cost, dtype=np.float64), self.cost, self.quality)

    @property
    def max_quality(self) -> float:
        return float(self.quality[-1])

    @property
    def cost_at_max(self) -> float:
        return float(self.cost[-1])

    def to_dict(self) -> dict[str, list[float]]:
        return {"cost": self.cost.tolist(), "quality": self.quality.tolist()}


def upper_hull(costs: np.ndarray, qualities: np.ndarray) -> Hull:
    """The non-decreasing upper convex hull of points (cost, quality).

    Definition: the smallest concave, non-decreasing function lying on or above every
    point, restricted to [cheapest point, cheapest point of maximal quality]. Points that
    are dominated (costlier and no better than a mix of others) are not vertices.
    Non-finite points are ignored; at least one finite point is required.
    """
    c = np.asarray(costs, dtype=np.float64).ravel()
    q = np.asarray(qualities, dtype=np.float64).ravel()
    ok = np.isfinite(c) & np.isfinite(q)
    if not ok.any():
        raise ValueError("upper_hull needs at least one finite (cost, quality) point")
    c, q = c[ok], q[ok]
    order = np.lexsort((-q, c))  # by cost, best quality first within a cost
    c, q = c[order], q[order]
    best = int(np.flatnonzero(q == q.max())[0])  # cheapest point of maximal quality
    c, q = c[: best + 1], q[: best + 1]
    keep = np.r_[True, c[1:] != c[:-1]]  # one point per cost: the best
    return Hull(*_monotone_chain(c[keep], q[keep]))


def _monotone_chain(c: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper hull of points sorted by strictly increasing cost (Andrew's monotone chain)."""
    stack: list[int] = []
    for i in range(len(c)):
        while len(stack) >= 2:
            a, b = stack[-2], stack[-1]
            cross = (c[b] - c[a]) * (q[i] - q[a]) - (q[b] - q[a]) * (c[i] - c[a])
            if cross < 0:  # a right turn: b stays on the hull
                break
            stack.pop()  # b lies on or below the chord a-i
        stack.append(i)
    idx = np.asarray(stack, dtype=int)
    return c[idx].copy(), q[idx].copy()


def quality_at_budget(hull: Hull, budget: float) -> float:
    """Hull value at a mean cost per prompt of ``budget`` USD (end values held, see Hull)."""
    return float(hull(budget))


def aiq(hull: Hull, cost_range: tuple[float, float]) -> float:
    """Average improvement in quality: the mean of the hull over ``cost_range``.

    AIQ = (1 / (hi - lo)) * integral from lo to hi of hull(c) dc, computed exactly (the
    hull is piecewise linear), with the hull's end values held outside its own range. The
    stated range is [min single-model cost, max single-model cost] (``cost_range_of``).
    A zero-width range gives the hull's value at that cost.
    """
    lo, hi = float(cost_range[0]), float(cost_range[1])
    if hi <= lo:
        return float(hull(lo))
    inner = hull.cost[(hull.cost > lo) & (hull.cost < hi)]
    xs = np.concatenate([[lo], inner, [hi]])
    return float(np.trapezoid(hull(xs), xs) / (hi - lo))


def cost_range_of(single_costs: np.ndarray) -> tuple[float, float]:
    """The AIQ cost range: [cheapest single model's mean cost, dearest single model's]."""
    costs = np.asarray(single_costs, dtype=np.float64)
    return float(costs.min()), float(costs.max())


def cost_to_reach(hull: Hull, target: float) -> float | None:
    """Smallest cost at which the hull reaches quality ``target``; None if it never does.

    Below the hull's cheapest vertex no cost is credited: a target at or under that
    vertex's quality is reached at that vertex's cost.
    """
    if hull.max_quality < target - TOL:
        return None
    if hull.quality[0] >= target - TOL:
        return float(hull.cost[0])
    if hull.max_quality <= target + TOL:  # reached only at the last vertex: no interpolation noise
        return hull.cost_at_max
    return float(np.interp(target, hull.quality, hull.cost))  # quality is strictly increasing


def cost_saving(hull: Hull, target_quality: float, reference_cost: float) -> float | None:
    """1 - (cost at which the hull reaches ``target_quality``) / ``reference_cost``.

    With the best single model's quality and cost as the reference this is the cost
    saving at best-single quality. None when the hull never reaches the target or the
    reference is free. Negative when the router needs more than the reference.
    """
    needed = cost_to_reach(hull, target_quality)
    if needed is None or reference_cost <= 0:
        return None
    return 1.0 - needed / reference_cost


# -- references ----------------------------------------------------------------------------
def single_model_points(quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
    """Each model's own operating point: its mean quality and mean cost.

    Computed through ``operating_point`` so a router that always picks one model lands on
    exactly the same numbers (no summation-order noise).
    """
    n = quality.shape[0]
    return [operating_point(quality, cost, np.full(n, j)) for j in range(quality.shape[1])]


def zero_router(quality: np.ndarray, cost: np.ndarray) -> Hull:
    """The zero router: the hull of the single models' points alone (mixing whole models)."""
    points = single_model_points(quality, cost)
    return upper_hull(np.array([p.cost for p in points]), np.array([p.quality for p in points]))


def best_single(quality: np.ndarray, cost: np.ndarray) -> int:
    """Index of the model with the highest mean quality, the cheaper (mean cost) on ties."""
    mq, mc = quality.mean(axis=0), cost.mean(axis=0)
    tied = np.flatnonzero(mq >= mq.max() - TOL)
    return int(tied[np.argmin(mc[tied])])


def per_query_oracle(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per prompt, the model with the best observed quality, the cheapest among ties."""
    best = quality.max(axis=1, keepdims=True)
    masked_cost = np.where(quality >= best - TOL, cost, np.inf)
    return masked_cost.argmin(axis=1)


def dataset_oracle(quality: np.ndarray, cost: np.ndarray, tasks: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Per task, the model with the best mean quality on that task (cheaper on ties).

    Chosen on the evaluated prompts themselves, so it is an upper bound for any router
    that routes by task alone. Without task labels it is the best single model.
    Returns the per-prompt choice and the chosen model index per task.
    """
    tasks = np.asarray(tasks, dtype=object)
    choice = np.empty(len(tasks), dtype=int)
    per_task: dict[str, int] = {}
    for task in sorted(set(tasks.tolist())):
        rows = tasks == task
        per_task[str(task)] = best_single(quality[rows], cost[rows])
        choice[rows] = per_task[str(task)]
    return choice, per_task


def random_point(quality: np.ndarray, cost: np.ndarray) -> OperatingPoint:
    """Uniform random routing in expectation: the mean of the models' mean quality and cost."""
    return OperatingPoint(float(quality.mean(axis=0).mean()), float(cost.mean(axis=0).mean()))


def gap_closed(quality: float, best_single_quality: float, oracle_quality: float) -> float | None:
    """(Q - Q_best) / (Q_oracle - Q_best): 0 = the best single model, 1 = the oracle.

    None when the oracle is no better than the best single model.
    """
    gap = oracle_quality - best_single_quality
    if gap <= TOL:
        return None
    return (quality - best_single_quality) / gap


# -- two models (RouteLLM) -----------------------------------------------------------------
@dataclass(frozen=True)
class TwoModelCurve:
    """Operating points as the share of prompts sent to the strong model grows 0 -> 1.

    ``call_share[k] = k / n``; ``quality[k]`` and ``cost[k]`` are the realised means when
    the k prompts with the largest predicted margin go to the strong model.
    """

    call_share: np.ndarray
    quality: np.ndarray
    cost: np.ndarray

    @property
    def pgr(self) -> np.ndarray:
        """PGR(c) = (Q(c) - Q_weak) / (Q_strong - Q_weak); NaN when the two are equally good."""
        q_weak, q_strong = self.quality[0], self.quality[-1]
        if abs(q_strong - q_weak) <= TOL:
            return np.full_like(self.quality, np.nan)
        return (self.quality - q_weak) / (q_strong - q_weak)


def two_model_curve(quality: np.ndarray, cost: np.ndarray, margin: np.ndarray, strong: int) -> TwoModelCurve:
    """The exact call-share curve of a two-model router.

    Prompts are sorted by predicted margin (strong minus weak; NaN counts as lowest), and
    the top k go to the strong model for k = 0..n. Prompts with equal margins cannot be
    told apart by the router, so a tied group is sent together: inside a group the curve
    is the straight line between the group's ends, which is the expected value of breaking
    the tie at random, and the result does not depend on row order.
    """
    n = len(margin)
    weak = 1 - strong
    m = np.where(np.isnan(margin), -np.inf, np.asarray(margin, dtype=np.float64))
    order = np.argsort(-m, kind="stable")
    sm = m[order]
    ends = np.flatnonzero(np.r_[True, sm[1:] != sm[:-1], True])  # group boundaries in 0..n
    k = np.arange(n + 1)

    def curve(values: np.ndarray) -> np.ndarray:
        gain = np.concatenate([[0.0], np.cumsum(values[order, strong] - values[order, weak])])
        gain = np.interp(k, ends, gain[ends])
        return (values[:, weak].sum() + gain) / max(n, 1)

    return TwoModelCurve(k / max(n, 1), curve(quality), curve(cost))


def strong_weak(quality: np.ndarray, cost: np.ndarray) -> tuple[int, int]:
    """(strong, weak) indices of a two-model set: strong has the higher mean quality
    (on a tie, the higher mean cost)."""
    mq, mc = quality.mean(axis=0), cost.mean(axis=0)
    strong = int(np.lexsort((mc, mq))[-1])
    return strong, 1 - strong


def apgr(call_share: np.ndarray, pgr: np.ndarray) -> float:
    """Area under PGR over call share in [0, 1] (trapezoid; exact for a piecewise-linear
    curve). A router that calls the strong model at random scores 0.5."""
    return float(np.trapezoid(pgr, call_share))


def cpt(call_share: np.ndarray, pgr: np.ndarray, x: float) -> float | None:
    """CPT(x): the smallest call share whose PGR, on the running-max curve, is >= x.

    The running max is used because a router can always stop at an earlier, better
    setting. None when PGR never reaches x.
    """
    running = np.maximum.accumulate(np.nan_to_num(pgr, nan=-np.inf))
    hit = np.flatnonzero(running >= x - TOL)
    return float(call_share[hit[0]]) if len(hit) else None
