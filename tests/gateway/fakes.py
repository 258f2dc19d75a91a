"""A Backend of the tests' own, registered the real way (``create_app(backends=...)``), for in-process tests.

It implements the ``Backend`` protocol (thalamus/gateway/upstream/base.py): chat answers and streams that
name the model and echo the last user turn, embeddings, legacy completions, and failures injected per call
(``fail``: a list of UpstreamErrors raised by the next calls, in order; ``fail_after``: a stream that breaks
after N chunks). Every body it is sent is kept in ``seen``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from thalamus.gateway.config import BackendConfig
from thalamus.gateway.upstream.checks import UpstreamError


class FakeBackend:
    def __init__(self, config: BackendConfig, usage: tuple[int, int] = (12, 5)) -> None:
        self.name, self.config, self.usage = config.name, config, usage
        self.seen: list[dict[str, Any]] = []
        self.fail: list[UpstreamError] = []
        self.fail_after: int | None = None
        self.closed = False

    def supports(self, path: str) -> bool:
        return path in ("/embeddings", "/completions")

    def _take(self, body: dict[str, Any]) -> None:
        self.seen.append(body)
        if self.fail:
            raise self.fail.pop(0)

    def _text(self, body: dict[str, Any]) -> str:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        return f"{self.name} answers: {users[-1]['content'] if users else ''}"

    def _usage(self) -> dict[str, int]:
        p, c = self.usage
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self._take(body)
        return {"id": "fake-1", "object": "chat.completion", "created": 0, "model": "upstream-name",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self._text(body)},
                             "finish_reason": "stop"}], "usage": self._usage()}

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self._take(body)
        words = self._text(body).split(" ")
        for i, word in enumerate(words):
            if self.fail_after is not None and i == self.fail_after:
                raise UpstreamError(self.name, "retry", 502, "connection reset mid-stream", "upstream_reset")
            yield {"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": "upstream-name",
                   "choices": [{"index": 0, "delta": {"content": word + (" " if i < len(words) - 1 else "")},
                                "finish_reason": None}]}
        yield {"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": "upstream-name",
               "choices": [], "usage": self._usage()}

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        self._take(body)
        if path == "/embeddings":
            return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "model": "upstream-name", "usage": {"prompt_tokens": self.usage[0], "total_tokens": self.usage[0]}}
        return {"id": "cmpl-1", "object": "text_completion", "model": "upstream-name",
                "choices": [{"index": 0, "text": "forty-two", "finish_reason": "stop"}], "usage": self._usage()}

    async def stream_json(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        self._take(body)
        for word in ("forty", "-two"):
            yield {"id": "cmpl-1", "object": "text_completion", "model": "upstream-name",
                   "choices": [{"index": 0, "text": word, "finish_reason": None}]}

    async def aclose(self) -> None:
        self.closed = True
