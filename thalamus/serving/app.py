"""The FastAPI app of the local server; its lifespan owns the model pool and the metrics registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from thalamus.openai_wire import error_body
from thalamus.serving.api import ServingState, router
from thalamus.serving.config import ServingConfig
from thalamus.serving.metrics import ServingMetrics
from thalamus.serving.pool import ModelPool
from thalamus.serving.protocol import ServingError


def create_app(config: ServingConfig, cache_dir: Path | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``config.models``; prepared models live under ``cache_dir``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        metrics = ServingMetrics()
        pool = ModelPool(config, metrics, cache_dir)
        app.state.serving = ServingState(config, pool, metrics)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="Thalamus local model server", lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    where = f"'{param}'" if param else "the request body"
    message = f"Invalid value for {where}: {first.get('msg', 'invalid')}"
    return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                        status_code=500)
