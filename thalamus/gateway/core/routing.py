"""From the request's ``model`` field to the backends to try, in order: resolve, scope, route.

``model`` names a concrete backend (no routing; the configured fallbacks follow it), a router
(``router:NAME`` or an alias) or a RouteLLM name (``router-NAME-THRESHOLD``). The set of models a request may
be served by is resolved here once: the router's servable models, cut to the key's scope and the request's
``routing.allowed`` / ``excluded`` (the knob), and every candidate tried is a configured backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
from dataclasses import replace

from thalamus.errors import ConfigError
from thalamus.gateway.config import GatewayConfig
from thalamus.gateway.core.affinity import Affinity
from thalamus.gateway.core.call import Call, Target
from thalamus.gateway.core.decisions import fallback_order, knob_dict, threshold_knob, unique
from thalamus.gateway.core.request import RequestView
from thalamus.gateway.learning.artifacts import LoadedRouter
from thalamus.gateway.learning.loop import LearningLoop
from thalamus.gateway.learning.policies import PolicyMatcher
from thalamus.gateway.tenancy.controls import TeamControls
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.wire import protocol as p
from thalamus.ledger.row import LedgerRow
from thalamus.router.policy import Decision, Knob, allowed_mask, decide

ROUTELLM_NAME = re.compile(r"^router-(?P<name>.+)-(?P<threshold>[0-9]*\.?[0-9]+)$")


class Planner:
    def __init__(self, config: GatewayConfig, routers: dict[str, LoadedRouter], backends: dict[str, Backend],
                 controls: TeamControls, learning: LearningLoop, affinity: Affinity | None = None) -> None:
        self.config, self.routers, self.backends = config, routers, backends
        self.controls, self.learning, self.affinity = controls, learning, affinity
        self.aliases = {a: r for r in routers.values() for a in r.config.aliases}
        # named routes (learning/policies.py): their texts embedded once, with each router's own embedder
        self.policies = {name: PolicyMatcher(r.config.policies, r.router.embedder_in_use(), r.config.policy_threshold,
                                             r.config.policy_margin)
                         for name, r in routers.items() if r.config.policies}

    def resolve(self, model: str, routed: bool = True) -> Target:
        if model in self.backends:
            return Target(backend=model)
        if not routed:
            raise p.RequestError(404, f"model {model!r} is not a configured backend (embeddings and completions "
                                 "go to a named backend, not a router)", param="model", code="model_not_found")
        name = model.removeprefix("router:")
        if model.startswith("router:") and name in self.routers:
            return Target(router=self.routers[name])
        if model in self.aliases:
            return Target(router=self.aliases[model])
        m = ROUTELLM_NAME.match(model)
        if m and m["name"] in self.routers and self.routers[m["name"]].config.strong:
            return Target(router=self.routers[m["name"]], threshold=float(m["threshold"]))
        raise p.RequestError(404, f"model {model!r} is not a configured backend, router or alias; "
                             "GET /v1/models lists them", param="model", code="model_not_found")

    async def plan(self, call: Call, view: RequestView, routed: bool) -> list[str]:
        """The backends to try, in order (routing decided, the key's scope checked)."""
        target = self.resolve(view.model, routed)
        aliases = tuple(target.router.config.aliases) if target.router else ()
        overrides = self.controls.scope(call.row.api_key_id, target.backend,
                                        target.router.name if target.router else None, view.overrides, aliases)
        if target.router is None:
            assert target.backend is not None
            if call.restrict is not None and target.backend not in call.restrict:
                raise p.RequestError(403, f"the guard stage allows only {list(call.restrict)} for this request, not "
                                     f"{target.backend!r}", param="model", code="guard_restricted")
            call.row.chosen_model = target.backend
            return unique([target.backend, *self.config.fallback.models]) if routed else [target.backend]
        return await self._routed(call, target.router, target.threshold, overrides, view)

    async def _routed(self, call: Call, loaded: LoadedRouter, threshold: float | None,
                      overrides: p.RoutingOverrides, view: RequestView) -> list[str]:
        fallback, text = self.config.fallback, view.routing_text
        spans = call.trace.child("thalamus.route", {"thalamus.router": loaded.name}) if call.trace else None
        with spans if spans is not None else contextlib.nullcontext() as span:
            try:
                knob = overrides.apply(loaded.default_knob())
                if call.restrict is not None:
                    knob = self._restricted(knob, loaded, call.restrict)
                t0 = time.perf_counter()
                route = functools.partial(self._route, loaded, text, knob, threshold)
                decision = route() if self.learning.inline(loaded) else await asyncio.to_thread(route)
                call.row.routing_ms = (time.perf_counter() - t0) * 1000
            except ConfigError as exc:
                raise p.RequestError(400, str(exc), param="routing", code="invalid_routing") from None
            call.decision = decision
            row = call.row
            row.router, row.artifact_version, row.knob = loaded.name, loaded.version, knob_dict(decision.knob)
            row.chosen_model, row.policy = decision.model, decision.log.get("policy")
            self.learning.record(row, loaded, decision)  # probability and candidates (quality, cost, p)
            if span is not None:
                span.set_attributes(decision_attributes(row, decision))
        if decision.model not in self.backends:
            raise p.RequestError(400, f"the router chose {decision.model!r}, which has no configured backend; "
                                 "restrict routing.allowed to backends", param="routing.allowed")
        order = [decision.model, *(fallback.models if fallback.order == "list" else fallback_order(decision))]
        forced = self._forced(call, decision)
        if forced:  # a policy whose models the router does not score: they answer, in the listed order
            order = forced
            row.chosen_model = order[0]
        order = unique([m for m in order if m in self.backends])
        if self.affinity is not None:  # a conversation keeps its model unless the gain beats switch_margin
            order = await self.affinity.apply(call, view, loaded.name, decision, order)
        return order[: fallback.max_candidates]

    @staticmethod
    def _forced(call: Call, decision: Decision) -> list[str]:
        """A matched policy's models that the router does not score, within the request's own restrictions
        (``routing.allowed`` / ``excluded``, the guard stage); empty: the router's decision stands."""
        knob = decision.knob
        return [m for m in decision.log.get("policy_models") or () if m not in knob.excluded
                and (knob.allowed is None or m in knob.allowed) and (call.restrict is None or m in call.restrict)]

    @staticmethod
    def _restricted(knob: Knob, loaded: LoadedRouter, allowed: tuple[str, ...]) -> Knob:
        """The knob cut to the guard stage's models (403 when the router serves none of them)."""
        keep = tuple(m for m in (knob.allowed or loaded.servable) if m in allowed and m in loaded.router.models_)
        if not keep:
            raise p.RequestError(403, f"the guard stage allows only {list(allowed)} for this request, and router "
                                 f"{loaded.name!r} serves none of them", param="model", code="guard_restricted")
        return replace(knob, allowed=keep)

    def _route(self, loaded: LoadedRouter, text: str, knob: Knob, threshold: float | None) -> Decision:
        if threshold is not None:  # RouteLLM form: the configured strong/weak pair of a many-model router
            knob = threshold_knob(loaded.pair(), knob, threshold)
        decision = self.learning.route(loaded, text, knob)
        matcher = self.policies.get(loaded.name)
        return decision if matcher is None else self._policy(matcher, text, decision)

    @staticmethod
    def _policy(matcher: PolicyMatcher, text: str, decision: Decision) -> Decision:
        """The decision within the matching policy's models (the knob chooses among them), or unchanged."""
        match = matcher.match(text, decision.features)
        if match is None:
            return decision
        mask = allowed_mask(decision.models, decision.knob)
        subset = tuple(m for m in match.models if m in decision.models and mask[decision.models.index(m)])
        log = {**decision.log, "policy": match.name, "policy_similarity": match.similarity}
        if not subset:
            return replace(decision, log=log | {"policy_models": match.models},
                           reason=f"policy {match.name}: {', '.join(match.models)}")
        knob = replace(decision.knob, allowed=subset)
        if knob.kind == "threshold" and (len(subset) != 2 or knob.strong not in subset):
            knob = Knob("lambda", 0.0, max_cost=knob.max_cost, allowed=subset)  # no pair left: the best quality
        chosen = decide(decision.predicted_quality, decision.expected_cost, decision.models, knob,
                        cost_scale=decision.extra.get("cost_scale"))
        return replace(chosen, features=decision.features, log=log, reason=f"policy {match.name}: {chosen.reason}")


def decision_attributes(row: LedgerRow, decision: Decision) -> dict[str, str | bool | int | float]:
    """The routing decision as the attributes of the ``thalamus.route`` span (stats/tracing.py)."""
    attrs: dict[str, str | bool | int | float] = {
        "thalamus.artifact_version": row.artifact_version or "", "thalamus.knob": json.dumps(row.knob, sort_keys=True),
        "thalamus.chosen_model": decision.model, "thalamus.candidates": len(decision.models),
        "thalamus.reason": str(decision.reason)[:200]}
    if row.probability is not None:
        attrs["thalamus.probability"] = float(row.probability)
    if decision.model in decision.models:
        i = decision.models.index(decision.model)
        attrs["thalamus.predicted_quality"] = float(decision.predicted_quality[i])
        attrs["thalamus.expected_cost_usd"] = float(decision.expected_cost[i])
    return attrs
