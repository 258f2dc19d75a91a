"""The breakdown stats (feedback per source, errors per class, the span) against hand computation, on SQLite
and PostgreSQL: the same statements must give the same numbers on both."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from pgserver import db_url, pg_admin_url, pg_url  # noqa: F401  (PostgreSQL fixtures)

from thalamus.gateway.stats.breakdown import breakdown, status_class
from thalamus.gateway.stats.sql import Filters
from thalamus.ledger import Ledger
from thalamus.ledger.row import LedgerRow

T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600)


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:  # noqa: F811
    led = Ledger(db_url)
    rows = []
    for i in range(60):
        status = [200, 200, 200, 400, 404, 502][i % 6]
        chosen = None if status == 404 else ["weak", "strong"][i % 2]
        rows.append(LedgerRow(id=f"b{i:03d}", created_at=T0 + 60.0 * i, api_key_id=f"k{i % 2}", status=status,
                              chosen_model=chosen, error_type={400: "bad", 404: "model_not_found",
                                                               502: "all_backends_failed"}.get(status)))
    led.insert_rows(rows)
    for i in range(0, 60, 3):  # client feedback on every 3rd request, the judge on every 6th; judge% is literal
        led.add_feedback(f"b{i:03d}", 1.0 if i % 2 else 0.0, None, "app", None)
        if i % 6 == 0:
            led.add_feedback(f"b{i:03d}", 0.5, None, "judge:strong", None)
    led.add_feedback("b001", 0.25, None, "judgement%", None)  # not the judge: the prefix is "judge:"
    yield led
    led.close()


def test_breakdown_by_hand(ledger: Ledger) -> None:
    got = breakdown(ledger.engine, Filters(), 3600)
    client_scores = [1.0 if i % 2 else 0.0 for i in range(0, 60, 3)] + [0.25]
    mean = float(np.mean(client_scores))
    se = math.sqrt(float(np.var(client_scores, ddof=1)) / len(client_scores))
    c = got["feedback"]["client"]
    assert (c["feedback_n"], c["requests_scored"]) == (21, 21)
    assert c["score_mean"] == pytest.approx(mean) and c["score_se"] == pytest.approx(se)
    assert got["feedback"]["judge"] == {"feedback_n": 10, "requests_scored": 10, "score_mean": 0.5, "score_se": 0.0}
    errors = {e["status"]: e for e in got["errors"]}
    assert errors[404] == {"status": 404, "class": "not_found", "code": "model_not_found", "requests": 10,
                           "refused": 10}
    assert (errors[502]["class"], errors[502]["requests"], errors[400]["class"]) == ("bad_gateway", 10, "bad_request")
    assert got["span"] == {"first": T0, "last": T0 + 59 * 60}
    series = {(r["t"], r["model"], r["source"]): r["feedback_n"] for r in got["feedback_series"]}
    assert sum(series.values()) == 31 and {t for t, _, _ in series} == {T0}  # one hour bucket
    assert got["feedback_by_model"]["weak"]["judge"]["feedback_n"] == 10  # every 6th request is weak's
    keyed = breakdown(ledger.engine, Filters(key="k1"))
    assert keyed["feedback"]["judge"]["feedback_n"] == 0 and keyed["feedback_series"] is None


def test_status_class() -> None:
    assert [status_class(s) for s in (503, 400, 429, 499, 418, None)] == [
        "service_unavailable", "bad_request", "rate_limited", "client_closed_request", "http_418", "no_status"]
