"""Conversation affinity: a conversation stays on the model that answered its previous turn.

Routing reads one turn at a time, so without this step a multi-turn conversation is re-routed on every turn
and bounces between models. After the router's decision (``core/routing.py``), this step finds the
conversation (``locate``: an explicit id, else a keyed hash of the earlier user turns; see
``wire/conversation.py``), and puts the previous turn's model first unless

- it is no longer servable or allowed (``routing.allowed`` / ``excluded``, the key's scope): switched, "unavailable";
- the router's choice beats it by more than ``switch_margin`` utility points (the knob's own units): "gain";
- it fails: the attempts fall back as usual and the answer's model is recorded, switched, "failed".

A conversation whose history carries provider state (thinking signatures, reasoning items, encrypted
content) never changes provider family: the candidates are cut to the previous model's family (409 when
none is left), and the margin rule then runs within it. ``remember`` records the answering model for the
next turn; the row records the conversation, ``kept`` / ``switched`` / ``new``, and the reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from thalamus.gateway.config import GatewayConfig
from thalamus.gateway.core.call import Call, Turn
from thalamus.gateway.core.request import RequestView
from thalamus.gateway.learning.sessions import SessionEntry, SessionStore
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.wire import conversation as conv
from thalamus.gateway.wire import protocol as p
from thalamus.ledger.prompt_hash import PromptHasher
from thalamus.router.policy import Decision, allowed_mask, utility


def steer(decision: Decision, choice: str, previous: str, margin: float, servable: set[str]) -> tuple[bool, str]:
    """(keep ``previous``?, why) when the router would answer with ``choice`` (its decision, or the best of
    the conversation's family). Pure: the benchmark calls it too."""
    if previous == choice:
        return True, "same"
    if previous not in servable or previous not in decision.models:
        return False, "unavailable"
    j = decision.models.index(previous)
    if not allowed_mask(decision.models, decision.knob)[j]:
        return False, "unavailable"
    if choice not in decision.models:  # a listed fallback the router does not score: nothing to beat
        return True, "margin"
    i = decision.models.index(choice)
    scores = utility(np.asarray([decision.predicted_quality]), np.asarray([decision.expected_cost]),
                     decision.knob, decision.models, cost_scale=decision.extra.get("cost_scale"))[0]
    return (False, "gain") if float(scores[i] - scores[j]) > margin else (True, "margin")


class Affinity:
    """The pipeline step; ``store`` is None when ``affinity.enabled`` is false."""

    def __init__(self, config: GatewayConfig, store: SessionStore | None, hasher: PromptHasher,
                 backends: Mapping[str, Backend]) -> None:
        self.config, self.store, self.hasher, self.backends = config.affinity, store, hasher, backends
        self.margins = {name: rc.switch_margin for name, rc in config.routers.items()}

    def family(self, model: str) -> str:
        backend = self.backends.get(model)
        return backend.config.provider_family if backend is not None else model

    def _key(self, kind: str, call: Call, parts: list[str]) -> str:
        return self.hasher("\x1f".join([kind, call.row.api_key_id or "", *parts]))

    async def locate(self, call: Call, view: RequestView) -> Turn | None:
        """The conversation this request continues (or starts), with its previous answer when known."""
        if self.store is None or not view.messages:
            return None
        number = conv.assistant_turns(view.messages)
        for source in self.config.identify:
            sid = call.session_header if source == "header" else (
                conv.explicit_id(view.original, source) if source in ("metadata", "user") else None)
            if sid is not None:
                key = self._key("id", call, [sid])
                return Turn(key, key, number, await self.store.get(key, number))
            if source == "history":
                lookup, stored = conv.history_parts(view.messages)
                key = self._key("history", call, stored)
                previous = await self.store.get(self._key("history", call, lookup)) if lookup is not None else None
                return Turn(previous.conversation if previous is not None else key, key, number, previous)
        return None

    async def apply(self, call: Call, view: RequestView, router: str, decision: Decision,
                    order: list[str]) -> list[str]:
        """``order`` (the decision's model, then the fallbacks) with the conversation's rule applied."""
        turn = call.turn = await self.locate(call, view)
        if turn is None:
            return order
        row = call.row
        row.session_id, row.affinity = turn.conversation, "new"
        previous = turn.previous
        if previous is None:
            return order
        margin = self.margins.get(router)
        margin = self.config.switch_margin if margin is None else margin
        if conv.provider_state(view.messages, view.native):
            order = [m for m in order if self.family(m) == previous.family]
            if not order:
                raise p.RequestError(409, f"this conversation carries {previous.family} provider state (thinking "
                                     "signatures or reasoning items) and no allowed backend of that family is "
                                     "available; allow one or drop the state from the history",
                                     param="messages", code="conversation_state_family")
        keep, reason = steer(decision, order[0], previous.model, margin, set(order))
        if keep and order[0] != decision.model:  # the router's choice was of another family: the state holds it
            reason = "state"
        turn.kept = keep
        row.affinity, row.affinity_reason = ("kept" if keep else "switched"), reason
        if keep:
            order = [previous.model, *[m for m in order if m != previous.model]]
        row.chosen_model = order[0]
        return order

    def remember(self, call: Call) -> None:
        """After an answer: the model that gave it is what the conversation's next turn starts from."""
        turn, row = call.turn, call.row
        if self.store is None or turn is None or row.status != 200 or not row.chosen_model:
            return
        previous = turn.previous
        if previous is not None and turn.kept and row.chosen_model != previous.model:
            row.affinity, row.affinity_reason = "switched", "failed"
        self.store.put(SessionEntry(turn.store_key, turn.conversation, row.chosen_model,
                                    self.family(row.chosen_model), turn.number, time.time()))
