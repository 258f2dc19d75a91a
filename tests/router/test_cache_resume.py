"""The embedding cache keeps the work of an interrupted job, and a failed fit leaves no fitted state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gateway.gwhelpers import synthetic_dataset
from tests.router.plugins import plugin
from thalamus.errors import ConfigError, NotFittedError
from thalamus.router.carrot import CarrotRouter
from thalamus.router.embedder_registry import make_embedder
from thalamus.router.embedders import CHUNK, CachedEmbedder
from thalamus.router.knn import KNNRouter

__all__ = ["plugin"]


def test_interrupted_job_keeps_finished_chunks(plugin: Any, tmp_path: Path) -> None:
    texts = [f"prompt number {i}" for i in range(CHUNK * 5 + 17)]
    counter = plugin.CountingEmbedder
    counter.fail_after = 3  # three chunks succeed, the fourth raises, as a crash or Ctrl-C would
    with pytest.raises(RuntimeError, match="failing as told after 3 calls"):
        CachedEmbedder(make_embedder("counting"), cache_dir=tmp_path).embed(texts)
    assert counter.texts == 3 * CHUNK
    counter.reset()
    again = CachedEmbedder(make_embedder("counting"), cache_dir=tmp_path).embed(texts)  # a new process
    assert counter.texts == len(texts) - 3 * CHUNK  # only what the first run had not finished
    np.testing.assert_allclose(again, make_embedder("counting").embed(texts), atol=1e-7)


def test_failed_fit_leaves_router_unfitted() -> None:
    ds = synthetic_dataset(30)
    router = KNNRouter(k=0, embedder="hashing")
    with pytest.raises(ConfigError, match="k must be >= 1"):
        router.fit(ds)
    assert not hasattr(router, "models_")
    with pytest.raises(NotFittedError):
        router.predict_quality(["anything"])
    fitted = KNNRouter(k=3, embedder="hashing").fit(ds)
    fitted.k = 0
    with pytest.raises(ConfigError):
        fitted.fit(ds)  # a failed refit must not leave the previous fit half in place either
    with pytest.raises(NotFittedError):
        fitted.route("anything")


def test_carrot_refit_with_knn_drops_linear_state() -> None:
    ds = synthetic_dataset(40)
    router = CarrotRouter(estimator="linear", embedder="hashing").fit(ds)
    assert hasattr(router, "linear_coef_")
    router.estimator = "knn"
    router.fit(ds)
    assert not hasattr(router, "linear_coef_")
    fresh = CarrotRouter(estimator="knn", embedder="hashing").fit(ds)
    texts = ["Question 1: what is 1 plus 7?", "unrelated"]
    np.testing.assert_allclose(router.predict_quality(texts), fresh.predict_quality(texts))
