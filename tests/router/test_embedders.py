"""Embedders: the packaged MiniLM loads offline, the hashing one is deterministic, the cache works."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thalamus.router.embedders import CachedEmbedder, HashingEmbedder, MiniLMEmbedder


class CountingEmbedder:
    """A real embedder that counts how many texts reach it."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(32)
        self.id, self.dim, self.seen = "counting-32", 32, 0

    def embed(self, texts: list[str]) -> np.ndarray:  # type: ignore[override]
        self.seen += len(texts)
        return self.inner.embed(texts)


def test_hashing_is_deterministic_and_normalised() -> None:
    a = HashingEmbedder(64).embed(["hello world", "hello world", "other"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


def test_cache_embeds_each_text_once(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, cache_dir=tmp_path)
    first = cached.embed(["a", "b", "a"])
    assert inner.seen == 2
    second = CachedEmbedder(inner, cache_dir=tmp_path).embed(["b", "a", "c"])
    assert inner.seen == 3
    np.testing.assert_array_equal(first[1], second[0])
    assert cached.embed([]).shape == (0, 32)


def test_minilm_loads_offline_and_separates_topics() -> None:
    emb = MiniLMEmbedder(progress=False)
    v = emb.embed(["How do I sort a list in Python?", "Sorting lists in python", "The capital of France"])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_minilm_int8_is_its_own_embedder_close_to_fp32() -> None:
    texts = ["How do I sort a list in Python?", "Sorting lists in python", "The capital of France"]
    fp32, int8 = MiniLMEmbedder(progress=False), MiniLMEmbedder(progress=False, int8=True)
    assert int8.id == fp32.id + "-int8"  # its vectors never mix with fp32 ones in the cache or an artifact
    a, b = fp32.embed(texts), int8.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(b, int8.embed(texts))  # deterministic
    one_by_one = np.vstack([int8.embed([t]) for t in texts])
    np.testing.assert_allclose(b, one_by_one, atol=1e-6)  # and independent of the batch it came in
    assert (np.sum(a * b, axis=1) > 0.85).all()  # an approximation of the same model, not a different one
    assert float(b[0] @ b[1]) > float(b[0] @ b[2]) + 0.3


def test_onnx_backend_gives_the_torch_vectors(tmp_path: Path) -> None:
    long_text = "word " * 400  # past the 256-token window: both backends truncate the same way
    texts = ["How do I sort a list in Python?", "The capital of France", long_text, "ok"]
    torch_emb = MiniLMEmbedder(progress=False)
    onnx_emb = MiniLMEmbedder(progress=False, backend="onnx", cache_dir=tmp_path)
    assert onnx_emb.id == torch_emb.id  # interchangeable in the cache and in trained routers
    exported = tmp_path / "onnx" / "minilm-l6-v2-mean-normalised.onnx"
    first_export = exported.stat().st_mtime_ns
    expected = torch_emb.embed(texts)
    np.testing.assert_allclose(onnx_emb.embed(texts), expected, atol=1e-5)  # one padded batch
    np.testing.assert_allclose(np.vstack([onnx_emb.embed([t]) for t in texts]), expected, atol=1e-5)
    MiniLMEmbedder(progress=False, backend="onnx", cache_dir=tmp_path)  # a second process reuses the export
    assert exported.stat().st_mtime_ns == first_export
    assert onnx_emb.embed([]).shape == (0, 384)
