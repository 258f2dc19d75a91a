"""Thompson sampling on a profile router's posterior: exploration that knows what it does not know.

A profile router (``cluster``, router/profiles.py) knows each model's quality per group as a posterior
(mean and standard deviation). Epsilon exploration spends the same share on every model whatever is
known about it; here each decision draws every model's per-group quality from its posterior, blends the
draw by the prompt's P(group | prompt) and takes the best utility under the knob. A model the router
was never trained on has a wide posterior, so it wins a share of the draws (its chance of being best)
until feedback narrows it; a model known to be worse almost never does.

The chance of each model being best is estimated from ``DRAWS`` draws and the served model is drawn from
that estimate, so the decision's ``probabilities`` are exactly the distribution it was drawn from: the
propensity the ledger records (row.probability, candidates' ``p``) is correct for off-policy estimates.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np

from thalamus.errors import ConfigError
from thalamus.router.explore import eligible
from thalamus.router.policy import Decision, utility
from thalamus.router.profiles import ModelProfile

DRAWS = 256  # posterior draws per decision: the chance of being best to within ~3 points


@runtime_checkable
class ProfileRouter(Protocol):
    """A router whose models are profiles (cluster): it can take, narrow and retire models without re-training."""

    models_: list[str]

    def group_probabilities(self, X: np.ndarray) -> np.ndarray: ...

    def profiles(self) -> list[ModelProfile]: ...

    def add_model(self, name: str, prior: str | None = None,
                  cost: float | np.ndarray | None = None) -> ModelProfile: ...

    def observe(self, model: str, probs: np.ndarray, scores: np.ndarray, costs: np.ndarray | None = None) -> None: ...

    def profile(self, model: str) -> ModelProfile: ...

    def refresh(self, model: str) -> None: ...


def posterior(router: ProfileRouter) -> tuple[np.ndarray, np.ndarray]:
    """(groups, models) posterior mean and standard deviation of every model's quality."""
    profiles = router.profiles()
    mean = np.stack([p.mean() for p in profiles], axis=1)
    sd = np.stack([np.sqrt(p.variance()) for p in profiles], axis=1)
    return mean, sd


class PosteriorSampler:
    """``explore: {kind: thompson, value: SCALE, seed}``: Thompson sampling with a locked generator."""

    kind = "thompson"

    def __init__(self, value: float = 1.0, seed: int | None = None, draws: int = DRAWS) -> None:
        if value < 0:
            raise ConfigError(f"explore.value: thompson's posterior scale must be >= 0, got {value}")
        self.value, self.draws = value, draws
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # routing runs in worker threads; a Generator is not thread-safe

    def distribution(self, decision: Decision, router: ProfileRouter) -> np.ndarray:
        """Every model's chance of being best under the knob, over ``draws`` posterior draws."""
        if decision.features is None or list(decision.models) != list(router.models_):
            return _on_choice(decision)
        probs = router.group_probabilities(np.asarray(decision.features)[None, :])[0]  # (groups,)
        mean, sd = posterior(router)
        with self._lock:
            z = self._rng.standard_normal((self.draws, *mean.shape))
        quality = np.einsum("g,sgm->sm", probs, mean[None] + self.value * sd[None] * z)
        cost = np.broadcast_to(np.asarray(decision.expected_cost, dtype=np.float64), quality.shape)
        scores = utility(quality, cost, decision.knob, decision.models, cost_scale=decision.extra.get("cost_scale"))
        scores = np.where(eligible(decision)[None, :], scores, -np.inf)
        wins = np.bincount(np.argmax(scores, axis=1), minlength=len(decision.models))
        return np.asarray(wins / wins.sum(), dtype=np.float64)

    def explore(self, decision: Decision, router: object) -> Decision:
        """The decision after a posterior draw; its probabilities are the chances of being best."""
        if not isinstance(router, ProfileRouter):
            return decision
        p = self.distribution(decision, router)
        with self._lock:
            index = int(self._rng.choice(len(p), p=p))
        if index == decision.index:
            return replace(decision, probability=float(p[index]), probabilities=p.tolist())
        return replace(decision, model=decision.models[index], index=index, probability=float(p[index]),
                       probabilities=p.tolist(), reason=f"explored (thompson, P(best) {p[index]:.2f}); "
                       f"the router's mean preferred {decision.model}")


def _on_choice(decision: Decision) -> np.ndarray:
    p = np.zeros(len(decision.models))
    p[decision.index] = 1.0
    return p
