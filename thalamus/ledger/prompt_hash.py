"""Keyed prompt hashes for the ledger: rows can be grouped by prompt without the hash revealing it.

An unsalted hash of a short prompt ("yes", "hi") is guessed by hashing candidates; an HMAC-SHA256 under a
per-deployment secret is not. The secret comes from the environment variable named by
``ledger.hash_key_env`` (default ``THALAMUS_PROMPT_HASH_KEY``); when unset, a random key is created once in
``<cache dir>/prompt_hash.key`` (mode 0600) and reused. Replicas that share a ledger must share the key
(set the variable) for their hashes to agree.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from thalamus.errors import ConfigError


class PromptHasher:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the prompt hash key must be at least 16 bytes")
        self._key = key

    def __call__(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def load_key(env_var: str, key_file: Path) -> bytes:
    """The key from ``env_var``, else from ``key_file`` (created with a random key, owner-only)."""
    value = os.environ.get(env_var)
    if value:
        return value.encode()
    try:
        return key_file.read_bytes().strip()
    except FileNotFoundError:
        pass
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another gateway created it first: use theirs once it is written
        for _ in range(100):
            existing = key_file.read_bytes().strip()
            if existing:
                return existing
            time.sleep(0.01)
        raise ConfigError(f"{key_file}: the prompt hash key file is empty; delete it or set {env_var}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key
