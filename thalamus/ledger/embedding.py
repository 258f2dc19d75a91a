"""How a routing embedding is stored in a ledger row (``requests.embedding``): float16, little-endian, base64.

The gateway writes it (``ledger.store_embeddings``); re-training and off-policy evaluation read it back.
"""

from __future__ import annotations

import base64

import numpy as np


def encode_embedding(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float64)
