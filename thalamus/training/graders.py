"""Graders for onboarding: how a new model's answer to a probe becomes a score in [0, 1].

- ``recorded``: the probe dataset's recorded quality of that model on that prompt (the model must be
  one of the dataset's columns). For tests and benchmarks, against the replay upstream.
- ``reference``: the answer against a gold answer (a ``reference`` column of a probe file): 1 when the
  normalised reference equals the normalised answer or ends it (last line, word-bounded), else 0.
- ``judge``: the config's judge backend grades the answer on its absolute scale (gateway judge prompt
  and parser, so onboarding and live judging score alike).
- ``agreement``: no labels, after Smoothie (Guha et al. 2024, "Smoothie: Label Free Language Model
  Routing"). On each prompt, the answers of the router's known models (recorded in the probe dataset)
  and the new model's answer are embedded; with three or more answers, each model's distance to the
  unobserved truth is estimated from the pairwise distances (d_ab + d_ac - d_bc) / 2 averaged over
  pairs. A model closer to the consensus is better; the scale is set by regressing the known models'
  profile quality on their agreement, prompt by prompt, so the new model's score is the known models'
  mean predicted quality on that prompt plus the slope times its agreement above theirs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from thalamus.errors import DataError
from thalamus.router.cluster import ClusterRouter
from thalamus.router.embedders import Embedder
from thalamus.training.probes import ProbeSet

GRADERS = ("recorded", "reference", "judge", "agreement")
SHORT = 24  # answers up to this many characters (normalised) are compared exactly, not by embedding


def normalise_answer(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s.-]", " ", text.lower())).strip(" .")


def recorded_scores(probes: ProbeSet, model: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """The probe dataset's recorded quality of ``model`` on each probe row (NaN where not recorded)."""
    ds = probes.dataset
    if ds is None:
        raise DataError(f"grader 'recorded': probe set {probes.name!r} records no outcomes; probe with a "
                        "dataset that has the model as a column, or use --grader judge/agreement/reference")
    if model not in ds.models:
        raise DataError(f"grader 'recorded': probe set {probes.name!r} has no recorded quality for model "
                        f"{model!r}; its models are {', '.join(ds.models)}")
    return np.asarray(ds.quality[np.asarray(rows, dtype=np.int64), ds.models.index(model)], dtype=np.float64)


def reference_scores(probes: ProbeSet, rows: Sequence[int] | np.ndarray, answers: Sequence[str | None]) -> np.ndarray:
    """1 / 0 against each probe's gold answer; NaN where the probe has none or the model gave no answer."""
    if probes.references is None or not any(r.strip() for r in probes.references):
        raise DataError(f"grader 'reference': probe set {probes.name!r} has no gold answers; give a CSV/JSONL "
                        "probe file with 'text' and 'reference' columns, or use --grader judge/agreement")
    out = np.full(len(rows), np.nan)
    for k, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        ref = normalise_answer(probes.references[row])
        if not ref or answer is None:
            continue
        got = normalise_answer(answer)
        last = normalise_answer(answer.strip().splitlines()[-1]) if answer.strip() else ""
        hit = got == ref or last == ref or bool(re.search(rf"(^|\W){re.escape(ref)}$", last))
        out[k] = 1.0 if hit else 0.0
    return out


def peer_models(router: ClusterRouter, probes: ProbeSet, model: str) -> list[str]:
    """The router's known models whose answers the probe dataset records."""
    ds = probes.dataset
    if ds is None or ds.responses is None:
        raise DataError(f"grader 'agreement': probe set {probes.name!r} records no answers of the router's "
                        "models, so there is nothing to agree with; probe with a dataset that has recorded "
                        "responses (routerbench_subset), or use --grader judge")
    peers = [m for m in router.trained_models() if m != model and m in ds.models]
    if len(peers) < 2:
        raise DataError(f"grader 'agreement': probe set {probes.name!r} records answers of {len(peers)} of the "
                        "router's models; agreement needs at least two besides the new one")
    return peers


def _distances(texts: list[str], vectors: dict[str, np.ndarray]) -> np.ndarray:
    n = len(texts)
    d = np.zeros((n, n))
    norm = [normalise_answer(t) for t in texts]
    for a, b in combinations(range(n), 2):
        if len(norm[a]) <= SHORT and len(norm[b]) <= SHORT:
            d[a, b] = 0.0 if norm[a] == norm[b] else 1.0
        else:
            d[a, b] = 1.0 - float(vectors[texts[a]] @ vectors[texts[b]])
        d[b, a] = d[a, b]
    return d


def smoothie_agreement(d: np.ndarray) -> np.ndarray:
    """Minus each answer's estimated distance to the truth, from pairwise distances (n >= 3)."""
    n = len(d)
    out = np.zeros(n)
    for a in range(n):
        others = [(b, c) for b, c in combinations(range(n), 2) if a not in (b, c)]
        out[a] = -float(np.mean([(d[a, b] + d[a, c] - d[b, c]) / 2 for b, c in others]))
    return out


def agreement_scores(router: ClusterRouter, probes: ProbeSet, model: str, rows: Sequence[int] | np.ndarray,
                     answers: Sequence[str | None], probs: np.ndarray, embedder: Embedder) -> np.ndarray:
    """Label-free scores of ``model``'s answers on ``rows`` (NaN where fewer than three answers exist)."""
    peers = peer_models(router, probes, model)
    ds = probes.dataset
    assert ds is not None and ds.responses is not None  # checked by peer_models
    cols = [ds.models.index(m) for m in peers]
    predicted = probs @ router.group_quality_[:, [router.models_.index(m) for m in peers]]  # (n, peers)
    texts = sorted({t for r in rows for t in ds.responses[r, cols] if isinstance(t, str) and t}
                   | {a for a in answers if a})
    vectors = dict(zip(texts, np.asarray(embedder.embed(texts), dtype=np.float64), strict=True)) if texts else {}
    for key, vec in vectors.items():
        vectors[key] = vec / (np.linalg.norm(vec) or 1.0)
    peer_dev = np.full((len(rows), len(peers)), np.nan)  # each peer's agreement above the peers' mean
    new = np.full((len(rows), 2), np.nan)  # (peers' mean predicted quality, new model's agreement above)
    for k, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        have = [j for j, c in enumerate(cols) if isinstance(ds.responses[row, c], str) and ds.responses[row, c]]
        if answer is None or len(have) < 2:
            continue
        d = _distances([ds.responses[row, cols[j]] for j in have] + [answer], vectors)
        agree = smoothie_agreement(d)
        peer_dev[k, have] = agree[:-1] - agree[:-1].mean()
        new[k] = predicted[k, have].mean(), agree[-1] - agree[:-1].mean()
    slope = _slope(peer_dev, predicted, probs)
    return np.asarray(np.clip(new[:, 0] + slope * new[:, 1], 0.0, 1.0))


def _slope(peer_dev: np.ndarray, predicted: np.ndarray, probs: np.ndarray) -> float:
    """Quality per unit of agreement, fitted on the peers' per-group means (averaging over a group's
    prompts first keeps the per-prompt noise from flattening the slope)."""
    seen = np.isfinite(peer_dev)
    w = probs.T @ seen  # (groups, peers) weight of each peer's answers in each group
    agree = (probs.T @ np.where(seen, peer_dev, 0.0)) / np.maximum(w, 1e-12)
    quality = (probs.T @ np.where(seen, predicted, 0.0)) / np.maximum(w, 1e-12)
    quality = quality - (quality * w).sum(axis=1, keepdims=True) / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    den = float((w * agree**2).sum())
    return max(float((w * agree * quality).sum()) / den, 0.0) if den > 0 else 0.0
