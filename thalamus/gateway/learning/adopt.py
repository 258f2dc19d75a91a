"""A router and the configured backends: which of its models are served, and which backends it takes on.

One check for ``thalamus serve`` start-up (app.load_routers) and ``thalamus config check``, so both name the
same mismatch and the same fix. A profile router (``cluster``) gives every configured backend it was not
trained on a profile: the backend's ``prior`` (``like: MODEL``, ``tier: NAME``; else the known models'
pooled mean, with wide uncertainty) and a cost per call from the backend's prices (the one price rule,
``BackendConfig.cost``), scaled to the router's cost units by the known models that are backends. Other
routers (knn, mf, linucb, ...) cannot score a model they were not trained on: they ignore such backends,
with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from thalamus.errors import ConfigError
from thalamus.gateway.config import BackendConfig, GatewayConfig, RouterConfig
from thalamus.router.base import Router
from thalamus.router.posterior import ProfileRouter

log = logging.getLogger(__name__)
# a reference call for turning per-token prices into a per-call cost when no known model is priced
REFERENCE_TOKENS = (1000, 500)


@dataclass
class BackendPlan:
    """What serving ``router`` as ``routers.<name>`` means for the configured backends."""

    name: str
    served: list[str]  # the router's own models that are backends
    added: list[BackendConfig] = field(default_factory=list)  # backends a profile router takes on
    ignored: list[str] = field(default_factory=list)  # backends a router without profiles cannot score
    missing: list[str] = field(default_factory=list)  # router models without a backend (never chosen)
    warnings: list[str] = field(default_factory=list)


def plan_backends(name: str, rc: RouterConfig, router: Router, config: GatewayConfig) -> BackendPlan:
    """The plan, or a ConfigError naming the router, the models and the fix."""
    backends = {b.name: b for b in config.backends}
    own = list(router.models_)
    judge = config.judge.backend if config.judge is not None else None
    others = [b for b in config.backends if b.name not in own and b.adopt and b.name != judge]
    profiles = isinstance(router, ProfileRouter)
    plan = BackendPlan(name, [m for m in own if m in backends], missing=[m for m in own if m not in backends])
    if profiles:
        plan.added = others
    else:
        plan.ignored = [b.name for b in others]
    if not plan.served and not plan.added:
        raise ConfigError(
            f"routers.{name}: none of the router's models ({', '.join(own)}) is a backend "
            f"(backends: {', '.join(backends)}), and a {router.name!r} router cannot serve models it was not "
            "trained on. Fix: name a backend after one of the router's models, or train a 'cluster' router "
            "(`thalamus train cluster`), which takes on new backends from their profiles (docs/own-models.md)")
    for i, b in enumerate(config.backends):
        if b.prior is not None and b.prior.like is not None and b.name in [a.name for a in plan.added] \
                and b.prior.like not in own:
            raise ConfigError(f"backends[{i}].prior.like: router {name!r} knows no model {b.prior.like!r}; "
                              f"its models are {', '.join(own)}")
    for key in ("strong", "weak", "baseline"):
        pair_model = getattr(rc, key)
        if pair_model is not None and pair_model not in own and pair_model not in [a.name for a in plan.added]:
            raise ConfigError(f"routers.{name}.{key}: {pair_model!r} is not one of the router's models; "
                              f"use one of: {', '.join(own)}")
    if rc.explore is not None and rc.explore.kind == "thompson" and not profiles:
        raise ConfigError(f"routers.{name}.explore: kind 'thompson' samples a profile router's posterior; a "
                          f"{router.name!r} router has none. Fix: use 'epsilon' or 'softmax', or a cluster router")
    if plan.missing:
        plan.warnings.append(f"routers.{name}: the router's models {', '.join(plan.missing)} have no backend and "
                             "are never chosen; add backends with these names to route to them")
    if plan.ignored:
        plan.warnings.append(
            f"router {name} ({router.name}) ignores backends it was not trained on: {plan.ignored}; a cluster "
            "router would add them from their profiles (docs/own-models.md)")
    if plan.added:
        plan.warnings.append(f"router {name}: backends it was not trained on start from their priors: "
                             + ", ".join(f"{b.name} ({_spec(b) or 'pooled'})" for b in plan.added))
    return plan


def adopt(router: Router, plan: BackendPlan, config: GatewayConfig) -> None:
    """Add the plan's new backends to a profile router (in place): prior from the config, cost from its prices."""
    if not plan.added:
        return
    assert isinstance(router, ProfileRouter)
    scale = cost_scale(router, config)
    for backend in plan.added:
        try:
            router.add_model(backend.name, _spec(backend), scale * backend.cost(*REFERENCE_TOKENS))
        except ConfigError as exc:
            raise ConfigError(f"backends: {backend.name}.prior: {exc}") from None


def cost_scale(router: Router, config: GatewayConfig) -> np.ndarray:
    """Per group: router cost units per USD of a reference call, from the known models that are priced
    backends (their trained cost over what the reference call costs at their configured prices); 1 when none is."""
    backends = {b.name: b for b in config.backends}
    group_cost = getattr(router, "group_cost_", None)
    if group_cost is None:
        return np.ones(1)
    ratios = []
    for j, model in enumerate(router.models_):
        backend = backends.get(model)
        reference = backend.cost(*REFERENCE_TOKENS) if backend is not None else 0.0
        if reference > 0:
            ratios.append(np.asarray(group_cost)[:, j] / reference)
    return np.median(np.stack(ratios), axis=0) if ratios else np.ones(np.asarray(group_cost).shape[0])


def _spec(backend: BackendConfig) -> str | None:
    return backend.prior.spec() if backend.prior is not None else None
