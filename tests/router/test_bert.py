"""The fine-tuned BERT classifier router on tiny data: learnability, masking, save/load, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rbhelpers import word_dataset as words

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError
from thalamus.router.base import Router
from thalamus.router.bert import BertRouter
from thalamus.router.registry import make_router


def word_dataset(n: int, seed: int) -> RoutingDataset:
    """Five filler words around the key word, repeated texts allowed, some beta outcomes unobserved."""
    return words(n, seed, filler=5, tagged=False, unobserved_every=7)


def tiny_bert(**params: object) -> BertRouter:
    base: dict[str, object] = {"max_seq_length": 32, "epochs": 2, "batch_size": 8, "lr": 1e-4,
                               "head_lr": 5e-3, "seed": 1}
    base.update(params)
    return BertRouter(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted() -> BertRouter:
    return tiny_bert().fit(word_dataset(48, seed=0))


def test_registered_reads_text() -> None:
    router = make_router("bert", epochs=1)
    assert isinstance(router, BertRouter) and router.uses_embeddings is False
    assert router.features(["raw text"]) == ["raw text"]


def test_learns_which_model_is_right_on_which_word(fitted: BertRouter) -> None:
    test = word_dataset(40, seed=3)
    pred = fitted.predict_quality(test.texts)
    assert pred.shape == (40, 2) and ((pred >= 0) & (pred <= 1)).all()
    truth = np.nan_to_num(test.quality, nan=0.0).argmax(axis=1)
    assert float((pred.argmax(axis=1) == truth).mean()) > 0.9
    assert fitted.train_prompts_ == 48 and len(fitted.train_loss_) == 2
    assert fitted.train_loss_[1] < fitted.train_loss_[0]


def test_save_load_identical_without_pickle(fitted: BertRouter, tmp_path: Path) -> None:
    texts = word_dataset(10, seed=8).texts
    fitted.save(tmp_path / "bert")
    files = {p.relative_to(tmp_path / "bert").as_posix() for p in (tmp_path / "bert").rglob("*") if p.is_file()}
    assert {"router.json", "arrays.npz", "head.safetensors", "encoder/model.safetensors",
            "encoder/config.json", "encoder/tokenizer_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    loaded = Router.load(tmp_path / "bert")
    assert isinstance(loaded, BertRouter) and loaded.get_params() == fitted.get_params()
    np.testing.assert_allclose(loaded.predict_quality(texts), fitted.predict_quality(texts), atol=1e-6)
    assert loaded.route(texts[0]).model == fitted.route(texts[0]).model


def test_same_seed_same_predictions_and_training_cap() -> None:
    data, texts = word_dataset(30, seed=2), word_dataset(6, seed=9).texts
    a = tiny_bert(epochs=1, max_train_prompts=8).fit(data)
    b = tiny_bert(epochs=1, max_train_prompts=8).fit(data)
    assert a.train_prompts_ == 8
    np.testing.assert_array_equal(a.predict_quality(texts), b.predict_quality(texts))


def test_bad_params_are_named() -> None:
    with pytest.raises(ConfigError, match="max_seq_length"):
        tiny_bert(max_seq_length=0).fit(word_dataset(4, seed=2))
    with pytest.raises(ConfigError, match="max_train_prompts"):
        tiny_bert(max_train_prompts=0).fit(word_dataset(4, seed=2))
