"""``GET /metrics``: the Prometheus text of the gateway (of every worker, in multiprocess mode)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from thalamus.gateway.http.deps import Reader
from thalamus.gateway.stats.metrics import CONTENT_TYPE, GatewayMetrics


async def metrics_endpoint(request: Request, who: Reader) -> Response:
    """Prometheus text of every tenant: the admin key's (scrape with it as bearer token) when auth is on;
    a model key gets 403 (its own numbers: /api/stats/*, /api/spend)."""
    who.require_admin("/metrics")
    metrics: GatewayMetrics = request.app.state.metrics
    return Response(metrics.scrape(), media_type=CONTENT_TYPE)


def install_metrics(app: FastAPI) -> None:
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
