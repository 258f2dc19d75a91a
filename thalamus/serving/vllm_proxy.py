"""Forwarding a chat request for an ``engine: vllm`` model to its vLLM process, body and answer unchanged.

The request body goes on as the client sent it (vLLM validates it itself, and knows fields such as
``ignore_eos`` that the torch engine's schema does not narrow); the answer comes back with vLLM's
status and content type, SSE frames streamed through as they arrive. While the engine (re)starts,
a request waits up to ``queue_timeout_s`` and then gets a 503 with Retry-After, like a full queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from thalamus.serving.metrics import ServingMetrics
from thalamus.serving.protocol import BusyError, ServingError
from thalamus.serving.vllm_engine import VllmEngines

_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)  # decoding may take minutes


async def forward_chat(request: Request, name: str, engines: VllmEngines, metrics: ServingMetrics,
                       wait_s: float) -> Response:
    """POST the request's body to engine ``name``'s /v1/chat/completions (through the engines' client);
    stream the answer back."""
    try:
        url = await engines.url_of(name, wait_s)
    except TimeoutError:
        metrics.queue_rejections.labels(name, "engine", "timeout").inc()
        why = engines.engines[name].last_error or "it is still starting"
        raise BusyError(f"vLLM engine of model '{name}' is not ready after {wait_s:g} s ({why}); retry later",
                        code="engine_starting") from None
    client = engines.client
    assert client is not None  # created by engines.start() with the engines
    upstream = client.build_request("POST", f"{url}/v1/chat/completions", content=await request.body(),
                                    headers={"content-type": "application/json"}, timeout=_TIMEOUT)
    try:
        response = await client.send(upstream, stream=True)
    except httpx.HTTPError as exc:
        metrics.requests.labels(name, "502").inc()
        raise ServingError(502, f"vLLM engine of model '{name}' at {url} failed: {type(exc).__name__}: {exc}",
                           type_="server_error", code="engine_failed") from exc
    metrics.requests.labels(name, str(response.status_code)).inc()
    media = response.headers.get("content-type", "application/json")
    if not media.startswith("text/event-stream"):
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return Response(content, status_code=response.status_code, media_type=media)
    return StreamingResponse(_relay(response), status_code=response.status_code, media_type=media)


async def _relay(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()  # also when the client leaves: vLLM sees the disconnect and aborts the request
