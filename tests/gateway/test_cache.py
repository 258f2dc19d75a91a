"""The exact-match response cache: off by default; hits cost nothing, skip the upstream and say so in the row."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
from gwhelpers import GatewayFactory, row_for

from thalamus.gateway.config import CacheConfig
from thalamus.gateway.core.cache import ResponseCache
from thalamus.gateway.replay.threaded import ThreadedServer


def upstream_calls(replay: ThreadedServer) -> int:
    return len(replay.server.config.app.state.replay.requests)  # type: ignore[attr-defined]


def ask(gw: ThreadedServer, text: str, key: str = "unused", **extra: Any) -> Any:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(
        model="mid", messages=[{"role": "user", "content": text}], **extra)


def test_off_by_default(make_gateway: GatewayFactory, replay: ThreadedServer) -> None:
    gw = make_gateway()
    before = upstream_calls(replay)
    for _ in range(2):
        assert "x-thalamus-cache" not in ask(gw, "cache me").headers
    assert upstream_calls(replay) - before == 2


def test_hits_skip_the_upstream_cost_nothing_and_expire(make_gateway: GatewayFactory,
                                                        replay: ThreadedServer) -> None:
    gw = make_gateway(cache={"enabled": True, "ttl_s": 1.0})
    before = upstream_calls(replay)
    miss = ask(gw, "What is a cache?", temperature=0)
    hit = ask(gw, "What is a cache?", temperature=0)
    assert upstream_calls(replay) - before == 1 and hit.headers["x-thalamus-cache"] == "hit"
    assert hit.parse().choices[0].message.content == miss.parse().choices[0].message.content
    reordered = httpx.post(gw.url + "/v1/chat/completions", timeout=10, content=json.dumps(
        {"temperature": 0, "messages": [{"content": "What is a cache?", "role": "user"}], "model": "mid"}))
    assert reordered.headers["x-thalamus-cache"] == "hit"  # the same body, fields in another order
    assert "x-thalamus-cache" not in ask(gw, "What is a cache?", temperature=0.5).headers  # another body
    miss_row = row_for(gw.ledger_path, miss.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    hit_row = row_for(gw.ledger_path, hit.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert miss_row["cache"] == "miss" and miss_row["cost_usd"] > 0
    assert hit_row["cache"] == "hit" and hit_row["cost_usd"] == 0 and hit_row["status"] == 200
    assert hit_row["chosen_model"] == "mid" and hit_row["prompt_tokens"] == 0
    time.sleep(1.1)
    assert "x-thalamus-cache" not in ask(gw, "What is a cache?", temperature=0).headers  # expired
    assert upstream_calls(replay) - before == 3  # the first miss, the other body, the expired one


def test_size_bound_keys_and_streams(make_gateway: GatewayFactory, replay: ThreadedServer) -> None:
    keys = {"enabled": True, "keys": [{"id": "a", "key": "sk-a"}, {"id": "b", "key": "sk-b"}]}
    gw = make_gateway(auth=keys, cache={"enabled": True, "max_entries": 2})
    for text in ("one", "two", "three"):
        ask(gw, text, key="sk-a")
    assert ask(gw, "three", key="sk-a").headers.get("x-thalamus-cache") == "hit"
    assert "x-thalamus-cache" not in ask(gw, "one", key="sk-a").headers  # evicted: least recently used
    assert "x-thalamus-cache" not in ask(gw, "three", key="sk-b").headers  # per key by default
    before = upstream_calls(replay)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-a", max_retries=0)
    for _ in range(2):
        list(client.chat.completions.create(model="mid", messages=[{"role": "user", "content": "three"}],
                                            stream=True))
    assert upstream_calls(replay) - before == 2  # streams are not cached


def test_key_holds_the_resolved_model_and_bytes_are_bounded() -> None:
    cache = ResponseCache(CacheConfig(enabled=True, max_bytes=2048))
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    assert cache.key(body, "mid", None) != cache.key(body, "weak", None)
    cache.put("a", b"x" * 1500, {})
    cache.put("b", b"y" * 1000, {})  # over 2048 bytes together: the older one goes
    assert cache.get("a") is None and cache.get("b") is not None and len(cache) == 1
    cache.put("c", b"z" * 4096, {})  # larger than the whole cache: not stored
    assert cache.get("c") is None
