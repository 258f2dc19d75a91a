"""A router serves a backend it was not trained on: profile from a prior, Thompson exploration, online profile
updates from client and judge feedback, kept in the ledger database (restart, two replicas on PostgreSQL).

The router is a real cluster router (hashing embedder) trained on the synthetic dataset without its best
model, ``strong``; the gateway's backends are strong, mid and weak on the replay upstream, so ``strong``
is new to the router and must be taken on from its backend config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from gwhelpers import MODELS, backend, base_config, ledger_rows
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.baselines import BestSingleRouter
from thalamus.router.cluster import ClusterRouter

Start = Callable[..., ThreadedServer]
N = 40


@pytest.fixture(scope="module")
def known_only(tmp_path_factory: pytest.TempPathFactory, dataset: RoutingDataset) -> Path:
    out = tmp_path_factory.mktemp("router") / "cluster-mid-weak"
    ClusterRouter(groups="kmeans", n_clusters=2, embedder="hashing").fit(
        dataset.select_models(["mid", "weak"])).save(out)
    return out


def _config(replay_url: str, artifact: Path, ledger_url: str, judge: bool = False, **router: Any) -> dict[str, Any]:
    config = base_config(replay_url, artifact, Path("unused"))
    config["backends"] = [b for b in config["backends"] if b["name"] in MODELS]
    config["ledger"]["url"] = ledger_url
    config["routers"] = {"best": {"artifact": str(artifact), "aliases": ["auto"], "profile_sync_ms": 50,
                                  "knob": {"kind": "lambda", "value": 0.0},
                                  "explore": {"kind": "thompson", "seed": 0}} | router}
    if judge:
        config["backends"].append(backend("judge", "judge", replay_url + "/v1", timeout=10.0, max_retries=0))
        config["judge"] = {"backend": "judge", "sample": 1.0, "seed": 3}
    return config


@pytest.fixture
def start(replay: ThreadedServer, known_only: Path) -> Iterator[Start]:
    started: list[ThreadedServer] = []

    def factory(ledger_url: str, judge: bool = False, **router: Any) -> ThreadedServer:
        server = ThreadedServer(create_app(config_from_dict(_config(replay.url, known_only, ledger_url, judge,
                                                                    **router)))).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def _loop(server: ThreadedServer) -> Any:
    return server.server.config.app.state.service.learning  # type: ignore[union-attr]


def _profile(server: ThreadedServer, model: str = "strong") -> Any:
    return _loop(server).profiles.stores["best"].router.profile(model)


def _send(url: str, dataset: RoutingDataset, n: int = N) -> list[str]:
    ids = []
    for i in range(n):
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "auto", "messages": [{"role": "user", "content": dataset.texts[i % dataset.n_prompts]}]})
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-thalamus-request-id"])
    return ids


def _wait(check: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _stats(url: str) -> dict[tuple[str, int], tuple[float, float]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT model, grp, weight, total FROM profile_stats")).all()
    finally:
        engine.dispose()
    return {(r.model, int(r.grp)): (float(r.weight), float(r.total)) for r in found}


def test_a_backend_new_to_the_router_gets_explored_traffic_and_learns_from_client_feedback(
        start: Start, dataset: RoutingDataset, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    gw = start(ledger)
    profile = _profile(gw)
    assert profile.source == "pooled" and profile.n_observed == 0  # strong: taken on from the backend config
    ids = _send(gw.url, dataset)
    rows = ledger_rows(tmp_path / "ledger.sqlite", N).set_index("id").loc[ids]
    chosen = rows["chosen_model"]
    assert {"strong", "mid"} <= set(chosen)  # the new model is drawn, not only the trained ones
    for _, row in rows.iterrows():  # the propensity is the chance of being best, over every candidate
        candidates = json.loads(row["candidates"])
        assert set(candidates) == set(MODELS)
        assert abs(sum(c["p"] for c in candidates.values()) - 1) < 1e-9
        assert candidates[row["chosen_model"]]["p"] == row["probability"] > 0
    assert (rows["probability"] < 1).any()
    strong = [i for i, m in zip(ids, chosen, strict=True) if m == "strong"]
    for rid in strong:
        r = httpx.post(gw.url + "/v1/feedback", json={"request_id": rid, "score": 1.0}, timeout=10)
        assert r.status_code == 200 and r.json()["learned"] is True, r.text
    assert profile.n_observed == len(strong) and profile.obs_weight.sum() == pytest.approx(len(strong))
    spent = rows.loc[strong, "cost_usd"].to_numpy(dtype=float)
    assert profile.cost_weight.sum() == pytest.approx(len(strong))  # its cost is learned from the rows too
    assert profile.cost_sum.sum() == pytest.approx(spent.sum()) and spent.sum() > 0
    before = float(np.mean(_profile(gw).prior_mean))
    assert float(np.mean(profile.mean())) > before  # every score was 1: the profile moved up
    _wait(lambda: _stats(ledger).get(("strong", -1), (0, 0))[0] == len(strong))
    gw.stop()
    again = start(ledger)  # a restart loads the database's totals
    restored = _profile(again)
    assert restored.n_observed == len(strong)
    np.testing.assert_allclose(restored.mean(), profile.mean())


def test_judge_scores_update_the_served_models_profile(start: Start, dataset: RoutingDataset, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    gw = start(ledger, judge=True)
    ids = _send(gw.url, dataset, 20)
    rows = ledger_rows(tmp_path / "ledger.sqlite", 20).set_index("id").loc[ids]
    store = _loop(gw).profiles.stores["best"]
    _wait(lambda: store.observed == 20)  # one judge score per answered request, each learned
    for model in MODELS:
        served = int((rows["chosen_model"] == model).sum())
        assert store.router.profile(model).obs_weight.sum() - _trained_weight(gw, model) == pytest.approx(served)


def _trained_weight(gw: ThreadedServer, model: str) -> float:
    weight, *_ = _loop(gw).profiles.stores["best"]._base[model]
    return float(weight.sum())


@pytest.mark.slow
def test_two_gateways_on_one_postgresql_learn_together(start: Start, dataset: RoutingDataset, pg_url: str) -> None:
    a, b = start(pg_url), start(pg_url)
    ids = _send(a.url, dataset, 20)
    for rid in ids:
        assert httpx.post(a.url + "/v1/feedback", json={"request_id": rid, "score": 1.0}, timeout=10).status_code == 200
    ids_b = _send(b.url, dataset, 10)
    for rid in ids_b:
        assert httpx.post(b.url + "/v1/feedback", json={"request_id": rid, "score": 0.0}, timeout=10).status_code == 200

    def together() -> bool:  # both replicas hold all 30 scores (resid_n counts graded answers; base: -2)
        stores = [_loop(g).profiles.stores["best"] for g in (a, b)]
        return all(sum(s.router.profile(m).resid_n - s._base[m][-2] for m in MODELS) == 30 for s in stores)

    _wait(together)
    for model in MODELS:
        np.testing.assert_allclose(_profile(a, model).mean(), _profile(b, model).mean())


def test_config_check_names_the_mismatch_and_the_fix(known_only: Path, dataset: RoutingDataset,
                                                     tmp_path: Path) -> None:
    runner, app = CliRunner(), build_app()
    knn_like = tmp_path / "best-single"
    BestSingleRouter().fit(dataset.select_models(["mid", "weak"])).save(knn_like)
    api = "http://127.0.0.1:9/v1"
    cases = {
        "only-new": ({"artifact": str(knn_like)}, [backend("strong", "strong", api)],
                     ["none of the router's models (mid, weak) is a backend", "cluster"]),
        "bad-like": ({"artifact": str(known_only)}, [backend("strong", "strong", api, prior={"like": "gpt-9"})],
                     ["backends[0].prior.like", "gpt-9", "mid, weak"]),
        "thompson": ({"artifact": str(knn_like), "explore": {"kind": "thompson"}}, [backend("mid", "mid", api)],
                     ["routers.r.explore", "thompson"]),
    }
    for name, (router, backends, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"backends": backends, "routers": {"r": router}}))
        result = runner.invoke(app, ["config", "check", str(path)])
        message = str(result.exception or result.output)
        assert result.exit_code != 0 and all(e in message for e in expected), (name, message)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"backends": [backend(m, m, api, prior={"tier": "high"} if m == "strong" else None)
                                               for m in MODELS], "routers": {"r": {"artifact": str(known_only)}}}))
    result = runner.invoke(app, ["config", "check", str(ok)])
    assert result.exit_code == 0 and "strong (tier:high)" in " ".join(result.output.split()), result.output


def test_a_candidate_is_checked_and_takes_on_new_backends_when_set(replay: ThreadedServer, known_only: Path,
                                                                   dataset: RoutingDataset, tmp_path: Path) -> None:
    """Rollout runs the start-up check when a candidate is set: one it refuses (a router without profiles
    under thompson exploration) is a 400 then, not a failed promotion later; a cluster candidate takes on
    the backends it was not trained on at once, so its shadow decides as it will serve once promoted."""
    config = _config(replay.url, known_only, f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    config["admin"] = {"enabled": True, "key": "admin-secret"}
    gw = ThreadedServer(create_app(config_from_dict(config))).start()
    try:
        admin = {"Authorization": "Bearer admin-secret"}
        best_single = tmp_path / "best-single"
        BestSingleRouter().fit(dataset.select_models(["mid", "weak"])).save(best_single)
        r = httpx.post(gw.url + "/admin/routers/best/candidate", headers=admin, timeout=30,
                       json={"artifact": str(best_single), "mode": "shadow"})
        assert r.status_code == 400 and "thompson" in r.json()["error"]["message"], r.text
        assert "best" not in _loop(gw).rollout.candidates
        other = tmp_path / "cluster-3"
        ClusterRouter(groups="kmeans", n_clusters=3, embedder="hashing").fit(
            dataset.select_models(["mid", "weak"])).save(other)
        r = httpx.post(gw.url + "/admin/routers/best/candidate", headers=admin, timeout=30,
                       json={"artifact": str(other), "mode": "shadow"})
        assert r.status_code == 200, r.text
        assert set(_loop(gw).rollout.candidates["best"].router.models_) == set(MODELS)  # strong taken on
        _send(gw.url, dataset, 4)
        r = httpx.post(gw.url + "/admin/routers/best/promote", headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        served = gw.server.config.app.state.service.routers["best"]  # type: ignore[union-attr]
        assert served.version == r.json()["version"] and set(served.servable) == set(MODELS)
        assert _profile(gw).source == "pooled"  # strong's profile, from its backend config, in the new store
        _send(gw.url, dataset, 4)
    finally:
        gw.stop()
