"""The static embedder's ASCII fast path gives exactly the tokenizer's ids, and falls back where it must."""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thalamus.router.ascii_wordpiece import AsciiWordPiece
from thalamus.router.embedders import get_embedder
from thalamus.router.static import StaticEmbedder

pytestmark = pytest.mark.slow  # needs the distilled static table (built on first use, ~40 s)

PLAIN = string.ascii_letters + string.digits + string.punctuation + " \t\n\r"


@pytest.fixture(scope="module")
def static() -> StaticEmbedder:
    emb = get_embedder("static")
    assert isinstance(emb, StaticEmbedder)
    return emb


def tokenizer_ids(emb: StaticEmbedder, text: str) -> list[int]:
    return list(emb._tokenizer.encode(text, add_special_tokens=False).ids)


def fast_path(emb: StaticEmbedder) -> AsciiWordPiece:
    assert emb._ascii is not None, "the MiniLM distillation's tokenizer is uncased BERT WordPiece"
    return emb._ascii


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=PLAIN, max_size=400))
def test_fast_ids_equal_the_tokenizers_on_plain_ascii(static: StaticEmbedder, text: str) -> None:
    assert fast_path(static).ids(text) == tokenizer_ids(static, text)


@pytest.mark.parametrize("text", [
    "What's 2+2? Answer: (A) 4 (B) 5.\n\tQ: ok?",  # punctuation splits, runs of digits
    "supercalifragilisticexpialidocious" * 4,  # one word past WordPiece's 100 characters: [UNK]
    "x = [1, 2, 3]; print(x[-1]) # ~`@^_|{}<>",
    "HELLO World\r\nMixed CASE",
    "",
])
def test_edge_cases_match(static: StaticEmbedder, text: str) -> None:
    assert fast_path(static).ids(text) == tokenizer_ids(static, text)


@pytest.mark.parametrize("text", [
    "café au lait",  # non-ASCII: accents and normalisation are the tokenizer's job
    "a\x00b\x07c\x0bd\x7fe",  # control characters clean_text removes
    "keep [UNK] and [pad] here",  # added tokens are matched before normalisation
    "中文 text",
])
def test_text_outside_the_subset_falls_back(static: StaticEmbedder, text: str) -> None:
    assert fast_path(static).ids(text) is None
    vec = static.embed([text])  # the embedder still embeds it, through the tokenizer
    ids = [i for i in tokenizer_ids(static, text) if i != static._unk]
    expected = static._pool(np.asarray(ids, dtype=np.int64)) if ids else np.zeros(static.dim, np.float32)
    norm = max(float(np.linalg.norm(expected)), 1e-12)
    np.testing.assert_allclose(vec[0], expected / norm, rtol=1e-6, atol=1e-7)


def test_mixed_batch_keeps_order(static: StaticEmbedder) -> None:
    texts = ["plain ascii prompt", "naïve prompt", "another plain one", "[UNK] literal"]
    together = static.embed(texts)
    one_by_one = np.vstack([static.embed([t]) for t in texts])
    np.testing.assert_array_equal(together, one_by_one)
    assert float(together[0] @ together[2]) < 0.9999  # not all the same row

