"""ONNX Runtime backend of the MiniLM embedder: the same vectors for less CPU per query.

The packaged MiniLM encoder plus sentence-transformers' mean pooling and L2 normalisation
are exported once with torch's ONNX exporter (dynamic batch and sequence axes) into the
cache directory, checked against torch on a padded probe batch, and run with ONNX Runtime.
The vectors agree with the torch backend's to ~1e-6 (cosine > 0.99999), so both backends
share one embedder id: cached vectors and trained routers serve either. Chosen with
``THALAMUS_MINILM_BACKEND=onnx``. Imported only when that backend is chosen.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from thalamus.errors import ThalamusError

MAX_EXPORT_DEVIATION = 1e-4  # max abs difference from torch on the probe batch
PROBE = ["short", "a somewhat longer probe sentence, so that the batch needs padding " * 3]


class OnnxMiniLM:
    """Tokenizer of a SentenceTransformer + its encoder, pooled and normalised, in ONNX Runtime."""

    def __init__(self, model: Any, model_path: str, cache_dir: Path, dim: int) -> None:
        self.dim = dim
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        path = cache_dir / "onnx" / "minilm-l6-v2-mean-normalised.onnx"
        if not path.exists():
            export(model_path, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many as the torch backend would use
        # no busy-waiting between calls: a gateway process needs its cores for everything else
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths, little padding
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._run([texts[i] for i in idx])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feeds = {"input_ids": enc["input_ids"].astype(np.int64),
                 "attention_mask": enc["attention_mask"].astype(np.int64)}
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


def export(model_path: str, path: Path) -> None:
    """Export encoder + pooling to ``path`` (atomically), after checking it against torch."""
    from transformers import AutoModel, AutoTokenizer

    encoder = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    pooled = Pooled(encoder).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    probe = tokenizer(PROBE, padding=True, return_tensors="pt")
    args = (probe["input_ids"], probe["attention_mask"])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    # the exporter narrates its passes on stdout and warns about its own internals
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(pooled, args, str(tmp), dynamo=True, input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], external_data=False,
                          dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    with torch.inference_mode():
        expected = pooled(*args).numpy()
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": args[0].numpy(), "attention_mask": args[1].numpy()})[0]
    deviation = float(np.abs(got - expected).max())
    if deviation > MAX_EXPORT_DEVIATION:
        tmp.unlink(missing_ok=True)
        raise ThalamusError(f"ONNX export of {model_path} deviates from torch by {deviation:.2e} "
                            f"(> {MAX_EXPORT_DEVIATION:g}); use THALAMUS_MINILM_BACKEND=torch")
    os.replace(tmp, path)


class Pooled(torch.nn.Module):
    """Encoder -> attention-masked mean over tokens -> L2 normalisation (sentence-transformers' pipeline)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1)
