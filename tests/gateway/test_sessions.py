"""Affinity's parts without a gateway: provider-state detection, the history keys, the margin rule, and the
session store (bounded by TTL and size, batched upserts, the cache's freshness rule) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa

from thalamus.gateway.config.affinity import AffinityConfig
from thalamus.gateway.core.affinity import steer
from thalamus.gateway.learning.sessions import SessionEntry, SessionStore
from thalamus.gateway.wire import conversation as conv
from thalamus.ledger import Ledger
from thalamus.ledger.schema import sessions
from thalamus.router.policy import Knob, decide


def test_provider_state_is_found_where_providers_put_it() -> None:
    user = {"role": "user", "content": "hi"}
    assert not conv.provider_state([user, {"role": "assistant", "content": "hello"}, user], None)
    thinking = {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"}]}
    redacted = {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"}]}
    blocks = {"role": "assistant", "content": "a", "thinking_blocks": [{"type": "thinking", "thinking": "x"}]}
    details = {"role": "assistant", "content": "a", "reasoning_details": [{"type": "reasoning.encrypted"}]}
    for message in (thinking, redacted, blocks, details):
        assert conv.provider_state([user, message, user], None)
    # a user quoting the word "signature" or pasting a thinking-shaped object is not provider state
    assert not conv.provider_state([{"role": "user", "content": [{"type": "thinking", "signature": "s"}]}], None)
    native = {"input": [{"role": "user", "content": "hi"}, {"type": "reasoning", "id": "rs_1", "summary": []}]}
    assert conv.provider_state([user], native)
    assert conv.provider_state([user], {"input": [{"type": "message", "role": "assistant",
                                                   "content": [{"type": "output_text", "text": "a"}],
                                                   "encrypted_content": "gAAA"}]})
    assert not conv.provider_state([user], {"input": "hi"})


def test_history_parts_chain_turn_to_turn() -> None:
    sys_ = {"role": "system", "content": "be brief"}
    u1, a1, u2 = ({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                  {"role": "user", "content": "q2"})
    lookup1, store1 = conv.history_parts([sys_, u1])
    lookup2, store2 = conv.history_parts([sys_, u1, a1, u2])
    assert lookup1 is None and lookup2 == store1 and store2 == [*store1, "q2"]
    # a tool result turn (no new user message) looks up what the tool-calling turn stored
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]}
    lookup3, store3 = conv.history_parts([sys_, u1, call, {"role": "tool", "tool_call_id": "c", "content": "7"}])
    assert lookup3 == store1 == store3
    # another system prompt is another conversation
    assert conv.history_parts([{"role": "system", "content": "be long"}, u1])[1] != store1
    assert conv.assistant_turns([sys_, u1, a1, u2]) == 1


def test_steer_keeps_under_the_margin_and_switches_above() -> None:
    decision = decide([0.9, 0.7], [0.01, 0.001], ["strong", "weak"], Knob("lambda", 0.5))
    assert decision.model == "weak"  # utilities: strong 0.45 - 0.5 = -0.05, weak 0.35 - 0.05 = 0.30
    assert steer(decision, "weak", "strong", 0.5, {"strong", "weak"}) == (True, "margin")
    assert steer(decision, "weak", "strong", 0.3, {"strong", "weak"}) == (False, "gain")
    assert steer(decision, "weak", "weak", 0.0, {"strong", "weak"}) == (True, "same")
    assert steer(decision, "weak", "strong", 0.5, {"weak"}) == (False, "unavailable")
    excluded = decide([0.9, 0.7], [0.01, 0.001], ["strong", "weak"], Knob("lambda", 0.5, excluded=("strong",)))
    assert steer(excluded, "weak", "strong", 0.5, {"strong", "weak"}) == (False, "unavailable")


def entry(key: str, model: str = "strong", turn: int = 0, at: float | None = None) -> SessionEntry:
    return SessionEntry(key, "conv-" + key, model, "openai", turn, time.time() if at is None else at)


def test_store_round_trip_ttl_and_size(db_url: str) -> None:
    ledger = Ledger(db_url)
    config = AffinityConfig(ttl_s=60, max_sessions=3, cache_entries=2)
    store = SessionStore(config, ledger.engine)
    other = SessionStore(config, ledger.engine)  # a second replica on the same database

    async def scenario() -> None:
        store.put(entry("a"))
        assert await other.get("a") is None  # not flushed yet
        assert store.flush() == 1
        got = await other.get("a")
        assert got is not None and got.model == "strong" and other.reads == 2
        store.put(entry("a", "weak", turn=1))  # the next turn, answered elsewhere: an upsert
        store.flush()
        assert (await SessionStore(config, ledger.engine).get("a")).model == "weak"  # type: ignore[union-attr]
        # an explicit id's cached entry is trusted only for the turn right after it
        assert other.cached("a", 1) is not None and other.cached("a", 2) is None
        assert (await other.get("a", 2)).model == "weak"  # type: ignore[union-attr]
        # idle past the TTL: ignored at once, dropped by the prune
        store.put(entry("old", at=time.time() - 120))
        for key in ("b", "c", "d"):
            store.put(entry(key))
        store.flush()
        assert await SessionStore(config, ledger.engine).get("old") is None
        assert store.prune() == 2  # "old" by age; then "a", the oldest of four over max_sessions=3
        with ledger.engine.connect() as conn:
            left = set(conn.execute(sa.select(sessions.c.session_key)).scalars())
        assert left == {"b", "c", "d"}
        assert len(store._cache) == 2  # cache_entries bounds the process's memory

    asyncio.run(scenario())
    ledger.close()


def test_a_failing_database_routes_the_turn_as_new(tmp_path: object) -> None:
    """A read that fails (here: no sessions table) finds nothing instead of failing the request; a failed
    write keeps its entries for the next flush."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/empty.sqlite")
    store = SessionStore(AffinityConfig(), engine)
    assert asyncio.run(store.get("missing")) is None
    store.put(entry("k"))
    store._cache.clear()
    try:
        store.flush()
        raise AssertionError("the write should fail without a sessions table")
    except sa.exc.OperationalError:
        pass
    assert "k" in store._pending


def test_an_unwritten_entry_is_trusted_only_when_current(tmp_path: object) -> None:
    """While the database is down an entry waiting for the flush answers lookups the cache no longer does,
    under the cache's rule: not past the TTL, and for an explicit id only for the turn right after it."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/empty.sqlite")  # no sessions table: reads fail
    store = SessionStore(AffinityConfig(ttl_s=60), engine)
    store.put(entry("k", turn=3))
    store.put(entry("old", at=time.time() - 120))
    store._cache.clear()  # evicted; both still wait for the flush
    assert asyncio.run(store.get("k", 4)).model == "strong"  # type: ignore[union-attr]
    assert asyncio.run(store.get("k")) is not None
    assert asyncio.run(store.get("k", 6)) is None  # a wrong turn: not trusted, and the table is away
    assert asyncio.run(store.get("old")) is None  # idle past the TTL
    assert sorted(store._pending) == ["k", "old"]


def test_an_unwritten_entry_newer_than_the_table_row_stays_the_answer(tmp_path: object) -> None:
    """A wrong-turn entry waiting for the flush sends the lookup to the table; a row there older than the
    entry does not replace it (a client that sends only its new turn asks with turn 0 every time)."""
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.sqlite")
    store = SessionStore(AffinityConfig(), ledger.engine)
    store.put(entry("k", "strong", at=time.time() - 5))
    store.flush()
    store.put(entry("k", "weak", turn=1))
    store._cache.clear()
    assert asyncio.run(store.get("k", 0)).model == "weak"  # type: ignore[union-attr]
    assert store.reads == 1
    ledger.close()


def test_a_turn_recorded_during_a_flush_is_neither_lost_nor_hidden(tmp_path: object) -> None:
    """The flusher writes in a worker thread while the event loop records turns: an entry put during the
    write is written by the next flush (the old swap could drop it), and a lookup during the write still
    finds the entry being written (the cache may have evicted it)."""
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.sqlite")
    store = SessionStore(AffinityConfig(cache_entries=1), ledger.engine)
    seen: list[object] = []

    def during_write(*_: object) -> None:
        if not seen:
            store._cache.clear()
            seen.append(asyncio.run(store.get("a")))  # the entry in flight, not a miss
            store.put(entry("a", "weak", turn=1))  # a newer turn of the same session
            store.put(entry("b"))

    sa.event.listen(ledger.engine, "before_cursor_execute", during_write)
    store.put(entry("a"))
    assert store.flush() == 1
    sa.event.remove(ledger.engine, "before_cursor_execute", during_write)
    assert getattr(seen[0], "model", None) == "strong"
    assert sorted(store._pending) == ["a", "b"]  # the newer "a" and "b" wait for the next flush
    assert store.flush() == 2 and not store._pending
    other = SessionStore(AffinityConfig(), ledger.engine)
    assert asyncio.run(other.get("a")).model == "weak"  # type: ignore[union-attr]
    assert asyncio.run(other.get("b")) is not None
    ledger.close()
