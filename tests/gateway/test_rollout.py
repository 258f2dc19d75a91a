"""Safe rollout through the real gateway: admin auth, hot reload, shadow, canary (with the mixture's
propensities in the ledger) and promotion, without a restart."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gwhelpers import GatewayFactory, ledger_rows

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.baselines import BestSingleRouter

ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
def cheap(tmp_path: Path, dataset: RoutingDataset) -> Path:
    """A best-single router trained where the weak model is best: it always picks weak."""
    out = tmp_path / "weak-best"
    quality = np.zeros_like(dataset.quality)
    quality[:, dataset.models.index("weak")] = 1.0
    BestSingleRouter().fit(replace(dataset, quality=quality)).save(out)
    return out


@pytest.fixture
def gw(make_gateway: GatewayFactory) -> ThreadedServer:
    return make_gateway(admin={"enabled": True, "key": "admin-secret"})


def _ask(url: str, text: str, n: int = 1) -> list[str]:
    with httpx.Client(base_url=url, timeout=30) as c:
        out = []
        for _ in range(n):
            r = c.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200, r.text
            out.append(r.headers["x-thalamus-model"])
        return out


def _admin(url: str, method: str, path: str, body: dict[str, Any] | None = None, status: int = 200
           ) -> dict[str, Any]:
    r = httpx.request(method, url + path, json=body, headers=ADMIN, timeout=30)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


def test_admin_endpoints_are_off_by_default_and_need_the_key(make_gateway: GatewayFactory,
                                                             gw: ThreadedServer) -> None:
    off = make_gateway()
    assert httpx.get(off.url + "/admin/routers", headers=ADMIN).status_code == 404
    assert httpx.get(gw.url + "/admin/routers").status_code == 401
    assert httpx.get(gw.url + "/admin/routers", headers={"Authorization": "Bearer wrong"}).status_code == 401
    state = _admin(gw.url, "GET", "/admin/routers")["routers"][0]
    assert state["name"] == "best" and state["candidate"] is None and len(state["serving_version"]) == 12


def test_hot_reload_swaps_the_artifact_without_restart(gw: ThreadedServer, dataset: RoutingDataset,
                                                       cheap: Path, tmp_path: Path) -> None:
    text = dataset.texts[2]
    assert _ask(gw.url, text) == ["strong"]
    bad = _admin(gw.url, "POST", "/admin/routers/best/reload", {"artifact": str(tmp_path / "nope")}, status=400)
    assert "is not a directory" in bad["error"]["message"]
    assert _ask(gw.url, text) == ["strong"]  # a failed reload leaves the serving artifact alone
    swapped = _admin(gw.url, "POST", "/admin/routers/best/reload", {"artifact": str(cheap)})
    assert swapped["version"] != swapped["previous_version"]
    assert _ask(gw.url, text, 3) == ["weak"] * 3
    back = _admin(gw.url, "POST", "/admin/routers/best/reload")  # default: the configured artifact
    assert back["version"] == swapped["previous_version"] and _ask(gw.url, text) == ["strong"]
    rows = ledger_rows(gw.ledger_path, 6)  # type: ignore[attr-defined]
    assert set(rows["artifact_version"]) == {swapped["version"], swapped["previous_version"]}


def test_shadow_logs_the_candidate_choice_and_serves_the_old_one(gw: ThreadedServer, dataset: RoutingDataset,
                                                                 cheap: Path) -> None:
    state = _admin(gw.url, "POST", "/admin/routers/best/candidate", {"artifact": str(cheap), "mode": "shadow"})
    assert state["candidate"]["mode"] == "shadow"
    assert _ask(gw.url, dataset.texts[0], 4) == ["strong"] * 4
    rows = ledger_rows(gw.ledger_path, 4)  # type: ignore[attr-defined]
    assert set(rows["shadow_model"]) == {"weak"} and set(rows["rollout"]) == {"serving"}
    assert set(rows["shadow_version"]) == {state["candidate"]["version"]}
    assert _admin(gw.url, "GET", "/admin/routers")["routers"][0]["candidate"]["decisions"] == 4


def test_canary_routes_a_share_with_mixture_propensities_then_promotes(
        gw: ThreadedServer, dataset: RoutingDataset, cheap: Path) -> None:
    state = _admin(gw.url, "POST", "/admin/routers/best/candidate",
                   {"artifact": str(cheap), "mode": "canary", "share": 0.5})
    models = _ask(gw.url, dataset.texts[1], 60)
    # binomial(60, 0.5) lies in [15, 45] with probability > 0.9999
    assert 15 <= models.count("weak") <= 45 and set(models) == {"strong", "weak"}
    rows = ledger_rows(gw.ledger_path, 60)  # type: ignore[attr-defined]
    canary = rows[rows["rollout"] == "canary"]
    assert len(canary) == models.count("weak") and set(canary["chosen_model"]) == {"weak"}
    assert set(canary["artifact_version"]) == {state["candidate"]["version"]}
    for _, row in rows.iterrows():
        assert row["probability"] == pytest.approx(0.5)
        p = {m: c["p"] for m, c in json.loads(row["candidates"]).items()}
        assert p["strong"] == pytest.approx(0.5) and p["weak"] == pytest.approx(0.5) and p["mid"] == 0
    promoted = _admin(gw.url, "POST", "/admin/routers/best/promote")
    assert promoted["version"] == state["candidate"]["version"]
    assert _ask(gw.url, dataset.texts[1], 3) == ["weak"] * 3
    assert _admin(gw.url, "GET", "/admin/routers")["routers"][0]["candidate"] is None
    assert _admin(gw.url, "POST", "/admin/routers/best/promote", status=409)["error"]["code"] == "no_candidate"


def test_rollout_cli_drives_the_admin_endpoints(gw: ThreadedServer, dataset: RoutingDataset, cheap: Path) -> None:
    from typer.testing import CliRunner

    from thalamus.cli import build_app

    env = {"THALAMUS_ADMIN_KEY": "admin-secret"}
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(build_app(), ["rollout", *args, "--gateway", gw.url], env=env)

    result = run("candidate", "best", "--artifact", str(cheap), "--mode", "shadow")
    assert result.exit_code == 0, result.output
    assert _ask(gw.url, dataset.texts[0]) == ["strong"]
    assert run("promote", "best").exit_code == 0
    assert _ask(gw.url, dataset.texts[0]) == ["weak"]
    assert run("reload", "best").exit_code == 0
    assert _ask(gw.url, dataset.texts[0]) == ["strong"]
    status = run("status")
    assert status.exit_code == 0 and '"candidate": null' in status.output
    denied = runner.invoke(build_app(), ["rollout", "status", "--gateway", gw.url], env={"THALAMUS_ADMIN_KEY": "x"})
    assert denied.exit_code == 1 and "HTTP 401" in str(denied.exception)
