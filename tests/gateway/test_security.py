"""The security model: keys scope feedback, unauthenticated callers learn nothing and leave nothing behind."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from gwhelpers import GatewayFactory, ledger_rows, row_for

from thalamus.datasets.schema import RoutingDataset
from thalamus.ledger.prompt_hash import load_key

KEYS = {"enabled": True, "keys": [{"id": "team-a", "key": "sk-team-a"}, {"id": "team-b", "key": "sk-team-b"}]}
A = {"authorization": "Bearer sk-team-a"}
B = {"authorization": "Bearer sk-team-b"}


def chat(gw_url: str, text: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(gw_url + "/v1/chat/completions", headers=headers, timeout=10,
                      json={"model": "auto", "messages": [{"role": "user", "content": text}]})


def test_feedback_is_scoped_to_the_key_that_made_the_request(make_gateway: GatewayFactory,
                                                              dataset: RoutingDataset) -> None:
    gw = make_gateway(auth=KEYS)
    rid = chat(gw.url, dataset.texts[1], A).headers["x-thalamus-request-id"]
    other = httpx.post(gw.url + "/v1/feedback", headers=B, json={"request_id": rid, "score": 0.0})
    assert other.status_code == 403 and other.json()["error"]["code"] == "not_your_request"
    nobody = httpx.post(gw.url + "/v1/feedback", json={"request_id": rid, "score": 0.0})
    assert nobody.status_code == 401
    own = httpx.post(gw.url + "/v1/feedback", headers=A, json={"request_id": rid, "score": 1.0})
    assert own.status_code == 200
    engine = sa.create_engine(f"sqlite:///{gw.ledger_path}")  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT request_id, score, api_key_id FROM feedback")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(rid, 1.0, "team-a")]  # only the owner's feedback, with its key id


def test_readiness_and_docs_tell_unauthenticated_callers_nothing(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=KEYS)
    anonymous = httpx.get(gw.url + "/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    insider = httpx.get(gw.url + "/readyz", headers=A).json()
    assert insider["status"] == "ready" and insider["routers"] == ["best"]
    for path in ("/docs", "/redoc", "/openapi.json"):  # off by default once auth is on
        assert httpx.get(gw.url + path).status_code == 404, path
    opened = make_gateway(auth=KEYS, server={"max_body_bytes": 200_000, "docs": True})
    assert httpx.get(opened.url + "/openapi.json").status_code == 200


def test_readiness_never_names_the_database(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    gw = make_gateway(auth=KEYS, ledger={"url": f"sqlite:///{path}", "flush_ms": 20, "busy_timeout_ms": 50,
                                         "journal_path": str(tmp_path / "j.jsonl")})
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the file: every write fails
    try:
        assert chat(gw.url, "while locked", A).status_code == 200
        deadline = time.monotonic() + 20
        while httpx.get(gw.url + "/readyz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        anonymous, insider = httpx.get(gw.url + "/readyz"), httpx.get(gw.url + "/readyz", headers=A)
        assert anonymous.status_code == insider.status_code == 503
        assert anonymous.json() == {"status": "ledger degraded"}
        assert insider.json()["ledger"]["journal_pending"] >= 1  # the row waits in the journal
        for body in (anonymous.text, insider.text):
            assert str(tmp_path) not in body and "locked" not in body.lower()
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def test_error_responses_name_their_request_and_row(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "no-such", "messages": [{"role": "user",
                                                                                          "content": "x"}]})
    assert r.status_code == 404
    row = row_for(gw.ledger_path, r.headers["x-thalamus-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == 404 and row["error_type"] == "model_not_found"


def test_prompt_hash_is_keyed_per_deployment(make_gateway: GatewayFactory, dataset: RoutingDataset,
                                             tmp_path: Path) -> None:
    gw = make_gateway()
    text = dataset.texts[2]
    rid = chat(gw.url, text, {}).headers["x-thalamus-request-id"]
    stored = row_for(gw.ledger_path, rid)["prompt_hash"]  # type: ignore[attr-defined]
    assert stored != hashlib.sha1(text.encode()).hexdigest() and stored != hashlib.sha256(text.encode()).hexdigest()
    key = load_key("THALAMUS_PROMPT_HASH_KEY", Path(os.environ.get("THALAMUS_CACHE_DIR", "~/.cache/thalamus"))
                   .expanduser() / "prompt_hash.key")
    assert stored == hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def test_key_file_is_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "prompt_hash.key"
    key = load_key("THALAMUS_TEST_UNSET_VARIABLE", path)
    assert len(key) == 64 and load_key("THALAMUS_TEST_UNSET_VARIABLE", path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unauthenticated_requests_leave_no_rows(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth=KEYS)
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "sk-team-a"}):
        for _ in range(20):
            assert chat(gw.url, "flood", headers).status_code == 401
    big = httpx.post(gw.url + "/v1/chat/completions", content=b"x" * 300_000, timeout=10)
    assert big.status_code == 401  # auth before the body is read: an oversized anonymous body leaves no row
    assert chat(gw.url, "real", A).status_code == 200
    rows = ledger_rows(gw.ledger_path, 1)  # type: ignore[attr-defined]
    assert len(rows) == 1 and rows.iloc[0]["api_key_id"] == "team-a"


def test_ledger_and_journal_files_are_owner_only(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    path, journal = tmp_path / "private.sqlite", tmp_path / "private.jsonl"
    gw = make_gateway(ledger={"url": f"sqlite:///{path}", "flush_ms": 20, "durability": "journal",
                              "journal_path": str(journal)})
    assert chat(gw.url, "secret prompt", {}).status_code == 200
    assert len(ledger_rows(path, 1)) == 1
    files = [p for p in tmp_path.iterdir() if p.name.startswith("private")]
    assert path in files and journal in files  # the database, its WAL files, the journal and its lock
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, (file, oct(file.stat().st_mode))
