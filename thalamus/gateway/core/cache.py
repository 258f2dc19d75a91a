"""An optional exact-match response cache for non-stream chat completions (``cache.enabled``, off by default).

The key is the SHA-256 of the whole request body (canonical JSON: keys sorted, so field order does not
matter), the model the request resolved to (a router's choice, or the named backend) and, with
``cache.per_key`` (the default), the API key id: one team's answers are not served to another. Entries
live in this process only, for ``ttl_s``, least recently used evicted beyond ``max_entries`` or
``max_bytes`` of response bodies. A hit is answered without an upstream call; its ledger row has
``cache: hit``, cost 0 and zero tokens (no model was called), and the response carries
``x-thalamus-cache: hit``. Streams are not cached.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from thalamus.gateway.config import CacheConfig
from thalamus.gateway.core.call import Call, Result


@dataclass
class Entry:
    body: bytes
    headers: dict[str, str]
    expires: float


class ResponseCache:
    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.enabled = config.enabled
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def key(self, body: Mapping[str, Any], model: str, api_key_id: str | None) -> str:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        scope = api_key_id if self.config.per_key and api_key_id is not None else ""
        return hashlib.sha256("\x00".join((canonical, model, scope)).encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires <= time.monotonic():
            if entry is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, body: bytes, headers: dict[str, str]) -> None:
        if len(body) > self.config.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = Entry(body, headers, time.monotonic() + self.config.ttl_s)
        self._bytes += len(body)
        while len(self._entries) > self.config.max_entries or self._bytes > self.config.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.body)

    def __len__(self) -> int:
        return len(self._entries)


async def answer_cached(cache: ResponseCache, call: Call, whole: Mapping[str, Any], candidates: list[str],
                        complete: Callable[[], Awaitable[Result]],
                        finish: Callable[[Call], Awaitable[None]]) -> Result:
    """A non-stream chat request with the cache on: a hit answers without an upstream call, at cost 0;
    a miss is answered as usual (``complete``) and its response stored. ``whole`` is the body as the client
    sent it."""
    row = call.row
    key = cache.key(whole, candidates[0], row.api_key_id)
    entry = cache.get(key)
    if entry is None:
        row.cache = "miss"
        result = await complete()
        if result.body is not None:
            cache.put(key, result.body, {k: v for k, v in result.headers.items() if k != "x-thalamus-request-id"})
        return result
    row.cache, row.status, row.cost_usd, row.cost_estimated = "hit", 200, 0.0, False
    row.prompt_tokens = row.completion_tokens = 0  # no model was called
    row.chosen_model, row.ttft_ms = entry.headers.get("x-thalamus-model", candidates[0]), call.elapsed_ms()
    await finish(call)
    return Result(200, {**entry.headers, "x-thalamus-request-id": row.id, "x-thalamus-cache": "hit"},
                  body=entry.body)
