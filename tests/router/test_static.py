"""The static embedder: built once from the packaged MiniLM, cached, fast, and its own embedder."""

from __future__ import annotations

import time

import numpy as np
import pytest

from thalamus.errors import ConfigError
from thalamus.router.embedders import get_embedder
from thalamus.router.static import StaticEmbedder

pytestmark = pytest.mark.slow  # the first run in a fresh cache dir distils MiniLM (~40 s to a few minutes)


@pytest.fixture(scope="module")
def static() -> StaticEmbedder:
    emb = get_embedder("static")
    assert isinstance(emb, StaticEmbedder)  # a lookup table: never wrapped in the SQLite cache
    return emb


def test_static_is_a_distinct_embedder_that_separates_topics(static: StaticEmbedder) -> None:
    assert static.id.startswith("static-minilm-l6-v2-pca256") and static.dim == 256
    assert static.id != get_embedder("minilm").id
    v = static.embed(["How do I sort a list in Python?", "Sorting lists in python", "The capital of France", ""])
    assert v.shape == (4, 256) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-5)
    assert not v[3].any()  # an empty text has no tokens: the zero vector, not NaN
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_static_table_is_built_once_and_reused(static: StaticEmbedder) -> None:
    table = static.path / "model.safetensors"
    before = table.stat().st_mtime_ns
    start = time.perf_counter()
    again = StaticEmbedder()  # a new instance (as in a new process) loads the cached table
    assert time.perf_counter() - start < 20
    assert table.stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.embed(["same text"]), static.embed(["same text"]))


def test_tail_keeps_the_question_of_a_long_prompt(static: StaticEmbedder) -> None:
    prefix = "Example: the sky is blue because of Rayleigh scattering. " * 80  # far over 512 tokens
    a, b = prefix + "Question: what is the derivative of x squared?", prefix + "Question: who wrote Hamlet?"
    head_only = static.embed([a, b])
    tailed_emb = get_embedder("static:max_tokens=32,tail=16")
    assert tailed_emb.id == static.table_id + "-max32-tail16"
    tailed = tailed_emb.embed([a, b])
    np.testing.assert_allclose(head_only[0], head_only[1], atol=1e-6)  # the questions were cut off
    assert float(tailed[0] @ tailed[1]) < 0.95  # with a tail (head-only: identical), the two prompts differ


def test_static_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="tail must be in"):
        get_embedder("static:tail=600")
    with pytest.raises(ConfigError, match="unknown option"):
        get_embedder("static:colour=blue")
