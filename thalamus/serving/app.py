"""The FastAPI app of the local server; its lifespan owns the model pool and the metrics registry.

Every error, FastAPI's own included, is answered in OpenAI's shape; error bodies are written as ASCII
JSON so that no text they quote (a model name, a parser's message) can fail to encode.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from thalamus.openai_wire import error_body
from thalamus.serving.api import ServingState, router
from thalamus.serving.config import ServingConfig
from thalamus.serving.limits import BodyLimit
from thalamus.serving.machine import usable_cores
from thalamus.serving.metrics import ServingMetrics
from thalamus.serving.pool import ModelPool
from thalamus.serving.protocol import ServingError
from thalamus.serving.vllm_engine import VllmEngines


def create_app(config: ServingConfig, cache_dir: Path | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``config.models``; prepared models live under ``cache_dir``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import torch

        torch.set_num_threads(config.torch_threads or usable_cores())
        metrics = ServingMetrics()
        pool = ModelPool(config, metrics, cache_dir)
        vllm = VllmEngines(config, cache_dir)
        try:
            await vllm.start()
            pool.reserved = vllm.reserved_bytes()
            pool.publish()
            app.state.serving = ServingState(config, pool, metrics, vllm)
            yield
        finally:
            await vllm.close()
            await pool.close()

    app = FastAPI(title="Thalamus local model server", lifespan=lifespan)
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


class _AsciiJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()  # ASCII: a lone surrogate stays an escape


async def _serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return _AsciiJSON(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own errors (unknown path, wrong method, a body it cannot parse) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _AsciiJSON(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    where = f"'{param}'" if param else "the request body"
    message = f"Invalid value for {where}: {first.get('msg', 'invalid')}"
    return _AsciiJSON(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return _AsciiJSON(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                      status_code=500)
