"""``thalamus ope`` on a ledger written by the real gateway with exploration on, and the "no support"
report on one written without it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from gwhelpers import GatewayFactory, ledger_rows
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.datasets.schema import RoutingDataset
from thalamus.router.baselines import BestSingleRouter


def _drive(url: str, dataset: RoutingDataset, n: int) -> list[str]:
    """n requests through the router, each fed back with the recorded quality of the model that answered."""
    ids = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            r = client.post("/v1/chat/completions", json={"model": "auto", "messages": [
                {"role": "user", "content": dataset.texts[i % dataset.n_prompts]}]})
            assert r.status_code == 200, r.text
            score = float(dataset.quality[i % dataset.n_prompts, dataset.models.index(r.headers["x-thalamus-model"])])
            rid = r.headers["x-thalamus-request-id"]
            assert client.post("/v1/feedback", json={"request_id": rid, "score": score}).status_code == 200
            ids.append(rid)
    return ids


@pytest.fixture
def cheap_candidate(tmp_path: Path, dataset: RoutingDataset) -> Path:
    out = tmp_path / "cheap"
    BestSingleRouter().fit(dataset).save(out)  # under lambda=1 it always picks the cheapest model, weak
    return out


def test_ope_cli_estimates_a_candidate_from_explored_traffic(
        make_gateway: GatewayFactory, dataset: RoutingDataset, artifact: Path, cheap_candidate: Path,
        tmp_path: Path) -> None:
    routers = {"best": {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                        "explore": {"kind": "epsilon", "value": 0.6, "seed": 3}}}
    gw = make_gateway(routers=routers)
    _drive(gw.url, dataset, 60)
    rows = ledger_rows(gw.ledger_path, 60)  # type: ignore[attr-defined]
    out = tmp_path / "ope.json"
    result = CliRunner().invoke(build_app(), [
        "ope", "--ledger", f"sqlite:///{gw.ledger_path}", "--candidate", str(cheap_candidate),  # type: ignore[attr-defined]
        "--knob", "lambda=1.0", "--boot", "200", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    est = report["candidates"][str(cheap_candidate)]
    assert report["n"] == 60 and est["supported"]
    # IPS by hand from the stored rows: mean over rows of 1[weak answered] * score / probability
    answered = rows.set_index("id")
    texts = answered["prompt_text"].tolist()
    scores = [dataset.quality[dataset.texts.index(t), dataset.models.index(m)]
              for t, m in zip(texts, answered["chosen_model"], strict=True)]
    w = np.where(answered["chosen_model"] == "weak", 1.0 / answered["probability"], 0.0)
    assert est["estimates"]["quality"]["ips"]["value"] == pytest.approx(float(np.mean(w * np.array(scores))))
    assert est["ess"] == pytest.approx(float(w.sum() ** 2 / (w**2).sum()))
    assert report["serving"]["quality"]["value"] == pytest.approx(float(np.mean(scores)))  # on-policy mean


def test_ope_cli_says_no_support_when_the_logs_never_tried_the_candidates_model(
        make_gateway: GatewayFactory, dataset: RoutingDataset, cheap_candidate: Path) -> None:
    gw = make_gateway()  # no exploration: every request goes to strong
    _drive(gw.url, dataset, 12)
    ledger_rows(gw.ledger_path, 12)  # type: ignore[attr-defined]
    result = CliRunner().invoke(build_app(), [
        "ope", "--ledger", f"sqlite:///{gw.ledger_path}", "--candidate", str(cheap_candidate),  # type: ignore[attr-defined]
        "--knob", "lambda=1.0"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "NO SUPPORT - no estimate" in flat and "weak on 12 rows" in flat and "12 of 12" in flat


def test_retrain_cli_fits_a_router_on_the_logged_feedback(
        make_gateway: GatewayFactory, dataset: RoutingDataset, artifact: Path, tmp_path: Path) -> None:
    routers = {"best": {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                        "explore": {"kind": "epsilon", "value": 0.9, "seed": 5}}}
    gw = make_gateway(routers=routers)
    _drive(gw.url, dataset, 30)
    rows = ledger_rows(gw.ledger_path, 30)  # type: ignore[attr-defined]
    out = tmp_path / "retrained"
    result = CliRunner().invoke(build_app(), [
        "retrain", "knn", "--ledger", f"sqlite:///{gw.ledger_path}", "--out", str(out),  # type: ignore[attr-defined]
        "--embedder", "hashing", "--param", "k=3", "--method", "ips", "--clip", "5"])
    assert result.exit_code == 0, result.output
    from thalamus.router.base import Router

    router = Router.load(out)
    assert router.models_ == sorted(rows["chosen_model"].unique())
    expected_rows = sum(int(max(round(min(1 / p, 5.0)), 1)) for p in rows["probability"])  # one model per prompt here
    assert f"{expected_rows} rows after inverse-propensity repetition" in " ".join(result.output.split())


def test_retrain_corrects_the_serving_routers_view_and_ope_reports_on_the_new_artifact(
        make_gateway: GatewayFactory, dataset: RoutingDataset, artifact: Path, tmp_path: Path) -> None:
    routers = {"best": {"artifact": str(artifact), "aliases": ["auto"], "knob": {"kind": "lambda", "value": 0.0},
                        "explore": {"kind": "epsilon", "value": 0.5, "seed": 7}}}
    gw = make_gateway(routers=routers)
    _drive(gw.url, dataset, 40)
    rows = ledger_rows(gw.ledger_path, 40)  # type: ignore[attr-defined]
    out, report = tmp_path / "retrained", tmp_path / "ope.json"
    runner = CliRunner()
    result = runner.invoke(build_app(), [
        "retrain", "knn", "--ledger", f"sqlite:///{gw.ledger_path}", "--out", str(out),  # type: ignore[attr-defined]
        "--embedder", "hashing", "--param", "k=5", "--prior", str(artifact), "--strength", "4"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert f"40 logged requests ({rows['prompt_text'].nunique()} prompts, each correcting {artifact}" in flat
    from thalamus.router.base import Router

    retrained, served = Router.load(out), Router.load(artifact)
    assert set(retrained.models_) == set(served.models_)  # the prior's models, observed or not
    result = runner.invoke(build_app(), ["ope", "--ledger", f"sqlite:///{gw.ledger_path}",  # type: ignore[attr-defined]
                                         "--candidate", str(out), "--boot", "100", "--json", str(report)])
    assert result.exit_code == 0, result.output
    est = json.loads(report.read_text())["candidates"][str(out)]
    assert est["supported"] and est["n"] == 40 and 0.0 <= est["estimates"]["quality"]["snips"]["value"] <= 1.0
    assert est["ess"] > 1
