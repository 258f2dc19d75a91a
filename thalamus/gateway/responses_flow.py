"""``POST /v1/responses`` through the gateway's chat flow: the same key checks, routing, retries,
fallbacks, headers and one ledger row per request.

The body is translated to its chat form (gateway/responses.py) for routing (the router sees the
instructions + the last user input) and for chat-only backends; a backend with ``responses: true`` is
sent the Responses body itself (model replaced) and its answer or events are relayed as they are, apart
from ``model``. A stream falls back only before its first event, as chat streams do; a failure after it
is an ``error`` event, and the row says 502. The row is recorded before the closing event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from thalamus.gateway import protocol as p
from thalamus.gateway import responses as rs
from thalamus.gateway.backends import Backend, UpstreamError
from thalamus.gateway.service import Call, ChatResult, GatewayService


def _native(backend: Backend) -> bool:
    return bool(backend.config.responses) and hasattr(backend, "post_json")


def _check_response(name: str, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("output"), list):
        raise UpstreamError(name, "retry", 502, "the upstream's Responses answer has no 'output' list",
                            "invalid_upstream_body")
    return obj


class ResponsesFlow:
    """The Responses API on one GatewayService."""

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def handle(self, call: Call, raw: bytes) -> ChatResult:
        """One admitted Responses request; every outcome leaves its ledger row (as ``GatewayService.chat``)."""
        return await self.service.guarded(call, self._handle(call, raw))

    async def _handle(self, call: Call, raw: bytes) -> ChatResult:
        service = self.service
        service.controls.admit(call.row.api_key_id)
        body = p.parse_json_body(raw)
        chat = rs.to_chat(body)
        call.row.requested_model, call.row.stream = body["model"], bool(body.get("stream"))
        body.pop("routing", None)  # the gateway's extension; routed in its chat form
        candidates = await service.plan(call, chat)
        rid = "resp_" + call.row.id.removeprefix("thl-")
        if body.get("stream"):
            return await self._stream(call, body, chat, candidates, rid)
        return await self._complete(call, body, chat, candidates, rid)

    async def _complete(self, call: Call, body: dict[str, Any], chat: dict[str, Any], candidates: list[str],
                        rid: str) -> ChatResult:
        async def attempt(backend: Backend) -> tuple[dict[str, Any], bytes]:
            if _native(backend):
                response = _check_response(backend.name, await backend.post_json(  # type: ignore[attr-defined]
                    "/responses", body))
            else:
                response = rs.from_chat(await backend.complete(chat), body, rid, backend.name)
            response["model"] = backend.name
            return response, p.render(backend.name, response)

        service = self.service
        name, (response, rendered) = await service._attempt_all(call, candidates, attempt)
        call.row.ttft_ms = call.elapsed_ms()
        service._account(call, name, chat, rs.chat_usage(response.get("usage")), rs.output_text(response))
        call.row.status = 200
        await service.finish(call)
        return ChatResult(200, service._headers(call, name), body=rendered)

    async def _stream(self, call: Call, body: dict[str, Any], chat: dict[str, Any], candidates: list[str],
                      rid: str) -> ChatResult:
        async def open_stream(backend: Backend) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None]:
            if _native(backend):
                iterator = backend.stream_json("/responses", body).__aiter__()  # type: ignore[attr-defined]
                return iterator, await anext(iterator, None)
            # translated: response.created and .in_progress are made here; the third event needs the upstream's
            # first chunk, so a failing upstream fails inside this attempt and the next candidate is tried
            translated = rs.events(backend.stream(chat), body, rid, backend.name).__aiter__()
            head = []
            for _ in range(3):
                event = await anext(translated, None)
                if event is None:
                    break
                head.append(event)
            return _prepend(head[1:], translated), (head[0] if head else None)

        service = self.service
        name, (iterator, first) = await service._attempt_all(call, candidates, open_stream)
        call.row.ttft_ms = call.elapsed_ms()
        return ChatResult(200, service._headers(call, name), stream=self._relay(call, name, chat, iterator, first))

    async def _relay(self, call: Call, name: str, chat: dict[str, Any], iterator: AsyncIterator[dict[str, Any]],
                     first: dict[str, Any] | None) -> AsyncIterator[bytes]:
        service, usage, parts, seq = self.service, None, [], 0
        call.row.status, call.row.error_type = 499, "client_disconnected"
        finished = False
        try:
            event = first
            while event is not None:
                response = event.get("response")
                if isinstance(response, dict):
                    response["model"] = name
                    usage = response.get("usage") or usage
                if event.get("type") == "response.output_text.delta":
                    parts.append(str(event.get("delta") or ""))
                last = event.get("type") in ("response.completed", "response.incomplete", "response.failed")
                if last:  # the row is recorded before the closing event, as for chat streams
                    call.row.status, call.row.error_type = 200, None
                    service._account(call, name, chat, rs.chat_usage(usage), "".join(parts))
                    finished = True
                    await service.finish(call)
                yield rs.encode(event, seq)
                seq += 1
                with call.upstream():
                    event = await anext(iterator, None)
            if not finished:
                raise UpstreamError(name, "retry", 502, "the stream ended before response.completed",
                                    "incomplete_stream")
        except UpstreamError as exc:  # after the first event there is no fallback: report in-stream
            call.row.status, call.row.error_type = 502, exc.code
            service._account(call, name, chat, rs.chat_usage(usage), "".join(parts))
            finished = True
            await service.finish(call)
            message = f"upstream {name} failed mid-stream: {exc.message}"
            yield rs.encode({"type": "error", "code": exc.code, "message": message, "param": None,
                             "error": {"message": message, "type": "upstream_error", "code": exc.code}}, seq)
        finally:
            if not finished:  # the client went away (or the task was cancelled): 499
                service._account(call, name, chat, rs.chat_usage(usage), "".join(parts))
                await service.finish(call)
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()


async def _prepend(head: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in head:
        yield item
    try:
        async for item in rest:
            yield item
    finally:
        closer = getattr(rest, "aclose", None)
        if closer is not None:
            await closer()
