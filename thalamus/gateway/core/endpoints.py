"""One small adapter per OpenAI endpoint on the one pipeline: parse, call, read and render.

The pipeline (``core/service.py``) owns admission, routing, attempts, the relay and the ledger row; an
adapter only knows its endpoint's shapes: how to parse and validate a body into a ``RequestView``, how to
call a backend for it, what usage and text an answer or a stream item carries, and how to render them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from thalamus.gateway.core.request import RequestView, chat_view, text_view
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.checks import UpstreamError, check_finite
from thalamus.gateway.upstream.headers import non_ascii_header
from thalamus.gateway.wire import protocol as p
from thalamus.gateway.wire import responses as rs


@dataclass
class Frame:
    """One stream item as the client gets it, and what it tells the ledger."""

    data: bytes
    usage: dict[str, Any] | None = None  # chat-form usage, when this item carries it
    text: str = ""
    last: bool = False  # the closing item: the row is recorded before it goes out


class Endpoint(Protocol):
    path: str
    routed: bool  # the model field may name a router (else: a backend, no fallback to other models)
    judged: bool  # answers are offered to the LLM judge
    cacheable: bool  # non-stream answers may come from the response cache
    needs_last: bool  # a stream that ends without its closing item was cut

    def parse(self, raw: bytes) -> RequestView: ...

    async def complete(self, backend: Backend, view: RequestView, rid: str) -> dict[str, Any]: ...

    def answer(self, response: dict[str, Any]) -> tuple[dict[str, Any] | None, str]: ...

    async def open(self, backend: Backend, view: RequestView, rid: str) -> AsyncIterator[dict[str, Any]]: ...

    def frame(self, name: str, item: dict[str, Any], seq: int) -> Frame: ...

    def done(self) -> bytes | None: ...

    def failed(self, name: str, exc: UpstreamError, seq: int) -> bytes: ...


def _sse_failed(name: str, exc: UpstreamError) -> bytes:
    return p.sse(p.error_body(f"upstream {name} failed mid-stream: {exc.message}", "upstream_error"))


def _body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, once the request's forwarded headers are known to be sendable."""
    name = non_ascii_header()
    if name is not None:
        raise p.RequestError(400, f"header {name!r} holds non-ASCII text; the gateway forwards it upstream "
                             "(server.forward_headers), where header values must be ASCII: percent-encode it",
                             param=name, code="invalid_header_value")
    return p.parse_json_body(raw)


def _choice_text(choices: Any, part: str, key: str) -> str:
    return "".join(str((c.get(part) or {}).get(key) or "") if part else str(c.get(key) or "")
                   for c in choices or [] if isinstance(c, dict))


class ChatEndpoint:
    path, routed, judged, cacheable, needs_last = "/chat/completions", True, True, True, False

    def parse(self, raw: bytes) -> RequestView:
        body = _body(raw)
        p.validate_chat(body)
        return chat_view(body, body)

    async def complete(self, backend: Backend, view: RequestView, rid: str) -> dict[str, Any]:
        return await backend.complete(backend.config.with_defaults(view.forward))

    def answer(self, response: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        return response.get("usage"), _choice_text(response.get("choices"), "message", "content")

    async def open(self, backend: Backend, view: RequestView, rid: str) -> AsyncIterator[dict[str, Any]]:
        return backend.stream(backend.config.with_defaults(view.forward)).__aiter__()

    def frame(self, name: str, item: dict[str, Any], seq: int) -> Frame:
        item["model"] = name
        return Frame(p.render_chunk(name, item), item.get("usage"), _choice_text(item.get("choices"), "delta",
                                                                                   "content"))

    def done(self) -> bytes | None:
        return p.SSE_DONE

    def failed(self, name: str, exc: UpstreamError, seq: int) -> bytes:
        return _sse_failed(name, exc)


def _responses_answer(name: str, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("output"), list):
        raise UpstreamError(name, "retry", 502, "the upstream's Responses answer has no 'output' list",
                            "invalid_upstream_body")
    return obj


class ResponsesEndpoint:
    """``POST /v1/responses``: routed in its chat form; a backend with ``responses: true`` that serves the
    path natively gets the Responses body itself, the others get the chat form and their answer is
    translated (``wire/responses.py``)."""

    path, routed, judged, cacheable, needs_last = "/responses", True, True, False, True
    _CLOSING = ("response.completed", "response.incomplete", "response.failed")

    def parse(self, raw: bytes) -> RequestView:
        body = _body(raw)
        return chat_view(body, rs.to_chat(body), native=body)

    @staticmethod
    def _native(backend: Backend) -> bool:
        return bool(backend.config.responses) and backend.supports("/responses")

    async def complete(self, backend: Backend, view: RequestView, rid: str) -> dict[str, Any]:
        assert view.native is not None
        if self._native(backend):
            return _responses_answer(backend.name, await backend.post_json(
                "/responses", backend.config.with_defaults(view.native)))
        return rs.from_chat(await backend.complete(backend.config.with_defaults(view.forward)), view.native, rid,
                            backend.name)

    def answer(self, response: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        return rs.chat_usage(response.get("usage")), rs.output_text(response)

    async def open(self, backend: Backend, view: RequestView, rid: str) -> AsyncIterator[dict[str, Any]]:
        assert view.native is not None
        if self._native(backend):
            return backend.stream_json("/responses", backend.config.with_defaults(view.native)).__aiter__()
        # response.created and .in_progress are made here; the third event needs the upstream's first chunk,
        # so a failing upstream fails inside this attempt and the next candidate is tried
        translated = rs.events(backend.stream(backend.config.with_defaults(view.forward)), view.native, rid,
                               backend.name).__aiter__()
        head = []
        for _ in range(3):
            event = await anext(translated, None)
            if event is None:
                break
            head.append(event)
        return _prepend(head, translated)

    def frame(self, name: str, item: dict[str, Any], seq: int) -> Frame:
        response, usage = item.get("response"), None
        if isinstance(response, dict):
            response["model"] = name
            usage = rs.chat_usage(response.get("usage"))
        text = str(item.get("delta") or "") if item.get("type") == "response.output_text.delta" else ""
        return Frame(rs.encode(item, seq), usage, text, last=item.get("type") in self._CLOSING)

    def done(self) -> bytes | None:
        return None

    def failed(self, name: str, exc: UpstreamError, seq: int) -> bytes:
        message = f"upstream {name} failed mid-stream: {exc.message}"
        return rs.encode({"type": "error", "code": exc.code, "message": message, "param": None,
                          "error": {"message": message, "type": "upstream_error", "code": exc.code}}, seq)


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


def _input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(v for v in value if isinstance(v, str))  # token arrays are not text: not estimated
    return ""


class PassthroughEndpoint:
    """``/v1/embeddings`` and ``/v1/completions``: to the backend the ``model`` field names. No routing and
    no fallback to other models: an embedding from another model is a different vector space, and a legacy
    completion prompt is written for one model. The backend's retries still apply."""

    routed, judged, cacheable, needs_last = False, False, False, False

    def __init__(self, path: str) -> None:
        self.path = path
        self.field = "input" if path == "/embeddings" else "prompt"

    def _validate(self, body: dict[str, Any]) -> None:
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise p.RequestError(400, "'model' is required and must be a non-empty string", param="model")
        value = body.get(self.field)
        if not (isinstance(value, str) and value) and not (isinstance(value, list) and value):
            raise p.RequestError(400, f"'{self.field}' is required: a non-empty string or array", param=self.field)
        if "stream" in body and not isinstance(body["stream"], bool):
            raise p.RequestError(400, "'stream' must be a boolean", param="stream")
        if self.path == "/embeddings" and body.get("stream"):
            raise p.RequestError(400, "embeddings do not stream", param="stream")
        _check_input(value, self.field)
        if self.path == "/embeddings":
            _check_embedding_options(body)

    def parse(self, raw: bytes) -> RequestView:
        body = _body(raw)
        self._validate(body)
        return text_view(body, _input_text(body[self.field]))

    async def complete(self, backend: Backend, view: RequestView, rid: str) -> dict[str, Any]:
        if not backend.supports(self.path):
            raise UpstreamError(backend.name, "client", 400, f"backend {backend.name!r} does not serve {self.path}",
                                "unsupported_endpoint")
        answer = await backend.post_json(self.path, view.forward)
        if not isinstance(answer, dict) or ("data" if self.path == "/embeddings" else "choices") not in answer:
            raise UpstreamError(backend.name, "retry", 502, f"the upstream's {self.path[1:]} answer has an "
                                "unexpected shape", "invalid_upstream_body")
        check_finite(backend.name, answer)
        return answer

    def answer(self, response: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        return response.get("usage"), _choice_text(response.get("choices"), "", "text")

    async def open(self, backend: Backend, view: RequestView, rid: str) -> AsyncIterator[dict[str, Any]]:
        return backend.stream_json(self.path, view.forward).__aiter__()

    def frame(self, name: str, item: dict[str, Any], seq: int) -> Frame:
        item["model"] = name
        return Frame(p.render_chunk(name, item), item.get("usage"), _choice_text(item.get("choices"), "", "text"))

    def done(self) -> bytes | None:
        return p.SSE_DONE

    def failed(self, name: str, exc: UpstreamError, seq: int) -> bytes:
        return _sse_failed(name, exc)


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                            and t >= 0 for t in value)


def _check_input(value: Any, field: str) -> None:
    """OpenAI's forms: a string, an array of strings, an array of token ids, or an array of token arrays
    (litellm fails on other shapes with a connection error)."""
    if isinstance(value, str) or _is_tokens(value):
        return
    if all(isinstance(v, str) for v in value) or all(_is_tokens(v) for v in value):
        return
    raise p.RequestError(400, f"'{field}' must be a string, an array of strings, an array of token ids or an "
                         "array of token arrays", param=field)


def _check_embedding_options(body: dict[str, Any]) -> None:
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise p.RequestError(400, f"'encoding_format' must be 'float' or 'base64', not {fmt!r}"[:300],
                             param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise p.RequestError(400, f"'dimensions' must be a positive integer, not {dims!r}"[:300], param="dimensions")
    if "user" in body and not isinstance(body["user"], str):
        raise p.RequestError(400, "'user' must be a string", param="user")


CHAT = ChatEndpoint()
RESPONSES = ResponsesEndpoint()
EMBEDDINGS = PassthroughEndpoint("/embeddings")
COMPLETIONS = PassthroughEndpoint("/completions")
