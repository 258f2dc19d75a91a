"""The matrix-factorization router: learnability, preferences, early stopping, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rbhelpers import FILLER, word_dataset

from thalamus.datasets.schema import PreferenceDataset, RoutingDataset
from thalamus.errors import ConfigError, NotFittedError
from thalamus.router.base import Router
from thalamus.router.mf import MFRouter
from thalamus.router.registry import make_router


def vote_dataset(n: int = 120, seed: int = 1) -> PreferenceDataset:
    """'alpha' beats 'beta' on 'giraffe' prompts, loses on 'volcano' prompts; some ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        key = "giraffe" if i % 2 == 0 else "volcano"
        text = " ".join([key, *rng.choice(FILLER, size=5)]) + f" #{i}"
        alpha_wins = key == "giraffe"
        flip = i % 3 == 0  # present the pair in both orders
        a, b = ("beta", "alpha") if flip else ("alpha", "beta")
        winner = "tie" if i % 10 == 9 else ("a" if alpha_wins != flip else "b")
        rows.append({"prompt_id": f"p{i}", "text": text, "model_a": a, "model_b": b, "winner": winner})
    return PreferenceDataset("votes", pd.DataFrame(rows))


def fast_mf(**params: object) -> MFRouter:
    base: dict[str, object] = {"embedder": "hashing", "dim": 16, "epochs": 60, "lr": 0.02, "batch_size": 32,
                               "patience": 8, "seed": 3}
    base.update(params)
    return MFRouter(**base)  # type: ignore[arg-type]


def test_registered_and_params() -> None:
    router = make_router("mf", dim=8, embedder="hashing")
    assert isinstance(router, MFRouter)
    assert router.get_params()["dim"] == 8
    with pytest.raises(NotFittedError):
        router.predict_quality(["hello"])


def test_learns_which_model_is_right_on_which_word() -> None:
    train, test = word_dataset(240, seed=0), word_dataset(100, seed=5)
    router = fast_mf().fit(train)
    pred = router.predict_quality(test.texts)
    assert pred.shape == (100, 2)
    assert ((pred >= 0) & (pred <= 1)).all()
    accuracy = float((pred.argmax(axis=1) == test.quality.argmax(axis=1)).mean())
    assert accuracy > 0.9
    assert router.proj_.shape == (256, 16) and router.model_vecs_.shape == (2, 16)


def test_unobserved_quality_is_masked_not_learned_as_zero() -> None:
    data = word_dataset(240)
    q = data.quality.copy()
    q[:, 0] = np.where(q[:, 0] == 1.0, 1.0, np.nan)  # alpha only ever observed succeeding
    masked = RoutingDataset("masked", data.prompts, data.models, q, data.cost)
    pred = fast_mf().fit(masked).predict_quality(word_dataset(60, seed=9).texts)
    assert pred[:, 0].mean() > 0.7  # NaN read as 0 would give ~0.5: right on giraffe, wrong on volcano


def test_graded_scores_with_mse_loss() -> None:
    data = word_dataset(240)
    graded = RoutingDataset("graded", data.prompts, data.models, 0.2 + 0.6 * data.quality, data.cost)
    test = word_dataset(80, seed=4)
    pred = fast_mf(loss="mse", epochs=120).fit(graded).predict_quality(test.texts)
    assert float((pred.argmax(axis=1) == test.quality.argmax(axis=1)).mean()) > 0.9
    assert pred.min() > 0.1 and pred.max() < 0.9  # regressed toward the 0.2 / 0.8 labels


def test_preferences_rank_the_preferred_model_higher() -> None:
    router = fast_mf(val_fraction=0.0, epochs=80).fit(vote_dataset())
    assert router.models_ == ["alpha", "beta"]
    s = router.scores(router.features(["giraffe please tell me about it", "volcano tell me about it"]))
    assert s[0, 0] > s[0, 1]  # alpha preferred on giraffe prompts
    assert s[1, 1] > s[1, 0]  # beta preferred on volcano prompts
    assert (router.predict_cost(["giraffe"]) == 0).all()


def test_fit_preferences_equals_fit_with_preferences() -> None:
    votes = vote_dataset(60)
    a = fast_mf(epochs=10).fit_preferences(votes).predict_quality(["giraffe run"])
    b = fast_mf(epochs=10).fit(votes).predict_quality(["giraffe run"])
    np.testing.assert_array_equal(a, b)


def test_early_stopping_stops_before_max_epochs() -> None:
    # labels independent of the text: validation loss can only stall or rise
    data = word_dataset(200)
    rng = np.random.default_rng(0)
    noise = RoutingDataset("noise", data.prompts, data.models, rng.integers(0, 2, (200, 2)).astype(float),
                           data.cost)
    router = fast_mf(epochs=200, patience=3, val_fraction=0.25, lr=0.05).fit(noise)
    assert router.epochs_run_ < 200
    assert router.epochs_run_ == router.best_epoch_ + 3
    assert len(router.val_history_) == router.epochs_run_
    best = min(router.val_history_)
    assert router.val_history_[router.best_epoch_ - 1] == best


def test_same_seed_same_predictions_and_save_load(tmp_path: Path) -> None:
    data, texts = word_dataset(120), word_dataset(20, seed=7).texts
    a = fast_mf(epochs=15).fit(data)
    b = fast_mf(epochs=15).fit(data)
    np.testing.assert_array_equal(a.predict_quality(texts), b.predict_quality(texts))
    c = fast_mf(epochs=15, seed=4).fit(data)
    assert not np.array_equal(a.predict_quality(texts), c.predict_quality(texts))
    a.save(tmp_path / "mf")
    loaded = Router.load(tmp_path / "mf")
    assert isinstance(loaded, MFRouter) and loaded.get_params() == a.get_params()
    np.testing.assert_array_equal(loaded.predict_quality(texts), a.predict_quality(texts))
    assert loaded.route(texts[0]).model == a.route(texts[0]).model


def test_bad_params_are_named() -> None:
    with pytest.raises(ConfigError, match="loss"):
        fast_mf(loss="hinge").fit(word_dataset(20))
    with pytest.raises(ConfigError, match="val_fraction"):
        fast_mf(val_fraction=1.5).fit(word_dataset(20))
