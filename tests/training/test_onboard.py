"""``onboard`` end to end against the replay upstream on loopback: a cluster router trained without
gpt-4 gets its profile from probes sent through the gateway's backend code, graded four ways."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.gateway.config import GatewayConfig, config_from_dict
from thalamus.gateway.learning.onboard import ANSWERS_FILE, ONBOARD_FILE, OnboardSpec, onboard
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.base import Router
from thalamus.router.cluster import ClusterRouter
from thalamus.router.knn import KNNRouter
from thalamus.training.probes import ProbeSet, load_probes, stratified

NEW = "gpt-4-1106-preview"


@pytest.fixture(scope="module")
def dataset(data_dir: Path) -> RoutingDataset:
    ds = load_dataset("routerbench_subset", data_dir)
    return ds.subset(np.arange(0, ds.n_prompts, 4), name="routerbench_subset[::4]")


@pytest.fixture(scope="module")
def router_dir(dataset: RoutingDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    known = dataset.select_models([m for m in dataset.models if m != NEW])
    router = ClusterRouter(embedder="hashing").fit(known)
    return router.save(tmp_path_factory.mktemp("router") / "cluster")


@pytest.fixture(scope="module")
def replay_app(dataset: RoutingDataset) -> FastAPI:
    return create_replay_app(dataset)


@pytest.fixture(scope="module")
def replay(replay_app: FastAPI) -> Iterator[ThreadedServer]:
    with ThreadedServer(replay_app, log_level="critical") as server:
        yield server


def config(replay: ThreadedServer, suffix: str = "", judge: bool = False) -> GatewayConfig:
    api = replay.url + "/v1"
    backends: list[dict[str, Any]] = [
        {"name": NEW, "provider": "openai-compatible", "model": f"openai/{NEW}{suffix}", "api_base": api,
         "input_per_m": 10.0, "output_per_m": 30.0, "timeout": 5.0, "max_retries": 1},
        {"name": "judge", "provider": "openai-compatible", "model": "openai/judge", "api_base": api,
         "input_per_m": 1.0, "output_per_m": 1.0}]
    return config_from_dict({"backends": backends, "judge": {"backend": "judge"} if judge else None})


def probes(dataset: RoutingDataset) -> ProbeSet:
    return ProbeSet(dataset.name, dataset.texts, dataset)


def test_recorded_grader_end_to_end_and_resume(router_dir: Path, dataset: RoutingDataset, replay: ThreadedServer,
                                               replay_app: FastAPI, tmp_path: Path) -> None:
    out = tmp_path / "v2"
    seen: list[tuple[int, float]] = []
    spec = OnboardSpec(NEW, 24, "recorded")
    result = onboard(router_dir, probes(dataset), spec, out, config(replay), progress=lambda n, s: seen.append((n, s)))
    assert (result.probes, result.graded, result.failed) == (24, 24, 0)
    assert result.spent_usd > 0 and seen[-1][0] == 24 and seen[-1][1] == pytest.approx(result.spent_usd)
    records = [json.loads(line) for line in (out / ANSWERS_FILE).read_text().splitlines()]
    col = dataset.models.index(NEW)
    assert len(records) == 24 and dataset.responses is not None
    assert all(r["answer"] == dataset.responses[r["row"], col] for r in records)  # through the real backend path
    cost = sum((r["prompt_tokens"] * 10.0 + r["completion_tokens"] * 30.0) / 1e6 for r in records)
    assert result.spent_usd == pytest.approx(cost)
    router = Router.load(out)
    assert isinstance(router, ClusterRouter) and router.models_[-1] == NEW
    profile = router.profile(NEW)
    assert profile.n_observed == 24 and profile.spent_usd == pytest.approx(cost)
    truth = dataset.quality[[r["row"] for r in records], col].mean()
    assert profile.resid_sum / 24 + (profile.prior_mean.mean()) == pytest.approx(truth, abs=0.15)
    info = json.loads((out / ONBOARD_FILE).read_text())
    assert info["grader"] == "recorded" and info["n"] == 24
    groups = [router.group_probabilities(router.features([dataset.texts[r["row"]]]))[0].argmax() for r in records]
    assert len(set(groups)) == len(router.group_names_)  # stratified: every group probed

    sent = len(replay_app.state.replay.requests)
    again = onboard(router_dir, probes(dataset), spec, out, config(replay))
    assert len(replay_app.state.replay.requests) == sent  # resumed: nothing sent twice
    assert again.profile == result.profile


def test_agreement_grader_uses_no_labels(router_dir: Path, dataset: RoutingDataset, replay: ThreadedServer,
                                        tmp_path: Path) -> None:
    result = onboard(router_dir, probes(dataset), OnboardSpec(NEW, 30, "agreement"), tmp_path / "a", config(replay))
    assert result.graded == 30
    profile = Router.load(tmp_path / "a").profile(NEW)  # type: ignore[attr-defined]
    assert profile.n_observed == 30 and (profile.mean() > 0).all() and (profile.mean() < 1).all()


def test_judge_grader(router_dir: Path, dataset: RoutingDataset, replay: ThreadedServer, tmp_path: Path) -> None:
    result = onboard(router_dir, probes(dataset), OnboardSpec(NEW, 12, "judge"), tmp_path / "j",
                     config(replay, judge=True))
    assert result.graded >= 6  # the replay judge grades every answer it finds recorded
    assert Router.load(tmp_path / "j").profile(NEW).n_observed == result.graded  # type: ignore[attr-defined]
    asked = [b for b in replay.server.config.app.state.replay.requests  # type: ignore[union-attr]
             if "Grade the answer" in json.dumps(b.get("messages"))]
    assert len(asked) >= 12 and all(b.get("temperature") == 0.0 for b in asked)  # as the gateway's judge asks


def test_reference_grader_with_a_probe_file(router_dir: Path, dataset: RoutingDataset, replay: ThreadedServer,
                                           tmp_path: Path) -> None:
    col = dataset.models.index(NEW)
    assert dataset.responses is not None
    rows = list(range(0, 40, 2))
    lines = [{"text": dataset.texts[r], "reference": dataset.responses[r, col] if i % 2 == 0 else "ZZZ"}
             for i, r in enumerate(rows)]
    path = tmp_path / "probes.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    probe_set = load_probes(str(path))
    assert probe_set.references is not None and probe_set.dataset is None
    result = onboard(router_dir, probe_set, OnboardSpec(NEW, 20, "reference"), tmp_path / "r", config(replay))
    assert result.graded == 20
    profile = Router.load(tmp_path / "r").profile(NEW)  # type: ignore[attr-defined]
    assert profile.obs_sum.sum() == pytest.approx(10.0)  # exactly the half whose reference is the answer


def test_errors_name_what_is_at_fault(router_dir: Path, dataset: RoutingDataset, replay: ThreadedServer,
                                     tmp_path: Path) -> None:
    ps = probes(dataset)
    with pytest.raises(ConfigError, match="no backend named 'claude-9'"):
        onboard(router_dir, ps, OnboardSpec("claude-9", 5, "recorded"), tmp_path / "x", config(replay))
    with pytest.raises(DataError, match=f"model {NEW!r}: all 5 probes failed.*503"):
        onboard(router_dir, ps, OnboardSpec(NEW, 5, "recorded"), tmp_path / "f", config(replay, "::503"))
    plain = ProbeSet("plain", dataset.texts[:50])
    with pytest.raises(DataError, match="probe set 'plain' has no gold answers"):
        onboard(router_dir, plain, OnboardSpec(NEW, 5, "reference"), tmp_path / "p", config(replay))
    with pytest.raises(DataError, match="probe set 'plain' records no outcomes"):
        onboard(router_dir, plain, OnboardSpec(NEW, 5, "recorded"), tmp_path / "p", config(replay))
    with pytest.raises(ConfigError, match="no 'judge' section"):
        onboard(router_dir, ps, OnboardSpec(NEW, 5, "judge"), tmp_path / "p", config(replay))
    with pytest.raises(ConfigError, match="unknown grader 'vibes'"):
        onboard(router_dir, ps, OnboardSpec(NEW, 5, "vibes"), tmp_path / "p", config(replay))
    knn_dir = KNNRouter(embedder="hashing", k=5).fit(dataset).save(tmp_path / "knn")
    with pytest.raises(ConfigError, match=r"needs a cluster router.*'knn'"):
        onboard(knn_dir, ps, OnboardSpec(NEW, 5, "recorded"), tmp_path / "k", config(replay))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ANSWERS_FILE).write_text("not json\n")
    with pytest.raises(DataError, match=f"{ANSWERS_FILE}: line 1 is not an answer record"):
        onboard(router_dir, ps, OnboardSpec(NEW, 5, "recorded"), tmp_path / "bad", config(replay))


def test_stratified_spreads_over_groups() -> None:
    groups = np.array([0] * 50 + [1] * 3 + [2] * 20)
    pick = stratified(groups, 9, seed=1)
    assert sorted(np.bincount(groups[pick]).tolist()) == [3, 3, 3]
    assert len(set(stratified(groups, 100).tolist())) == 73  # asks for more than exist: all of them, once


def test_cli_onboard(router_dir: Path, replay: ThreadedServer, tmp_path: Path, data_dir: Path) -> None:
    cfg = tmp_path / "thalamus.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(config(replay).model_dump(mode="json", exclude_none=True)))
    out = tmp_path / "cli"
    result = CliRunner().invoke(build_app(), ["onboard", str(router_dir), "--model", NEW, "--probe",
                                              "routerbench_subset", "--n", "9", "--grader", "recorded",
                                              "--config", str(cfg), "--out", str(out), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "profile of gpt-4-1106-preview after 9 graded probes" in result.output.replace("\n", " ")
    assert NEW in Router.load(out).models_
