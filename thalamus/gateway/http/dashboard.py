"""The dashboard page (``GET /dashboard``), its static files, HTML snapshots, and the standalone server.

The page is a Jinja2 template; one small script (``static/dashboard.js``) fills it from the stats API,
and plotly.js comes from the installed ``plotly`` wheel's own copy: nothing is fetched from the
internet. ``snapshot_html`` renders the same page with the data, the script and plotly.js inlined (one
self-contained file, e.g. for the demo). ``create_dashboard_app`` is ``thalamus dashboard``: the page and
the stats API over a ledger URL, read-only (it never migrates or writes).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.engine import Engine

from thalamus.errors import ConfigError
from thalamus.gateway.http.stats import install_stats
from thalamus.gateway.stats import affinity as stats_affinity
from thalamus.gateway.stats import aggregates as stats
from thalamus.gateway.stats import breakdown as stats_breakdown
from thalamus.gateway.stats import rollout as stats_rollout
from thalamus.gateway.stats import router as stats_router
from thalamus.gateway.stats import rows as stats_rows
from thalamus.gateway.stats.sql import Filters
from thalamus.gateway.wire.protocol import RequestError
from thalamus.ledger import MIGRATIONS

STATIC = "/dashboard/static"
RANGES = [("auto", "fit the data"), ("3600", "last hour"), ("21600", "last 6 h"), ("86400", "last 24 h"),
          ("604800", "last 7 days"), ("2592000", "last 30 days"), ("0", "all time")]
_HERE = Path(__file__).parent  # templates/ and static/ ship inside the package (pyproject package-data)
_FILES = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}


def plotly_js_path() -> Path:
    """plotly.min.js as the plotly wheel ships it (``plotly/package_data``)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ConfigError(f"{path}: plotly.min.js is missing from the installed plotly package; reinstall plotly")
    return path


def _static_text(name: str) -> str:
    return (_HERE / "static" / name).read_text(encoding="utf-8")


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=select_autoescape())


def _page(**context: Any) -> str:
    base = {"title": "Thalamus dashboard", "ranges": RANGES, "default_range": "auto", "static": STATIC,
            "snapshot": False, "inline": False, "auth": False}
    return _env().get_template("dashboard.html").render(base | context)


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no '</script>' can close it early)."""
    return json.dumps(data, allow_nan=False).replace("<", "\\u003c")


async def dashboard_page(request: Request) -> HTMLResponse:
    service = getattr(request.app.state, "service", None)
    auth = bool(service is not None and service.keys.enabled)
    config = {"auth": auth, "refresh_s": 30}
    return HTMLResponse(_page(auth=auth, config_json=_script_json(config)))


async def plotly_js(request: Request) -> FileResponse:
    return FileResponse(plotly_js_path(), media_type="application/javascript",
                        headers={"cache-control": "public, max-age=86400"})


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _FILES:
        return Response(status_code=404)
    return Response(_static_text(name), media_type=_FILES[name])


def install_dashboard(app: FastAPI) -> None:
    app.add_api_route("/dashboard", dashboard_page, methods=["GET"])
    app.add_api_route(f"{STATIC}/plotly.min.js", plotly_js, methods=["GET"])
    app.add_api_route(STATIC + "/{name}", static_file, methods=["GET"])


def snapshot_data(engine: Engine, since: float | None = None, until: float | None = None,
                  bucket: str = "minute") -> dict[str, Any]:
    """What the page shows, computed now: the same JSON the stats API answers."""

    f = Filters(since=since, until=until)
    return {"overview": stats.overview(engine, f), "series": stats.timeseries(engine, f, bucket),
            "models": stats.grouped(engine, f, "model"), "keys": stats.grouped(engine, f, "key"),
            "recent": stats_rows.recent(engine, f, 200), "calibration": stats.calibration(engine, f),
            "options": stats.filter_options(engine, f), "routers": stats_router.router_points(engine, f),
            "breakdown": stats_breakdown.breakdown(engine, f, stats.BUCKET_SECONDS[bucket]),
            "rollout": [r | {"live": None} for r in stats_rollout.rollout_compare(engine, f)],
            "affinity": stats_affinity.switch_rate(engine, f)}


def snapshot_html(data: dict[str, Any], title: str = "Thalamus dashboard (snapshot)") -> str:
    """One self-contained HTML file: the page with its data, its script and plotly.js inlined."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _page(title=title, snapshot=True, inline=True, generated=generated, css=_static_text("dashboard.css"),
                 dashboard_js=_static_text("dashboard.js"), plotly_js=plotly_js_path().read_text(encoding="utf-8"),
                 snapshot_json=_script_json(data), default_range="0")


def write_snapshot(engine: Engine, out: Path, since: float | None = None, bucket: str = "minute") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(snapshot_html(snapshot_data(engine, since=since, until=time.time() + 1, bucket=bucket)),
                   encoding="utf-8")
    return out


class ReadOnlyLedger:
    """An engine on an existing, migrated ledger; the standalone dashboard never creates or alters tables."""

    def __init__(self, url: str) -> None:

        self.url = url
        self.engine = sa.create_engine(url)
        with self.engine.connect() as conn:
            has = sa.inspect(conn).has_table("schema_version")
            version = int(conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() or 0) if has else 0
        if version < len(MIGRATIONS):
            self.engine.dispose()
            raise ConfigError(f"{sa.engine.make_url(url).render_as_string()}: ledger schema version {version}, the "
                              f"dashboard needs {len(MIGRATIONS)}; start a gateway of this version on it first "
                              "(it migrates the ledger)")

    def close(self) -> None:
        self.engine.dispose()


def create_dashboard_app(ledger_url: str) -> FastAPI:
    """``thalamus dashboard``: the page and the stats API over one ledger, read-only, no gateway."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ledger = ReadOnlyLedger(ledger_url)
        app.state.ledger = ledger
        try:
            yield
        finally:
            ledger.close()

    app = FastAPI(title="Thalamus dashboard", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_stats(app)
    install_dashboard(app)
    app.add_exception_handler(RequestError, _request_error)
    return app


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
