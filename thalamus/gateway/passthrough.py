"""``POST /v1/embeddings`` and ``POST /v1/completions``: passed to the backend the ``model`` field names.

No routing and no fallback to other models: an embedding from another model is a different vector
space, and a legacy completion prompt is written for one model. The backend's retries still apply. Each
request is checked against the key (scope, rate limits, budget) and leaves one ledger row with its
tokens and cost (embeddings: input tokens at the backend's input price). ``openai-compatible`` backends
get the body as it is (model replaced) at ``{api_base}/embeddings`` / ``/completions``; litellm backends
go through ``litellm.aembedding`` / ``litellm.atext_completion``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from thalamus.gateway import protocol as p
from thalamus.gateway.backends import Backend, UpstreamError, clean
from thalamus.gateway.headers import upstream_headers
from thalamus.gateway.service import Call, ChatResult, GatewayService
from thalamus.gateway.upstream import check_finite

Kind = str  # "embeddings" or "completions"


def _validate(kind: Kind, body: dict[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise p.RequestError(400, "'model' is required and must be a non-empty string", param="model")
    field = "input" if kind == "embeddings" else "prompt"
    value = body.get(field)
    if not (isinstance(value, str) and value) and not (isinstance(value, list) and value):
        raise p.RequestError(400, f"'{field}' is required: a non-empty string or array", param=field)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise p.RequestError(400, "'stream' must be a boolean", param="stream")
    if kind == "embeddings" and body.get("stream"):
        raise p.RequestError(400, "embeddings do not stream", param="stream")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(v for v in value if isinstance(v, str))  # token arrays are not text: not estimated
    return ""


def _litellm_kwargs(backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
    cfg = backend.config
    kwargs: dict[str, Any] = {k: v for k, v in body.items() if k != "model"}
    kwargs.update(model=cfg.model, timeout=cfg.first_byte_s, num_retries=0, max_retries=0)
    if cfg.api_base:
        kwargs["api_base"] = cfg.api_base
    key = cfg.api_key()
    kwargs["api_key"] = key or ("not-needed" if cfg.api_base else None)
    if extra := upstream_headers():
        kwargs["extra_headers"] = extra
    return kwargs


async def _litellm_call(backend: Backend, kind: Kind, body: dict[str, Any]) -> Any:
    import litellm

    fn = litellm.aembedding if kind == "embeddings" else litellm.atext_completion
    try:
        return await fn(**_litellm_kwargs(backend, body))
    except Exception as exc:  # litellm's errors become an UpstreamError the retry loop reads
        error = getattr(backend, "_error", None)
        raise (error(exc, False) if error is not None else UpstreamError(
            backend.name, "retry", 502, str(exc), type(exc).__name__)) from exc


async def _json(backend: Backend, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
    if hasattr(backend, "post_json"):
        answer = await backend.post_json(f"/{kind}", body)
    else:
        answer = dict(clean((await _litellm_call(backend, kind, body)).model_dump()))
    if not isinstance(answer, dict) or ("data" if kind == "embeddings" else "choices") not in answer:
        raise UpstreamError(backend.name, "retry", 502, f"the upstream's {kind} answer has an unexpected shape",
                            "invalid_upstream_body")
    check_finite(backend.name, answer)
    return answer


async def _chunks(backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    if hasattr(backend, "stream_json"):
        async for chunk in backend.stream_json("/completions", body):
            yield chunk
        return
    response = await _litellm_call(backend, "completions", body)
    try:
        async for chunk in response:
            out = dict(clean(chunk.model_dump(exclude_none=True)))
            for choice in out.get("choices") or []:
                if isinstance(choice, dict):
                    choice.setdefault("text", "")  # litellm leaves it out of the closing chunk; OpenAI sends ""
            yield out
    except Exception as exc:  # as in _litellm_call
        raise UpstreamError(backend.name, "retry", 502, f"stream failed: {exc}", type(exc).__name__) from exc


class Passthrough:
    """Embeddings and legacy completions on one GatewayService."""

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def handle(self, kind: Kind, call: Call, raw: bytes) -> ChatResult:
        return await self.service.guarded(call, self._handle(kind, call, raw))

    async def _handle(self, kind: Kind, call: Call, raw: bytes) -> ChatResult:
        service = self.service
        service.controls.admit(call.row.api_key_id)
        body = p.parse_json_body(raw)
        _validate(kind, body)
        row = call.row
        row.requested_model, row.stream = body["model"], bool(body.get("stream"))
        name = self._backend(body["model"])
        service.controls.scope(row.api_key_id, name, None, p.RoutingOverrides())
        text = _text(body.get("input") if kind == "embeddings" else body.get("prompt"))
        row.chosen_model, row.prompt_hash = name, service.hasher(text)
        if service.config.ledger.store_prompts:
            row.prompt_text = text
        service.controls.reserve(row, {"messages": [{"role": "user", "content": text}], **body},
                                 service.backends[name].config)
        if body.get("stream"):
            return await self._stream(call, name, body, text)
        return await self._complete(kind, call, name, body, text)

    def _backend(self, model: str) -> str:
        if model in self.service.backends:
            return model
        raise p.RequestError(404, f"model {model!r} is not a configured backend (embeddings and completions go "
                             "to a named backend, not a router)", param="model", code="model_not_found")

    def _account(self, call: Call, name: str, usage: Any, prompt: str, output: str) -> None:
        cfg = self.service.backends[name].config
        prompt_tokens, completion_tokens = p.token_count(usage, "prompt_tokens"), p.token_count(usage,
                                                                                              "completion_tokens")
        if not prompt_tokens and not completion_tokens and output:  # a zero usage litellm made up for a stream
            prompt_tokens = completion_tokens = None
        row = call.row
        row.cost_estimated = prompt_tokens is None
        row.prompt_tokens = prompt_tokens if prompt_tokens is not None else p.estimate_tokens(prompt)
        row.completion_tokens = completion_tokens if completion_tokens is not None else (
            p.estimate_tokens(output) if output else 0)
        row.cost_usd = (row.prompt_tokens * (cfg.input_per_m or 0.0)
                        + row.completion_tokens * (cfg.output_per_m or 0.0)) / 1e6

    async def _complete(self, kind: Kind, call: Call, name: str, body: dict[str, Any], text: str) -> ChatResult:
        service = self.service

        async def attempt(backend: Backend) -> tuple[dict[str, Any], bytes]:
            answer = await _json(backend, kind, body)
            answer["model"] = backend.name
            return answer, p.render(backend.name, answer)

        _, (answer, rendered) = await service._attempt_all(call, [name], attempt)
        call.row.ttft_ms = call.elapsed_ms()
        output = "".join(str(c.get("text") or "") for c in answer.get("choices") or [] if isinstance(c, dict))
        self._account(call, name, answer.get("usage"), text, output)
        call.row.status = 200
        await service.finish(call)
        return ChatResult(200, service._headers(call, name), body=rendered)

    async def _stream(self, call: Call, name: str, body: dict[str, Any], text: str) -> ChatResult:
        async def open_stream(backend: Backend) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None]:
            iterator = _chunks(backend, body).__aiter__()
            return iterator, await anext(iterator, None)

        service = self.service
        _, (iterator, first) = await service._attempt_all(call, [name], open_stream)
        call.row.ttft_ms = call.elapsed_ms()
        return ChatResult(200, service._headers(call, name), stream=self._relay(call, name, text, iterator, first))

    async def _relay(self, call: Call, name: str, text: str, iterator: AsyncIterator[dict[str, Any]],
                     first: dict[str, Any] | None) -> AsyncIterator[bytes]:
        usage: Any = None
        parts: list[str] = []
        finished = False
        call.row.status, call.row.error_type = 499, "client_disconnected"

        async def close(status: int, error: str | None) -> None:
            nonlocal finished
            call.row.status, call.row.error_type, finished = status, error, True
            self._account(call, name, usage, text, "".join(parts))
            await self.service.finish(call)

        try:
            chunk = first
            while chunk is not None:
                chunk["model"] = name
                usage = chunk.get("usage") or usage
                parts.extend(str(c.get("text") or "") for c in chunk.get("choices") or [] if isinstance(c, dict))
                yield p.render_chunk(name, chunk)
                with call.upstream():
                    chunk = await anext(iterator, None)
            await close(200, None)
            yield p.SSE_DONE
        except UpstreamError as exc:
            await close(502, exc.code)
            yield p.sse(p.error_body(f"upstream {name} failed mid-stream: {exc.message}", "upstream_error"))
        finally:
            if not finished:
                await close(499, "client_disconnected")
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()
