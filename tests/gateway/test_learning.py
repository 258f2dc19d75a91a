"""The learning loop through the real gateway: propensities, stored embeddings, online bandit updates,
checkpoints reloaded on restart (real uvicorn on 127.0.0.1, real SQLite, the replay upstream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gwhelpers import GatewayFactory, ledger_rows, row_for

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.learning.artifacts import ONLINE_DIR
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger.embedding import decode_embedding
from thalamus.router.bandit import LinUCBRouter
from thalamus.router.base import Router


@pytest.fixture
def bandit_artifact(tmp_path: Path, dataset: RoutingDataset) -> Path:
    out = tmp_path / "linucb"
    LinUCBRouter(n_components=8, embedder="hashing", alpha=0.0, wtp=1.0).fit(dataset).save(out)
    return out


def _router_cfg(artifact: Path, **extra: Any) -> dict[str, Any]:
    return {"bandit": {"artifact": str(artifact), "aliases": ["learner"],
                       "knob": {"kind": "lambda", "value": 0.0}} | extra}


def _chat(url: str, text: str, model: str = "learner") -> str:
    r = httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": [
        {"role": "user", "content": text}]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-thalamus-request-id"]


def _feedback(url: str, request_id: str, score: float) -> dict[str, Any]:
    r = httpx.post(url + "/v1/feedback", json={"request_id": request_id, "score": score}, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_deterministic_rows_record_probability_one_and_the_candidate_set(
        make_gateway: GatewayFactory, dataset: RoutingDataset) -> None:
    gw = make_gateway()
    rid = _chat(gw.url, dataset.texts[3], "auto")
    row = row_for(gw.ledger_path, rid)  # type: ignore[attr-defined]
    candidates = json.loads(row["candidates"])
    assert row["probability"] == 1.0
    assert {m: c["p"] for m, c in candidates.items()} == {"strong": 1.0, "mid": 0.0, "weak": 0.0}
    assert row["embedding"] is None and row["embedder_id"] is None  # store_embeddings is off by default


def test_epsilon_exploration_records_each_choice_probability(make_gateway: GatewayFactory,
                                                             dataset: RoutingDataset, artifact: Path) -> None:
    routers = {"best": {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                        "explore": {"kind": "epsilon", "value": 0.3, "seed": 7}}}
    gw = make_gateway(routers=routers)
    ids = [_chat(gw.url, dataset.texts[i % 20], "auto") for i in range(60)]
    rows = ledger_rows(gw.ledger_path, 60).set_index("id").loc[ids]  # type: ignore[attr-defined]
    greedy, other = 0.7 + 0.3 / 3, 0.3 / 3
    for _, row in rows.iterrows():
        candidates = json.loads(row["candidates"])
        p = {m: c["p"] for m, c in candidates.items()}
        assert sum(p.values()) == pytest.approx(1.0)
        assert p == pytest.approx({"strong": greedy, "mid": other, "weak": other})
        assert row["probability"] == pytest.approx(p[row["chosen_model"]])
    explored = int((rows["chosen_model"] != "strong").sum())
    # 60 draws at 0.3 * 2/3 = 0.2: a binomial(60, 0.2) lies in [3, 22] with probability > 0.999
    assert 3 <= explored <= 22


def test_softmax_probabilities_follow_the_utilities(make_gateway: GatewayFactory, dataset: RoutingDataset,
                                                    artifact: Path) -> None:
    routers = {"best": {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                        "explore": {"kind": "softmax", "value": 0.1, "seed": 1}}}
    gw = make_gateway(routers=routers)
    row = row_for(gw.ledger_path, _chat(gw.url, dataset.texts[0], "auto"))  # type: ignore[attr-defined]
    c = json.loads(row["candidates"])
    q = np.array([c[m]["quality"] for m in ("strong", "mid", "weak")])
    expected = np.exp(q / 0.1) / np.exp(q / 0.1).sum()  # lambda 0: utility = quality
    assert [c[m]["p"] for m in ("strong", "mid", "weak")] == pytest.approx(expected.tolist())


def test_store_embeddings_keeps_the_vector_not_the_text(make_gateway: GatewayFactory, dataset: RoutingDataset,
                                                        bandit_artifact: Path, replay: ThreadedServer,
                                                        tmp_path: Path) -> None:
    gw = make_gateway(routers=_router_cfg(bandit_artifact),
                      ledger={"url": f"sqlite:///{tmp_path / 'emb.sqlite'}", "store_prompts": False,
                              "store_embeddings": True, "flush_ms": 20})
    rid = _chat(gw.url, dataset.texts[4])
    row = row_for(tmp_path / "emb.sqlite", rid)
    router = Router.load(bandit_artifact)
    expected = router.features([dataset.texts[4]])[0]
    vector = decode_embedding(row["embedding"])
    assert row["prompt_text"] is None and row["embedder_id"] == router.embedder_id_  # type: ignore[attr-defined]
    assert vector.shape == expected.shape and np.abs(vector - expected).max() < 2e-3  # float16 rounding


def _gateway(replay: ThreadedServer, artifact: Path, ledger: Path, **router_extra: Any) -> ThreadedServer:
    from gwhelpers import base_config

    cfg = base_config(replay.url, artifact, ledger, routers=_router_cfg(artifact, **router_extra))
    cfg["ledger"]["store_embeddings"] = True
    return ThreadedServer(create_app(config_from_dict(cfg))).start()


def _counts(server: ThreadedServer) -> list[int]:
    service = server.server.config.app.state.service
    return [int(x) for x in service.routers["bandit"].router.counts_]


def test_feedback_updates_the_served_bandit_and_survives_a_restart(
        replay: ThreadedServer, bandit_artifact: Path, dataset: RoutingDataset, tmp_path: Path) -> None:
    ledger = tmp_path / "online.sqlite"
    gw = _gateway(replay, bandit_artifact, ledger, checkpoint_every=2)
    try:
        before = _counts(gw)
        ids = [_chat(gw.url, dataset.texts[i]) for i in range(3)]
        chosen = [row_for(ledger, i)["chosen_model"] for i in ids]
        assert [_feedback(gw.url, i, 1.0)["learned"] for i in ids] == [True, True, True]
        assert _feedback(gw.url, ids[0], 0.0)["learned"] is False  # one update per request
        after = _counts(gw)
        for model in set(chosen):
            j = dataset.models.index(model)
            assert after[j] - before[j] == chosen.count(model)
        assert (bandit_artifact / ONLINE_DIR / "router.json").is_file()  # checkpoint after 2 updates
        late = _chat(gw.url, dataset.texts[9])  # decided here, fed back after the restart
    finally:
        gw.stop()  # shutdown checkpoints the third update
    restarted = _gateway(replay, bandit_artifact, ledger, checkpoint_every=2)
    try:
        assert _counts(restarted) == after
        service = restarted.server.config.app.state.service
        assert service.routers["bandit"].router.n_updates_ == 3
        # the restarted gateway lost its in-process context map: it learns from the row's stored embedding
        assert _feedback(restarted.url, late, 0.5)["learned"] is True
        assert sum(_counts(restarted)) == sum(after) + 1
    finally:
        restarted.stop()


def test_learn_online_off_leaves_the_router_alone(replay: ThreadedServer, bandit_artifact: Path,
                                                  dataset: RoutingDataset, tmp_path: Path) -> None:
    gw = _gateway(replay, bandit_artifact, tmp_path / "frozen.sqlite", learn_online=False)
    try:
        before = _counts(gw)
        assert _feedback(gw.url, _chat(gw.url, dataset.texts[1]), 1.0)["learned"] is False
        assert _counts(gw) == before
    finally:
        gw.stop()
    assert not (bandit_artifact / ONLINE_DIR).exists()
