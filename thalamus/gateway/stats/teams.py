"""The admin's view across teams: spend, requests, tokens, errors and feedback per team over a range.

A request belongs to the team of the key that made it: a virtual key's ``team`` (``api_keys``), else a static
key's ``team`` from the config (``static_teams``, passed in: the YAML is not in the database); a request of
a key with no team, or of no key (auth off), is in ``(no team)``. One SQL statement on raw rows (a per-row
subquery that resolves the team, grouped outside it, so PostgreSQL groups by a plain column), filtered like
every stats call, on SQLite and PostgreSQL. Feedback is summed per request first (so a request's spend is
counted once however many scores it has) and kept per source (client, judge), as the rest of the page does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from thalamus.gateway.stats.aggregates import score_summary
from thalamus.gateway.stats.sql import Filters, is_error, judged, total
from thalamus.ledger import feedback, requests
from thalamus.ledger.schema import api_keys

NO_TEAM = "(no team)"
_SOURCES = ("client", "judge")


def _feedback_per_request(f: Filters) -> sa.Subquery:
    """Per scored request of the range: entries, score sum and sum of squares, per source."""
    judge = judged()
    score = feedback.c.score
    cols: list[Any] = [feedback.c.request_id.label("rid")]
    for name, mine in (("client", sa.not_(judge)), ("judge", judge)):
        cols += [sa.func.sum(sa.case((mine, 1), else_=0)).label(f"{name}_n"),
                 sa.func.sum(sa.case((mine, score), else_=0.0)).label(f"{name}_s"),
                 sa.func.sum(sa.case((mine, score * score), else_=0.0)).label(f"{name}_sq")]
    return (sa.select(*cols).select_from(feedback.join(requests, requests.c.id == feedback.c.request_id))
            .where(*f.where()).group_by(feedback.c.request_id).subquery("fb"))


def _team(static_teams: Mapping[str, str]) -> sa.ColumnElement[Any]:
    """The team of a row's key: the virtual key's, else the static key's from the config, else NULL."""
    stored = api_keys.c.team
    if not static_teams:
        return stored
    static = sa.case({k: static_teams[k] for k in sorted(static_teams)}, value=requests.c.api_key_id, else_=None)
    return sa.func.coalesce(stored, static)


def team_stats(engine: Engine, f: Filters, static_teams: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Per team (``team`` None: keys without one, labelled ``(no team)``), by spend: ``requests``, ``keys``
    (distinct key ids), ``errors``, ``error_rate``, ``prompt_tokens``, ``completion_tokens``, ``tokens``,
    ``spend_usd``, ``counterfactual_spend_usd``, ``feedback`` per source (``feedback_n``, ``score_mean``,
    ``score_se``) and ``score_mean`` / ``score_source``: the clients' mean when clients scored anything, else
    the judge's (never a blend)."""
    c = requests.c
    fb = _feedback_per_request(f)
    per_row = (sa.select(_team(static_teams or {}).label("team"), c.api_key_id, is_error().label("err"),
                         c.prompt_tokens, c.completion_tokens, c.cost_usd, c.baseline_cost_usd,
                         *[fb.c[f"{s}_{p}"] for s in _SOURCES for p in ("n", "s", "sq")])
               .select_from(requests.outerjoin(api_keys, api_keys.c.id == c.api_key_id)
                            .outerjoin(fb, fb.c.rid == c.id))
               .where(*f.where()).subquery("per_row"))
    r = per_row.c
    query = (sa.select(r.team, sa.func.count().label("requests"),
                       sa.func.count(sa.distinct(r.api_key_id)).label("keys"), total(r.err).label("errors"),
                       total(r.prompt_tokens).label("prompt_tokens"),
                       total(r.completion_tokens).label("completion_tokens"), total(r.cost_usd).label("spend"),
                       total(r.baseline_cost_usd).label("counterfactual"),
                       *[total(r[f"{s}_{p}"]).label(f"{s}_{p}") for s in _SOURCES for p in ("n", "s", "sq")])
             .group_by(r.team))
    with engine.connect() as conn:
        out = [_shape(row._mapping) for row in conn.execute(query)]
    return sorted(out, key=lambda t: (-t["spend_usd"], t["team"] is None, t["team"] or ""))


def _shape(m: Mapping[Any, Any]) -> dict[str, Any]:
    n = int(m["requests"])
    prompt, completion = int(m["prompt_tokens"]), int(m["completion_tokens"])
    fb = {s: score_summary(int(m[f"{s}_n"]), float(m[f"{s}_s"]), float(m[f"{s}_sq"])) for s in _SOURCES}
    source = "client" if fb["client"]["feedback_n"] else "judge" if fb["judge"]["feedback_n"] else None
    return {"team": m["team"], "label": m["team"] if m["team"] is not None else NO_TEAM, "requests": n,
            "keys": int(m["keys"]), "errors": int(m["errors"]), "error_rate": int(m["errors"]) / n if n else 0.0,
            "prompt_tokens": prompt, "completion_tokens": completion, "tokens": prompt + completion,
            "spend_usd": float(m["spend"]), "counterfactual_spend_usd": float(m["counterfactual"]),
            "feedback": fb, "score_mean": fb[source]["score_mean"] if source else None, "score_source": source}
