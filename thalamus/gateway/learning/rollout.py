"""Safe rollout of a router artifact: hot reload, shadow, canary, promotion; no restart.

Per served router there is at most one candidate artifact, in one of two modes:

- ``shadow``: the candidate decides on every request routed by the router; its choice and version are
  logged in the row (``shadow_model``, ``shadow_version``) and never used.
- ``canary``: a share of the router's requests is routed by the candidate. The row says which
  (``rollout: canary|serving``, ``artifact_version`` of the artifact that decided) and its propensities
  are those of the mixture actually run, ``(1 - share) * p_serving + share * p_candidate`` per model,
  so off-policy estimates on canary traffic stay unbiased.

``promote`` makes the candidate the serving artifact; ``reload`` swaps the serving artifact for a
freshly loaded one (the configured dir, or another). Swaps happen under the router's lock, so a
decision sees one artifact or the other, never half of each; requests already past routing finish
with what decided them. The new state lives in this process only: to keep it over a restart, point
the config's ``artifact`` at the promoted dir (docs/learning.md, "Safe rollout").
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from thalamus.errors import ConfigError
from thalamus.gateway.config import GatewayConfig
from thalamus.gateway.learning.adopt import adopt, plan_backends
from thalamus.gateway.learning.artifacts import LoadedRouter, load_artifact
from thalamus.router.base import Router, artifact_version
from thalamus.router.explore import deterministic_probabilities
from thalamus.router.policy import Decision, Knob

Mode = Literal["shadow", "canary"]


@dataclass
class Candidate:
    router: Router
    version: str
    artifact: Path
    mode: Mode
    share: float = 0.0
    decisions: int = 0
    routed: int = 0


def restrict_knob(knob: Knob, models: list[str]) -> Knob:
    """The knob with its allowed set cut to the models a router knows (None when none is left)."""
    if knob.allowed is None:
        return knob
    allowed = tuple(m for m in knob.allowed if m in models) or None
    return Knob(knob.kind, knob.value, knob.strong, knob.max_cost, allowed, knob.excluded)


def load_checked(directory: Path, loaded: LoadedRouter, config: GatewayConfig) -> tuple[Router, str]:
    """Load an artifact that can serve in place of ``loaded``'s: at least one of its models is servable, and
    the start-up check against the configured backends passes (learning/adopt.py), a profile router taking on
    the backends it was not trained on. For a hot reload and a candidate alike: a refused artifact is refused
    here, a candidate is shadowed or canaried as it would serve, and its promotion cannot fail."""
    if not Path(directory).is_dir():
        raise ConfigError(f"artifact {directory} is not a directory")
    router = load_artifact(Path(directory))
    if not set(router.models_) & set(loaded.servable):
        raise ConfigError(f"artifact {directory}: none of its models {router.models_} is a backend of "
                          f"router {loaded.name!r} ({list(loaded.servable)})")
    adopt(router, plan_backends(loaded.name, loaded.config, router, config), config)
    return router, artifact_version(directory)


class Rollout:
    """Candidates per router and the swaps; thread-safe (the routing threads read it)."""

    def __init__(self, config: GatewayConfig, seed: int | None = None) -> None:
        self.config = config  # the backends a candidate is checked against (load_checked)
        self.candidates: dict[str, Candidate] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def set_candidate(self, loaded: LoadedRouter, directory: Path, mode: Mode, share: float) -> Candidate:
        if mode not in ("shadow", "canary"):
            raise ConfigError(f"mode must be 'shadow' or 'canary', got {mode!r}")
        if mode == "canary" and not 0.0 < share <= 1.0:
            raise ConfigError(f"share: a canary share must be in (0, 1], got {share}")
        router, version = load_checked(directory, loaded, self.config)
        candidate = Candidate(router, version, Path(directory), mode, share if mode == "canary" else 0.0)
        with self._lock:
            self.candidates[loaded.name] = candidate
        return candidate

    def clear(self, name: str) -> Candidate | None:
        with self._lock:
            return self.candidates.pop(name, None)

    def draw(self, share: float) -> bool:
        with self._lock:
            return self._rng.random() < share

    def state(self, loaded: LoadedRouter) -> dict[str, Any]:
        c = self.candidates.get(loaded.name)
        out: dict[str, Any] = {"name": loaded.name, "serving_version": loaded.version,
                               "serving_artifact": str(loaded.config.artifact), "candidate": None}
        if c is not None:
            out["candidate"] = {"version": c.version, "artifact": str(c.artifact), "mode": c.mode,
                                "share": c.share, "decisions": c.decisions, "routed": c.routed}
        return out


def shadowed(serving: Decision, shadow: Decision, candidate: Candidate) -> Decision:
    candidate.decisions += 1
    return replace(serving, log={**serving.log, "shadow_model": shadow.model, "shadow_version": candidate.version,
                                 "rollout": "serving"})


def mixed(serving: Decision, challenger: Decision, candidate: Candidate, use_candidate: bool) -> Decision:
    """The decision actually run under a canary, with the mixture's propensities."""
    share = candidate.share
    chosen, other = (challenger, serving) if use_candidate else (serving, challenger)
    p_other = dict(zip(other.models, deterministic_probabilities(other), strict=True))
    p_chosen = deterministic_probabilities(chosen)
    w_chosen = share if use_candidate else 1 - share
    p = np.array([w_chosen * pc + (1 - w_chosen) * p_other.get(m, 0.0)
                  for m, pc in zip(chosen.models, p_chosen, strict=True)])
    candidate.decisions += 1
    candidate.routed += int(use_candidate)
    log = {**chosen.log, "rollout": "canary" if use_candidate else "serving"}
    if use_candidate:
        log["artifact_version"] = candidate.version
    return replace(chosen, probability=float(p[chosen.index]), probabilities=p.tolist(), log=log)
