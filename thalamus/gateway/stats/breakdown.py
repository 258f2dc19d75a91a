"""What the dashboard's totals are made of: feedback per source, errors per class, the data's time span.

- Feedback per source: the client's scores (``POST /v1/feedback``) and the LLM judge's (source ``judge:NAME``)
  are counted apart, each with the number of requests it scored, so neither is mistaken for a request count
  and a judge's score never inflates the client's.
- Errors per class: the class is read from the HTTP status the client got (``status_class``), not from an
  exception's name, with the gateway's own code (``error_type``) beside it; requests refused before a model
  was chosen (no ``chosen_model``) are counted as refused.
- The span: the first and last request time, for a default time range that fits the data.

SQL on raw rows (``requests`` and ``feedback``), filtered like every stats call, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from thalamus.gateway.stats.aggregates import score_summary
from thalamus.gateway.stats.sql import Filters, floor_div, judged
from thalamus.ledger import feedback, requests

MAX_ERROR_ROWS = 50
_CLASSES = {400: "bad_request", 401: "authentication_error", 403: "permission_denied", 404: "not_found",
            408: "request_timeout", 409: "conflict", 413: "request_too_large", 422: "unprocessable_entity",
            429: "rate_limited", 499: "client_closed_request", 500: "internal_server_error", 502: "bad_gateway",
            503: "service_unavailable", 504: "gateway_timeout"}
REFUSED = "refused before a model was chosen"


def status_class(status: int | None) -> str:
    """The error class of an HTTP status (``503`` -> ``service_unavailable``), whoever raised it."""
    if status is None or status == 0:
        return "no_status"
    return _CLASSES.get(int(status), f"http_{int(status)}")


SOURCES = ("client", "judge")


def _source() -> sa.ColumnElement[str]:
    return sa.case((judged(), "judge"), else_="client")


def _feedback_rows(conn: sa.Connection, f: Filters, width: int | None) -> list[Any]:
    """Feedback per (answering model, source), and per time bucket of ``width`` seconds on the request's
    start when given: entries, distinct requests scored, score sum and sum of squares. A request has one
    model and one bucket, so every coarser total (per model, per source) is a sum of these rows."""
    source = _source().label("source")
    score = feedback.c.score
    keys: list[Any] = [requests.c.chosen_model.label("model"), source]
    if width is not None:  # "ts", not "t": Row.t is the row's tuple
        keys.insert(0, (floor_div(requests.c.created_at, width) * width).label("ts"))
    query = (sa.select(*keys, sa.func.count().label("n"), sa.func.count(sa.distinct(feedback.c.request_id))
                       .label("scored"), sa.func.sum(score).label("s"), sa.func.sum(score * score).label("sq"))
             .select_from(feedback.join(requests, requests.c.id == feedback.c.request_id))
             .where(*f.where()).group_by(*keys))
    if width is not None:
        query = query.order_by(keys[0])
    return list(conn.execute(query))


def _summary(n: int, scored: int, s: float, sq: float) -> dict[str, Any]:
    return score_summary(n, s, sq) | {"requests_scored": scored}


def feedback_summaries(rows: list[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """Per source (``client``, ``judge``), and per model that answered and source: entries, distinct requests
    scored, mean score and its standard error (the models table's feedback columns)."""
    by_source: dict[str, list[Any]] = {name: [0, 0, 0.0, 0.0] for name in SOURCES}
    by_model: dict[str, dict[str, list[Any]]] = {}
    for r in rows:
        per = by_model.setdefault(str(r.model), {name: [0, 0, 0.0, 0.0] for name in SOURCES})
        for sums in (by_source[str(r.source)], per[str(r.source)]):
            sums[0] += int(r.n)
            sums[1] += int(r.scored)
            sums[2] += float(r.s or 0)
            sums[3] += float(r.sq or 0)
    return ({name: _summary(*v) for name, v in by_source.items()},
            {model: {name: _summary(*v) for name, v in per.items()} for model, per in by_model.items()})


def errors_by_class(engine: Engine, f: Filters) -> list[dict[str, Any]]:
    """Requests the client saw fail, per (status, code), busiest first, with the status's class."""
    c = requests.c
    refused = sa.case((c.chosen_model.is_(None), 1), else_=0)
    query = (sa.select(c.status, c.error_type, sa.func.count().label("n"), sa.func.sum(refused).label("refused"))
             .where(*f.where(), c.status >= 400).group_by(c.status, c.error_type)
             .order_by(sa.desc("n"), c.status).limit(MAX_ERROR_ROWS))
    with engine.connect() as conn:
        return [{"status": int(r.status), "class": status_class(r.status), "code": r.error_type,
                 "requests": int(r.n), "refused": int(r.refused or 0)} for r in conn.execute(query)]


def time_span(engine: Engine, f: Filters) -> dict[str, float | None]:
    """The first and last request time in the filtered rows (None, None when there are none)."""
    query = sa.select(sa.func.min(requests.c.created_at), sa.func.max(requests.c.created_at)).where(*f.where())
    with engine.connect() as conn:
        first, last = conn.execute(query).one()
    return {"first": float(first) if first is not None else None, "last": float(last) if last is not None else None}


def breakdown(engine: Engine, f: Filters, width: int | None = None) -> dict[str, Any]:
    """The dashboard's breakdown call: feedback per source and per model (one query; per time bucket too
    when ``width`` is given), errors per class, the data's span."""
    with engine.connect() as conn:
        rows = _feedback_rows(conn, f, width)
    by_source, by_model = feedback_summaries(rows)
    series = [{"t": float(r.ts), "model": r.model, "source": str(r.source)}
              | _summary(int(r.n), int(r.scored), float(r.s or 0), float(r.sq or 0)) for r in rows] \
        if width is not None else None
    return {"feedback": by_source, "feedback_by_model": by_model, "feedback_series": series,
            "errors": errors_by_class(engine, f), "span": time_span(engine, f), "filters": f.as_dict()}
