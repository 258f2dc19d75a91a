"""Re-training by correcting a prior router with logged feedback (thalamus.training.shrink): the formulas
by hand, neighbourhoods that keep ties, and the union with base data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets.schema import RoutingDataset
from thalamus.router.baselines import BestSingleRouter
from thalamus.router.knn import KNNRouter
from thalamus.training.shrink import points, shrunk_training_set


def _row(i: int, text: str, model: str, score: float, cost: float = 0.01) -> dict[str, Any]:
    return {"id": f"r{i}", "created_at": float(i), "status": 200, "chosen_model": model, "prompt_text": text,
            "prompt_hash": f"h-{text}", "probability": 0.5, "cost_usd": cost, "score": score,
            "embedding": None, "embedder_id": None}


def _base() -> RoutingDataset:
    frame = pd.DataFrame({"prompt_id": ["b0", "b1"], "text": ["base one", "base two"]})
    quality = np.array([[0.7, 0.5, 0.6], [0.9, 0.5, 0.6]])  # means a 0.8, b 0.5, c 0.6
    cost = np.array([[0.01, 0.001, 0.002], [0.01, 0.001, 0.002]])
    return RoutingDataset("base", frame, ["a", "b", "c"], quality, cost)


def test_feedback_corrects_the_prior_where_observed_and_moves_the_rest_by_the_pooled_residual() -> None:
    base = _base()
    prior = BestSingleRouter().fit(base)
    rows = pd.DataFrame([_row(0, "q1", "a", 0.4), _row(1, "q1", "a", 0.4), _row(2, "q2", "b", 0.9)])
    ts = shrunk_training_set(rows, KNNRouter(embedder="hashing"), prior, base, neighbours=10, strength=2.0)
    d = ts.dataset
    assert (ts.logged_requests, ts.logged_prompts, ts.base_prompts) == (3, 2, 2)
    assert d.models == ["a", "b", "c"] and d.n_prompts == 4
    np.testing.assert_allclose(d.quality[:2], base.quality)  # base rows unchanged
    # residuals: a 2 x (0.4 - 0.8), b 1 x (0.9 - 0.5); pooled = (-0.8 + 0.4) / (3 + 1) = -0.1
    # a: (-0.8 + 2 x -0.1) / (2 + 2) = -0.25; b: (0.4 - 0.2) / (1 + 2); c, never observed: -0.2 / 2
    expected = [0.8 - 0.25, 0.5 + 0.2 / 3, 0.6 - 0.1]
    np.testing.assert_allclose(d.quality[2:], [expected, expected])  # every model of every logged prompt
    # cost: a observed at its prior; b 0.01 vs 0.001 once -> + 0.009 / 3; c keeps its prior
    np.testing.assert_allclose(d.cost[2:], [[0.01, 0.001 + 0.003, 0.002]] * 2)


def test_without_a_prior_the_logged_means_are_the_prior_and_new_models_join() -> None:
    rows = pd.DataFrame([_row(0, "q1", "a", 1.0), _row(1, "q2", "a", 0.0), _row(2, "q3", "new", 1.0)])
    ts = shrunk_training_set(rows, KNNRouter(embedder="hashing"), None, neighbours=10, strength=1.0)
    assert ts.dataset.models == ["a", "new"]
    # prior a 0.5, new 1.0; residuals a +0.5, -0.5, new 0: pooled 0, so each model keeps its logged mean
    np.testing.assert_allclose(ts.dataset.quality, [[0.5, 1.0]] * 3)


def test_prompts_that_embed_alike_are_all_neighbours() -> None:
    X = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] + [[0.8, 0.6]])
    pts = points(X, 2)
    same = pts.of_prompt[0]
    assert set(pts.of_prompt[:5]) == {same} and len(pts.neighbours) == 3
    assert list(pts.neighbours[same]) == [same]  # 5 prompts >= k: the tie group alone, never a cut through it
    lone = pts.of_prompt[6]
    assert pts.neighbours[lone][0] == lone and same in pts.neighbours[lone]  # itself, then the nearest group


def test_bad_settings_are_refused() -> None:
    from thalamus.errors import DataError

    rows = pd.DataFrame([_row(0, "q1", "a", 1.0)])
    with pytest.raises(DataError, match="neighbours must be >= 1"):
        shrunk_training_set(rows, KNNRouter(embedder="hashing"), neighbours=0)


def test_prompts_kept_only_as_embeddings_are_neighbours_and_features() -> None:
    from thalamus.ledger.embedding import encode_embedding

    router = KNNRouter(embedder="hashing", k=1)
    vec = np.asarray(router.features(["hidden prompt"]))[0]
    hidden = _row(0, "", "a", 1.0) | {"prompt_text": None, "embedding": encode_embedding(vec),
                                      "embedder_id": router._embedder().id}
    rows = pd.DataFrame([hidden, _row(1, "visible", "b", 0.0)])
    ts = shrunk_training_set(rows, router, None, _base(), neighbours=5, strength=1.0)
    assert ts.features is not None and ts.features.shape == (4, len(vec))  # 2 base rows + 2 logged
    assert np.abs(ts.features[2] - vec).max() < 2e-3
    assert router.fit(ts.dataset, features=ts.features).models_ == ["a", "b", "c"]
