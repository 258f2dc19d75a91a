"""A controller per router that moves its default knob (lambda) to hold a target under drift.

Targets (``routers.NAME.controller``): ``strong_share`` (share of the router's requests answered by
``strong``), ``spend_per_hour`` (USD) or ``quality_floor`` (mean feedback score). Every ``interval_s``
the controller reads the router's last ``window`` answered requests from the ledger and takes one
step of at most ``max_step`` in lambda:

- ``strong_share`` / ``spend_per_hour``: each row holds every candidate's predicted quality and
  expected cost, so the lambda that would have met the target on exactly these recent prompts is
  computed (bisection on the logged predictions, within the knob's allowed models); the knob moves
  toward it. Spend per hour becomes a mean cost per
  request at the window's request rate.
- ``quality_floor``: feedback is only known for the model that answered, so it is integral control:
  below the floor lambda falls (more quality) by ``gain * shortfall``, above it rises by the same rule.

The knob moved is the config's default (``routers.NAME.knob.value``), so a request's own ``routing``
overrides still win; every row records the knob it was routed with, and ``/api/controller`` shows each
controller's state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from thalamus.errors import ConfigError
from thalamus.gateway.config import ControllerConfig
from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.ledger import Ledger
from thalamus.ledger.schema import feedback, requests
from thalamus.router.policy import Knob, choose

log = logging.getLogger(__name__)


@dataclass
class ControllerState:
    router: str
    target: str
    value: float
    knob: float
    measured: float | None = None
    aim: float | None = None  # the knob value the last step moved toward
    rows: int = 0
    steps: int = 0
    updated_at: float | None = None
    history: list[dict[str, float | None]] = field(default_factory=list)


class Controller:
    """One router's controller; ``step`` is synchronous (database read, arithmetic)."""

    def __init__(self, loaded: LoadedRouter, config: ControllerConfig) -> None:
        if loaded.config.knob.kind != "lambda":
            raise ConfigError(f"routers.{loaded.name}.controller: the controller moves a 'lambda' knob; "
                              f"the router's knob is {loaded.config.knob.kind!r}")
        if config.target == "strong_share" and config.strong not in loaded.router.models_:
            raise ConfigError(f"routers.{loaded.name}.controller.strong: {config.strong!r} is not one of the "
                              f"router's models {loaded.router.models_}")
        self.loaded, self.config = loaded, config
        self.state = ControllerState(loaded.name, config.target, config.value, loaded.config.knob.value)

    def _window(self, ledger: Ledger) -> list[dict[str, Any]]:
        score = (sa.select(sa.func.avg(feedback.c.score)).where(feedback.c.request_id == requests.c.id)
                 .scalar_subquery().label("score"))
        query = (sa.select(requests.c.created_at, requests.c.chosen_model, requests.c.candidates,
                           requests.c.cost_usd, score)
                 .where(requests.c.router == self.loaded.name, requests.c.status == 200)
                 .order_by(requests.c.created_at.desc()).limit(self.config.window))
        with ledger.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def _aim(self, rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
        """(measured value, lambda that meets the target on these rows) for the model-based targets."""
        cfg, router = self.config, self.loaded.router
        cands = [json.loads(r["candidates"]) for r in rows if r["candidates"]]
        models = [m for m in router.models_ if cands and all(m in c for c in cands)]
        allowed = self.loaded.default_knob().allowed
        allowed = tuple(m for m in (allowed or models) if m in models)
        if not allowed or (cfg.target == "strong_share" and cfg.strong not in allowed):
            return None, None
        q = np.array([[c[m]["quality"] for m in models] for c in cands])
        cost = np.array([[c[m]["cost"] for m in models] for c in cands])

        def picks(lam: float) -> np.ndarray:
            return choose(q, cost, Knob("lambda", lam, allowed=allowed), models, router.cost_scale_)

        if cfg.target == "strong_share":
            s = models.index(str(cfg.strong))
            measured = float(np.mean([r["chosen_model"] == cfg.strong for r in rows]))
            return measured, smallest_lambda(lambda lam: float(np.mean(picks(lam) == s)), cfg.value)
        span_h = max((rows[0]["created_at"] - rows[-1]["created_at"]) / 3600, 1e-9)
        spend = float(sum(r["cost_usd"] or 0.0 for r in rows))
        per_request = cfg.value * span_h / len(rows)  # the mean cost that spends value per hour at this rate

        def predicted(lam: float) -> float:
            return float(np.mean(cost[np.arange(len(cost)), picks(lam)]))

        return spend / span_h, smallest_lambda(predicted, per_request)

    def step(self, ledger: Ledger) -> ControllerState:
        rows = self._window(ledger)
        st, cfg = self.state, self.config
        st.rows = len(rows)
        if len(rows) < cfg.min_rows:
            return st
        current = self.loaded.config.knob.value
        if cfg.target == "quality_floor":
            scores = [r["score"] for r in rows if r["score"] is not None]
            if len(scores) < cfg.min_rows:
                return st
            st.measured = float(np.mean(scores))
            aim = current + cfg.gain * (st.measured - cfg.value)  # above the floor: save; below: spend
        else:
            st.measured, aim_or_none = self._aim(rows)
            if aim_or_none is None:
                return st
            aim = aim_or_none
        st.aim = float(np.clip(aim, 0.0, 1.0))
        new = float(np.clip(current + np.clip(st.aim - current, -cfg.max_step, cfg.max_step), 0.0, 1.0))
        self.loaded.config.knob.value = new  # read by every request's default knob
        st.knob, st.steps, st.updated_at = new, st.steps + 1, time.time()
        st.history = [*st.history[-99:], {"t": st.updated_at, "measured": st.measured, "knob": new}]
        return st


def smallest_lambda(measure: Callable[[float], float], target: float, iters: int = 30) -> float:
    """The smallest lambda (most quality) whose measure, non-increasing in lambda, is <= target."""
    if measure(0.0) <= target:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if measure(mid) <= target else (mid, hi)
    return hi


class Controllers:
    """The gateway's controllers and the task that steps them."""

    def __init__(self, routers: dict[str, LoadedRouter]) -> None:
        self.items = {name: Controller(r, r.config.controller) for name, r in routers.items()
                      if r.config.controller is not None}
        self._task: asyncio.Task[None] | None = None

    def start(self, ledger: Ledger) -> None:
        if self.items:
            self._task = asyncio.create_task(self._run(ledger), name="thalamus-controllers")

    async def _run(self, ledger: Ledger) -> None:
        interval = min(c.config.interval_s for c in self.items.values())
        while True:
            await asyncio.sleep(interval)
            for c in self.items.values():
                try:
                    await asyncio.to_thread(c.step, ledger)
                except Exception:  # a failed step (database away) leaves the knob where it is
                    log.exception("controller of router %s: step failed", c.loaded.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def states(self) -> list[dict[str, Any]]:
        return [asdict(c.state) for c in self.items.values()]
