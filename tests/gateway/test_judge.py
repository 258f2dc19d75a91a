"""The LLM judge through the real gateway: the replay upstream judges on 127.0.0.1 (its ``judge`` model
grades an answer with the dataset's recorded quality), real litellm, real SQLite ledgers."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from gwhelpers import MODELS, backend, base_config, ledger_rows

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger, feedback
from thalamus.router.bandit import LinUCBRouter

JUDGE_PRICES = {"input_per_m": 3.0, "output_per_m": 15.0}
Judged = Callable[..., ThreadedServer]


@pytest.fixture
def judged(replay: ThreadedServer, artifact: Path, tmp_path: Path) -> Iterator[Judged]:
    """Gateways whose ``judge`` backend is ``judge_model`` on ``judge_url`` (default: the replay judge)."""
    started: list[ThreadedServer] = []

    def factory(judge_model: str = "judge", judge_url: str | None = None, routers: dict[str, Any] | None = None,
                **judge: Any) -> ThreadedServer:
        ledger = tmp_path / f"judged{len(started)}.sqlite"
        config = base_config(replay.url, artifact, ledger)
        config["backends"].append(backend("judge", judge_model, (judge_url or replay.url) + "/v1", timeout=10.0,
                                          max_retries=0, **JUDGE_PRICES))
        if routers is not None:
            config["routers"] = routers
        config["judge"] = {"backend": "judge", "sample": 1.0, "seed": 3} | judge
        server = ThreadedServer(create_app(config_from_dict(config))).start()
        server.ledger_path = ledger  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def _service(server: ThreadedServer) -> Any:
    """The running app's GatewayService (its judge, routers and learning state)."""
    return server.server.config.app.state.service  # type: ignore[union-attr]


def _chat(url: str, text: str, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
        r.read()
    return r


def _stats(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/api/judge", timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _settled(url: str, done: int, timeout: float = 30.0) -> dict[str, Any]:
    """The judge's stats once ``done`` judgements have an outcome (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = _stats(url)
        finished = sum(v for k, v in stats["counts"].items() if k not in ("offered", "sampled"))
        if finished >= done or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def _tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(feedback rows, judge_calls rows) of a ledger file."""
    ledger = Ledger(f"sqlite:///{path}")
    try:
        with ledger.engine.connect() as conn:
            rows = pd.DataFrame(conn.execute(sa.select(feedback)).mappings().all(),
                                columns=[c.name for c in feedback.c])
        return rows, ledger.judge_log()
    finally:
        ledger.close()


def _metric(url: str, line_start: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    hits = [line for line in text.splitlines() if line.startswith(line_start)]
    assert hits, f"no metric line starting {line_start!r}"
    return float(hits[0].rsplit(" ", 1)[1])


def test_every_answer_is_scored_with_its_recorded_quality_as_judge_feedback(
        judged: Judged, dataset: RoutingDataset) -> None:
    gw = judged()
    plan = [(i, ["auto", "mid", "weak"][i % 3], i in (4, 7)) for i in range(9)]  # two streamed answers
    ids = {}
    for i, model, stream in plan:
        r = _chat(gw.url, dataset.texts[i], model, stream)
        assert r.status_code == 200, r.text
        ids[r.headers["x-thalamus-request-id"]] = (i, r.headers["x-thalamus-model"])
    assert _chat(gw.url, dataset.texts[0], "broken").status_code == 502  # a failed request is never judged
    stats = _settled(gw.url, 9)
    assert stats["counts"] | {} == {"offered": 9, "sampled": 9, "scored": 9, "unparseable": 0, "failed": 0,
                                    "timeout": 0, "error": 0, "dropped_full": 0, "dropped_shutdown": 0}
    assert stats["source"] == "judge:judge" and stats["learned"] == 0  # the baseline router does not learn
    rows, calls = _tables(gw.ledger_path)  # type: ignore[attr-defined]
    assert len(rows) == 9 and set(rows["source"]) == {"judge:judge"} and rows["api_key_id"].isna().all()
    for _, fb in rows.iterrows():
        i, model = ids[fb["request_id"]]
        assert fb["score"] == pytest.approx(dataset.quality[i, MODELS.index(model)])
        assert fb["comment"].endswith("/10")  # store_prompts is on: the judge's reasoning is kept
    assert list(calls["outcome"]) == ["scored"] * 9 and set(calls["feedback_id"]) == set(rows["id"])
    expected = (calls["prompt_tokens"] * 3.0 + calls["completion_tokens"] * 15.0) / 1e6
    assert (calls["prompt_tokens"] > 50).all() and list(calls["cost_usd"]) == pytest.approx(list(expected))
    assert stats["cost_usd"] == pytest.approx(calls["cost_usd"].sum())
    assert stats["prompt_tokens"] == calls["prompt_tokens"].sum()
    assert _metric(gw.url, 'thalamus_judge_total{judge="judge",outcome="scored"}') == 9
    assert _metric(gw.url, 'thalamus_judge_cost_usd_total{judge="judge"}') == pytest.approx(stats["cost_usd"])
    assert len(ledger_rows(gw.ledger_path, 10)) == 10  # type: ignore[attr-defined]  # the judge adds no requests


def test_the_sampled_share_follows_the_seeded_draw(judged: Judged, dataset: RoutingDataset) -> None:
    share, n = 0.25, 80
    gw = judged(sample=share, seed=11)
    for i in range(n):
        assert _chat(gw.url, dataset.texts[i % 60], "weak").status_code == 200
    rng = random.Random(11)
    expected = sum(rng.random() < share for _ in range(n))  # requests are sequential: the draws are in order
    stats = _settled(gw.url, expected)
    assert stats["counts"]["offered"] == n and stats["counts"]["sampled"] == expected
    assert 5 <= expected <= 35  # binomial(80, 0.25) lies here with probability > 0.9999
    assert stats["counts"]["scored"] == expected
    rows, calls = _tables(gw.ledger_path)  # type: ignore[attr-defined]
    assert len(rows) == len(calls) == expected


def test_sample_zero_judges_nothing(judged: Judged, dataset: RoutingDataset) -> None:
    gw = judged(sample=0.0)
    for i in range(10):
        assert _chat(gw.url, dataset.texts[i], "weak").status_code == 200
    ledger_rows(gw.ledger_path, 10)  # type: ignore[attr-defined]
    stats = _stats(gw.url)
    assert stats["counts"]["offered"] == 10 and stats["counts"]["sampled"] == 0
    rows, calls = _tables(gw.ledger_path)  # type: ignore[attr-defined]
    assert rows.empty and calls.empty


@pytest.mark.parametrize(("judge_model", "outcome", "extra"), [
    ("judge::503", "failed", {}),
    ("judge::badjson", "failed", {}),
    ("judge::drop", "failed", {}),
    ("judge::hang", "timeout", {"timeout_s": 0.3}),
    ("weak", "unparseable", {}),  # a model that answers prose without a score
])
def test_a_failing_judge_stores_no_feedback_and_leaves_requests_alone(
        judged: Judged, dataset: RoutingDataset, judge_model: str, outcome: str, extra: dict[str, Any]) -> None:
    gw = judged(judge_model, **extra)
    for i in range(3):
        r = _chat(gw.url, dataset.texts[i], "weak")
        assert r.status_code == 200 and f"question {i} is" in r.json()["choices"][0]["message"]["content"]
    stats = _settled(gw.url, 3)
    assert stats["counts"][outcome] == 3 and stats["counts"]["scored"] == 0
    rows, calls = _tables(gw.ledger_path)  # type: ignore[attr-defined]
    assert rows.empty and list(calls["outcome"]) == [outcome] * 3 and calls["score"].isna().all()
    if outcome == "unparseable":  # the answer was billed: tokens and cost logged
        assert (calls["cost_usd"] > 0).all() and calls["error"].isna().all()
    else:
        assert calls["error"].notna().all() and calls["cost_usd"].isna().all()
    assert _metric(gw.url, f'thalamus_judge_total{{judge="judge",outcome="{outcome}"}}') == 3


def test_a_full_queue_drops_without_blocking_and_shutdown_drops_the_rest_in_bounded_time(
        judged: Judged, dataset: RoutingDataset) -> None:
    gw = judged("judge::hang", timeout_s=60, concurrency=1, queue_size=2, drain_s=0.5)
    assert _chat(gw.url, dataset.texts[0], "weak").status_code == 200
    deadline = time.monotonic() + 10
    while _stats(gw.url)["in_flight"] != 1 and time.monotonic() < deadline:  # the worker holds the first
        time.sleep(0.02)
    for i in range(1, 10):
        assert _chat(gw.url, dataset.texts[i], "weak").status_code == 200
    stats = _stats(gw.url)
    assert stats["in_flight"] == 1 and stats["queued"] == 2 and stats["counts"]["dropped_full"] == 7
    assert _metric(gw.url, 'thalamus_judge_total{judge="judge",outcome="dropped_full"}') == 7
    requests = ledger_rows(gw.ledger_path, 10)  # type: ignore[attr-defined]
    assert len(requests) == 10 and requests["total_ms"].max() < 5000  # none waited on the 60 s judge
    judge = _service(gw).judge
    t0 = time.monotonic()
    gw.stop()
    assert time.monotonic() - t0 < 10  # drain_s 0.5, then the hung call is cancelled
    assert judge.counts["dropped_shutdown"] == 3 and judge.counts["scored"] == 0
    rows, calls = _tables(gw.ledger_path)  # type: ignore[attr-defined]
    assert rows.empty and calls.empty


def test_shutdown_drains_queued_judgements_within_drain_s(judged: Judged, dataset: RoutingDataset) -> None:
    with ThreadedServer(create_replay_app(dataset, delay_ms=1000), log_level="critical") as slow:
        gw = judged(judge_url=slow.url, concurrency=1, drain_s=20)
        ids = [_chat(gw.url, dataset.texts[i], "weak").headers["x-thalamus-request-id"] for i in range(4)]
        judge = _service(gw).judge
        assert judge.counts["scored"] < 4  # 4 s of judging were still ahead when the requests had answers
        gw.stop()
    assert judge.counts["scored"] == 4 and judge.counts["dropped_shutdown"] == 0
    rows, _ = _tables(gw.ledger_path)  # type: ignore[attr-defined]
    assert sorted(rows["request_id"]) == sorted(ids)


def _bandit(tmp_path: Path, dataset: RoutingDataset) -> dict[str, Any]:
    out = tmp_path / "linucb"
    LinUCBRouter(n_components=8, embedder="hashing", alpha=0.0, wtp=1.0).fit(dataset).save(out)
    return {"bandit": {"artifact": str(out), "aliases": ["learner"], "knob": {"kind": "lambda", "value": 0.0}}}


def _client_feedback(url: str, request_id: str, score: float) -> bool:
    r = httpx.post(url + "/v1/feedback", json={"request_id": request_id, "score": score}, timeout=30)
    assert r.status_code == 200, r.text
    return bool(r.json()["learned"])


def test_an_online_bandit_learns_from_judge_feedback(judged: Judged, dataset: RoutingDataset, tmp_path: Path) -> None:
    gw = judged(routers=_bandit(tmp_path, dataset))
    service = _service(gw)
    before = [int(x) for x in service.routers["bandit"].router.counts_]
    answers = [_chat(gw.url, dataset.texts[i], "learner") for i in range(6)]
    stats = _settled(gw.url, 6)
    assert stats["counts"]["scored"] == 6 and stats["learned"] == 6
    after = [int(x) for x in service.routers["bandit"].router.counts_]
    chosen = [r.headers["x-thalamus-model"] for r in answers]
    assert [a - b for a, b in zip(after, before, strict=True)] == [chosen.count(m) for m in dataset.models]
    assert service.learning.updates["bandit"] == 6
    # the judge's score was the request's first: a client's later score is stored, not learned again
    assert _client_feedback(gw.url, answers[0].headers["x-thalamus-request-id"], 0.0) is False


def test_judge_learn_off_stores_scores_and_leaves_the_update_to_the_client(
        judged: Judged, dataset: RoutingDataset, tmp_path: Path) -> None:
    gw = judged(routers=_bandit(tmp_path, dataset), learn=False)
    service = _service(gw)
    before = [int(x) for x in service.routers["bandit"].router.counts_]
    rid = _chat(gw.url, dataset.texts[2], "learner").headers["x-thalamus-request-id"]
    stats = _settled(gw.url, 1)
    assert stats["counts"]["scored"] == 1 and stats["learned"] == 0
    assert [int(x) for x in service.routers["bandit"].router.counts_] == before
    assert _client_feedback(gw.url, rid, 1.0) is True  # the judge row did not use up the request's update
    assert sum(int(x) for x in service.routers["bandit"].router.counts_) == sum(before) + 1
