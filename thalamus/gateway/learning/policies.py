"""Named routing policies: "code goes to X, legal questions never to Y", stated in words, no labels needed.

A router's ``policies`` each have a name, a one-line description, optional example prompts and the models
that may answer a prompt that matches. At startup every policy's texts are embedded with the router's own
embedder; a policy is the normalised mean of its texts' vectors. A prompt matches the policy whose vector
is most similar (cosine) to its routing embedding, when that similarity reaches the policy's threshold.

The threshold is calibrated from the policies themselves: a policy's threshold is the highest similarity
any other policy's own texts reach to it, plus ``policy_margin`` (so no policy's description matches
another policy), and at least ``policy_threshold``; a policy's own ``threshold`` overrides both. The order
(core/routing.py): the learned router predicts, then a matching policy cuts the candidates to its models
and the knob chooses among them; the decision's reason and the row's ``policy`` name it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thalamus.gateway.config import PolicyConfig
from thalamus.router.embedders import Embedder


@dataclass(frozen=True)
class PolicyMatch:
    name: str
    models: tuple[str, ...]
    similarity: float


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out


class PolicyMatcher:
    """Policy vectors and calibrated thresholds for one router's embedder."""

    def __init__(self, policies: Sequence[PolicyConfig], embedder: Embedder, floor: float = 0.2,
                 margin: float = 0.02) -> None:
        self.policies = list(policies)
        texts = [[p.description, *p.examples] for p in self.policies]
        vectors = [_unit(embedder.embed(t)) for t in texts]
        self.centroids = _unit(np.stack([v.mean(axis=0) for v in vectors]))
        self.embedder = embedder
        self.thresholds = np.array([self._threshold(i, vectors, floor, margin) for i in range(len(self.policies))])

    def _threshold(self, i: int, vectors: list[np.ndarray], floor: float, margin: float) -> float:
        given = self.policies[i].threshold
        if given is not None:
            return given
        others = [v for j, v in enumerate(vectors) if j != i]
        worst = max((float((v @ self.centroids[i]).max()) for v in others), default=floor)
        return max(floor, worst + margin)

    @property
    def dims(self) -> int:
        return int(self.centroids.shape[1])

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        """(n, policies) cosine similarities of routing embeddings to the policies."""
        out: np.ndarray = _unit(np.atleast_2d(vectors)) @ self.centroids.T
        return out

    def match(self, text: str, features: np.ndarray | None = None) -> PolicyMatch | None:
        """The matching policy of one prompt (its routing embedding when it has the right size), or None."""
        vector = features if features is not None and np.asarray(features).shape[-1] == self.dims else (
            self.embedder.embed([text])[0])
        sims = self.similarities(np.asarray(vector))[0]
        best = int(np.argmax(sims))
        if sims[best] < self.thresholds[best]:
            return None
        policy = self.policies[best]
        return PolicyMatch(policy.name, tuple(policy.models), float(sims[best]))
