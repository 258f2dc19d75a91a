"""Re-training sets from ledger rows: every (prompt, model) feedback kept, inverse-propensity repetition
(clipped), stored embeddings as features, and the union with base data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from thalamus.errors import DataError
from thalamus.ledger.embedding import encode_embedding
from thalamus.router.knn import KNNRouter
from thalamus.training.retrain import training_set


def _row(i: int, text: str | None, model: str, p: float, score: float, **extra: Any) -> dict[str, Any]:
    return {"id": f"r{i}", "created_at": float(i), "status": 200, "chosen_model": model, "prompt_text": text,
            "prompt_hash": f"h-{text}", "probability": p, "cost_usd": 0.01, "score": score,
            "embedding": None, "embedder_id": None} | extra


def test_every_feedback_of_a_prompt_is_kept_and_weighted_by_inverse_propensity() -> None:
    rows = pd.DataFrame([_row(0, "q1", "a", 1.0, 1.0), _row(1, "q1", "b", 0.25, 0.0),
                         _row(2, "q2", "a", 0.5, 0.5), _row(3, "q2", "a", 0.5, 1.0),
                         _row(4, "q3", "b", 0.01, 1.0)])
    ts = training_set(rows, KNNRouter(embedder="hashing"), clip=10.0)
    d = ts.dataset
    assert (ts.logged_requests, ts.logged_prompts) == (5, 3)
    q1 = d.prompts["text"] == "q1"
    # q1: a (weight 1) in one copy, b (weight 4) in four copies
    assert q1.sum() == 4
    assert np.nansum(~np.isnan(d.quality[q1.to_numpy(), d.models.index("a")])) == 1
    assert (d.quality[q1.to_numpy(), d.models.index("b")] == 0.0).sum() == 4
    q2 = (d.prompts["text"] == "q2").to_numpy()
    assert q2.sum() == 2 and np.all(d.quality[q2, d.models.index("a")] == 0.75)  # mean of both feedbacks
    assert (d.prompts["text"] == "q3").sum() == 10  # 1 / 0.01 = 100, clipped at 10
    plain = training_set(rows, KNNRouter(embedder="hashing"), ips=False).dataset
    assert plain.n_prompts == 3


def test_embedding_only_prompts_become_features_of_their_own_embedder() -> None:
    router = KNNRouter(embedder="hashing", k=1)
    vec = router.features(["hidden prompt"])[0]
    emb = {"embedding": encode_embedding(vec), "embedder_id": router._embedder().id}
    rows = pd.DataFrame([_row(0, None, "a", 1.0, 1.0, **emb), _row(1, "visible", "b", 1.0, 0.0)])
    ts = training_set(rows, router)
    assert ts.features is not None and ts.features.shape == (2, len(vec))
    hidden = int(np.flatnonzero(ts.dataset.prompts["text"] == "")[0])
    assert np.abs(ts.features[hidden] - vec).max() < 2e-3
    router.fit(ts.dataset, features=ts.features)
    assert router.models_ == ["a", "b"]
    other = KNNRouter(embedder="minilm")
    with pytest.raises(DataError, match="stored only as embeddings"):
        training_set(rows, other)
