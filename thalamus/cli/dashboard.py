"""``thalamus dashboard``: the dashboard page and stats API over a ledger, as a read-only server.

For a ledger that several gateway replicas write (PostgreSQL): one small process serves the page without
being a gateway. It never writes to the ledger (no migrations: it refuses a ledger older than itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def dashboard_cmd(
    ledger: Annotated[str, typer.Option("--ledger", help="Ledger URL (sqlite:///file or postgresql+psycopg://...).")],
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default: the page has no auth).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8050,
    snapshot: Annotated[Path | None, typer.Option("--snapshot", help="Write a self-contained HTML snapshot "
                                                   "of the whole ledger here and exit.")] = None,
) -> None:
    """Serve the cost/quality dashboard of a ledger, read-only."""
    from thalamus.gateway.http.dashboard import ReadOnlyLedger, create_dashboard_app, write_snapshot

    if snapshot is not None:
        db = ReadOnlyLedger(ledger)
        try:
            Console().print(f"wrote {write_snapshot(db.engine, snapshot, bucket='hour')}")
        finally:
            db.close()
        return
    import uvicorn

    Console().print(f"dashboard on http://{host}:{port}/dashboard")
    uvicorn.run(create_dashboard_app(ledger), host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard_cmd)
