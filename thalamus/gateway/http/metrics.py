"""``GET /metrics``: the Prometheus text of the gateway (of every worker, in multiprocess mode)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from thalamus.gateway.stats.metrics import CONTENT_TYPE, GatewayMetrics


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text; behind the API-key check when auth is on (scrape with a bearer token)."""
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.authorize(request.headers.get("authorization"))
    metrics: GatewayMetrics = request.app.state.metrics
    return Response(metrics.scrape(), media_type=CONTENT_TYPE)


def install_metrics(app: FastAPI) -> None:
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
