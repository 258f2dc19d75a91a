"""Router points and serving vs candidate against numbers computed in Python from the rows written, on
SQLite and PostgreSQL: knob grouping, shadow agreement, the predicted-cost means, canary arms."""

from __future__ import annotations

import numpy as np
import pytest
from pgserver import db_url, pg_admin_url, pg_url  # noqa: F401  (PostgreSQL fixtures)

from thalamus.gateway.stats import rollout as stats_rollout
from thalamus.gateway.stats import router as stats_router
from thalamus.gateway.stats.sql import Filters
from thalamus.ledger import Ledger
from thalamus.ledger.row import LedgerRow

CANDS = {"a": {"quality": 0.9, "cost": 0.01}, "b": {"quality": 0.5, "cost": 0.001}}


def _rows() -> list[LedgerRow]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(240):
        phase = ("plain", "shadow", "canary")[i % 3]
        knob = {"kind": "lambda", "value": [0.1, 0.7][i % 4 // 2], "allowed": ["a", "b"] if i % 5 else None}
        row = LedgerRow(id=f"r{i}", created_at=1_760_000_000.0 + i, router="knn", chosen_model=["a", "b"][i % 2],
                        status=200 if i % 11 else 502, candidates=CANDS, predicted_quality=0.9 if i % 2 == 0 else 0.5,
                        knob=knob, artifact_version="v1")
        row.cost_usd = float(rng.uniform(0, 0.01)) if row.status == 200 else None
        if phase == "shadow":
            row.rollout, row.shadow_model, row.shadow_version = "serving", "a" if i % 7 < 3 else "b", "v2"
        elif phase == "canary":
            row.rollout = "canary" if i % 4 == 0 else "serving"
            row.artifact_version = "v2" if row.rollout == "canary" else "v1"
        out.append(row)
    out.append(LedgerRow(id="pass", created_at=1_760_000_000.0, chosen_model="a", status=200, cost_usd=1.0))
    return out


def test_router_points_and_rollout_match_python(db_url: str) -> None:  # noqa: F811
    ledger = Ledger(db_url)
    rows = _rows()
    ledger.insert_rows(rows)
    scores = {r.id: float(i % 5) / 4 for i, r in enumerate(rows) if i % 3 != 1}
    for rid, s in scores.items():
        ledger.add_feedback(rid, s, None, "t", None)
    (knn,) = stats_router.router_points(ledger.engine, Filters())
    routed = [r for r in rows if r.router]
    for point in knn["knobs"]:
        mine = [r for r in routed if r.knob is not None and r.knob["value"] == point["value"]]
        costs = [r.cost_usd for r in mine if r.cost_usd is not None]
        fb = [scores[r.id] for r in mine if r.id in scores]
        assert point["requests"] == len(mine) and point["mean_cost_usd"] == pytest.approx(np.mean(costs))
        assert point["feedback_n"] == len(fb) and point["score_mean"] == pytest.approx(np.mean(fb))
    assert [p["value"] for p in knn["knobs"]] == [0.1, 0.7] and knn["all"]["requests"] == len(routed)
    (state,) = stats_rollout.rollout_compare(ledger.engine, Filters())
    shadow = [r for r in rows if r.shadow_version]
    (got,) = state["shadow"]
    assert got["requests"] == len(shadow) and got["agree"] == sum(r.shadow_model == r.chosen_model for r in shadow)
    assert 0 < got["agree"] < len(shadow)
    assert got["candidate_predicted_cost"] == pytest.approx(np.mean([CANDS[r.shadow_model]["cost"] for r in shadow]))
    assert got["serving_predicted_quality"] == pytest.approx(np.mean([CANDS[r.chosen_model]["quality"]
                                                                      for r in shadow]))
    for arm, version in (("canary", "v2"), ("serving", "v1")):
        (a,) = state["canary"][arm]
        mine = [r for r in rows if r.rollout == arm and not r.shadow_version]
        assert a["version"] == version and a["requests"] == len(mine)
        assert a["mean_cost_usd"] == pytest.approx(np.mean([r.cost_usd for r in mine if r.cost_usd is not None]))
        assert a["score_mean"] == pytest.approx(np.mean([scores[r.id] for r in mine if r.id in scores]))
        assert a["chosen_predicted_cost"] == pytest.approx(np.mean([CANDS[r.chosen_model]["cost"] for r in mine]))
    assert stats_rollout.rollout_compare(ledger.engine, Filters(since=2e9)) == []
    ledger.close()
