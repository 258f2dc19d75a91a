"""The admin's view across teams (``stats/teams.py``) against hand computation, on SQLite and PostgreSQL:
virtual keys' teams from ``api_keys``, a static key's from the config, keys without a team and rows without
a key in ``(no team)``; several feedback entries on one request do not count its spend twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pgserver import db_url, pg_admin_url, pg_url  # noqa: F401  (PostgreSQL fixtures)

from thalamus.gateway.stats.sql import Filters
from thalamus.gateway.stats.teams import team_stats
from thalamus.gateway.tenancy.keys import KeyStore, record_from
from thalamus.ledger import Ledger
from thalamus.ledger.row import LedgerRow

T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600)
# key id -> (requests, virtual key's team or None for a static/unknown key)
KEYS = {"red-1": 3, "red-2": 2, "blue-1": 2, "static-blue": 1, "loner": 2, None: 1}
STATIC = {"static-blue": "blue"}


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:  # noqa: F811
    led = Ledger(db_url)
    store = KeyStore(led.engine)
    for key_id, team in (("red-1", "red"), ("red-2", "red"), ("blue-1", "blue"), ("loner", None)):
        store.create(record_from({"id": key_id, "team": team}))
    rows, i = [], 0
    for key_id, n in KEYS.items():
        for _ in range(n):
            status = 502 if i == 4 else 200
            rows.append(LedgerRow(id=f"t{i:03d}", created_at=T0 + 60.0 * i, api_key_id=key_id, status=status,
                                  chosen_model="weak", prompt_tokens=10 + i, completion_tokens=i,
                                  cost_usd=0.001 * (i + 1), baseline_cost_usd=0.002 * (i + 1)))
            i += 1
    led.insert_rows(rows)
    led.add_feedback("t000", 1.0, None, "app", None)  # red-1: two client scores and a judge's on one request
    led.add_feedback("t000", 0.5, None, "app", None)
    led.add_feedback("t000", 0.25, None, "judge:strong", None)
    led.add_feedback("t005", 0.75, None, "judge:strong", None)  # blue-1: the judge only
    yield led
    led.close()


def test_teams_by_hand(ledger: Ledger) -> None:
    got = {t["label"]: t for t in team_stats(ledger.engine, Filters(), STATIC)}
    assert set(got) == {"red", "blue", "(no team)"}
    red, blue, none = got["red"], got["blue"], got["(no team)"]
    assert (red["requests"], red["keys"], red["errors"], red["team"]) == (5, 2, 1, "red")  # t004 is red-2's 502
    assert red["spend_usd"] == pytest.approx(0.001 * sum(range(1, 6)))  # t000 once, whatever its feedback
    assert red["counterfactual_spend_usd"] == pytest.approx(0.002 * sum(range(1, 6)))
    assert red["prompt_tokens"] == sum(10 + i for i in range(5)) and red["completion_tokens"] == sum(range(5))
    assert red["tokens"] == red["prompt_tokens"] + red["completion_tokens"] and red["error_rate"] == 0.2
    assert red["feedback"]["client"]["feedback_n"] == 2 and red["feedback"]["client"]["score_mean"] == 0.75
    assert red["feedback"]["judge"]["feedback_n"] == 1
    assert (red["score_mean"], red["score_source"]) == (0.75, "client")  # the clients', never a blend
    assert (blue["requests"], blue["keys"]) == (3, 2)  # blue-1 (virtual) and static-blue (the config's team)
    assert (blue["score_mean"], blue["score_source"]) == (0.75, "judge")
    assert (none["team"], none["requests"], none["keys"], none["score_source"]) == (None, 3, 1, None)
    spends = [t["spend_usd"] for t in team_stats(ledger.engine, Filters(), STATIC)]
    assert spends == sorted(spends, reverse=True)  # by spend
    # without the config's static teams, static-blue has no team
    bare = {t["label"]: t["requests"] for t in team_stats(ledger.engine, Filters())}
    assert bare == {"red": 5, "blue": 2, "(no team)": 4}
    # filters apply: the range and the scope cut rows before grouping
    ranged = {t["label"]: t["requests"] for t in team_stats(ledger.engine, Filters(since=T0 + 60 * 5), STATIC)}
    assert ranged == {"blue": 3, "(no team)": 3}
    scoped = team_stats(ledger.engine, Filters(scope=frozenset({"red-1"})), STATIC)
    assert [(t["label"], t["requests"]) for t in scoped] == [("red", 3)]
