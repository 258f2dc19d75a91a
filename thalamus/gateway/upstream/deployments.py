"""Several deployments behind one backend name: load balancing and a circuit breaker per deployment.

A backend with ``deployments`` (two ``api_base`` values, or two providers for the same model) is one
``DeploymentGroup``: the service sees one backend, the group picks a deployment per call.

- **Pick**: the deployments not cooling down, least in flight relative to weight (``in_flight / weight``);
  ties are broken by smooth weighted round robin, so idle traffic splits by weight exactly (3:1 gives
  3 of every 4 calls). When every deployment is cooling down, the one whose rest ends first is used.
- **Failover inside a call**: a retryable failure before the answer starts (a stream: its first chunk)
  moves on to the next deployment at once; the call fails only when each deployment failed once. A
  client error (4xx) or context error is the request's, not the deployment's: raised at once.
- **Circuit breaker**: ``cooldown_failures`` retryable failures in a row cool a deployment for
  ``cooldown_s``; an answer with ``Retry-After`` cools it for that long (at most ``max_cooldown_s``). After
  the rest it is tried again (half open): a success closes it, a failure cools it again.

State is per gateway process (it describes this process's view of the upstreams).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from thalamus.gateway.config import BackendConfig
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.checks import UpstreamError

T = TypeVar("T")


@dataclass
class Deployment:
    backend: Backend
    weight: float
    in_flight: int = 0
    failures: int = 0
    cooled_until: float = 0.0
    current: float = 0.0  # smooth weighted round robin state
    calls: int = 0

    def cooling(self, now: float) -> bool:
        return self.cooled_until > now


def deployment_configs(config: BackendConfig) -> list[BackendConfig]:
    """One BackendConfig per deployment, the backend's fields filling what a deployment leaves out."""
    out = []
    for dep in config.deployments:
        provider = dep.provider or config.provider
        update: dict[str, Any] = {
            "api_base": dep.api_base or config.api_base, "model": dep.model or config.model, "provider": provider,
            "api_key_env": dep.api_key_env or config.api_key_env, "deployments": [],
            "responses": config.responses and provider == "openai-compatible"}
        out.append(config.model_copy(update=update))
    return out


class DeploymentGroup:
    """A Backend made of several deployments (see the module docstring)."""

    def __init__(self, config: BackendConfig, make: Callable[[BackendConfig], Backend]) -> None:
        self.name = config.name
        self.config = config
        self.deployments = [Deployment(make(c), d.weight) for c, d in zip(deployment_configs(config),
                                                                           config.deployments, strict=True)]

    def order(self, now: float | None = None) -> list[Deployment]:
        """The deployments in the order this call tries them (the first is the pick)."""
        now = time.monotonic() if now is None else now
        ready = [d for d in self.deployments if not d.cooling(now)]
        resting = sorted((d for d in self.deployments if d.cooling(now)), key=lambda d: d.cooled_until)
        if not ready:
            return resting
        least = min(d.in_flight / d.weight for d in ready)
        tied = [d for d in ready if d.in_flight / d.weight == least]
        total = sum(d.weight for d in tied)
        for d in tied:
            d.current += d.weight
        pick = max(tied, key=lambda d: d.current)
        pick.current -= total
        rest = sorted((d for d in ready if d is not pick), key=lambda d: (d.in_flight / d.weight, d.failures))
        return [pick, *rest, *resting]

    def _failed(self, dep: Deployment, exc: UpstreamError) -> None:
        dep.failures += 1
        now = time.monotonic()
        if exc.retry_after is not None:
            dep.cooled_until = now + min(exc.retry_after, self.config.max_cooldown_s)
        elif dep.failures >= self.config.cooldown_failures:
            dep.cooled_until = now + min(self.config.cooldown_s, self.config.max_cooldown_s)

    async def _call(self, fn: Callable[[Backend], Awaitable[T]]) -> T:
        last: UpstreamError | None = None
        for dep in self.order():
            dep.in_flight += 1
            dep.calls += 1
            try:
                result = await fn(dep.backend)
            except UpstreamError as exc:
                if exc.kind != "retry":
                    raise
                self._failed(dep, exc)
                last = exc
                continue
            finally:
                dep.in_flight -= 1
            _succeeded(dep)
            return result
        assert last is not None
        raise last

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(lambda b: b.complete(body))

    def supports(self, path: str) -> bool:
        return all(d.backend.supports(path) for d in self.deployments)

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return await self._call(lambda b: b.post_json(path, body))

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._streamed(lambda b: b.stream(body))

    def stream_json(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        return self._streamed(lambda b: b.stream_json(path, body))

    async def _streamed(self, open_: Callable[[Backend], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        """Failover until a deployment sends its first chunk; after that its failures are the stream's."""
        last: UpstreamError | None = None
        for dep in self.order():
            dep.in_flight += 1
            dep.calls += 1
            iterator = open_(dep.backend).__aiter__()
            try:
                try:
                    first = await anext(iterator)
                except StopAsyncIteration:
                    return
                except UpstreamError as exc:
                    if exc.kind != "retry":
                        raise
                    self._failed(dep, exc)
                    last = exc
                    continue
                _succeeded(dep)
                yield first
                async for chunk in iterator:
                    yield chunk
                return
            finally:
                dep.in_flight -= 1
                closer = getattr(iterator, "aclose", None)
                if closer is not None:
                    await closer()
        assert last is not None
        raise last

    async def aclose(self) -> None:
        for dep in self.deployments:
            await dep.backend.aclose()


def _succeeded(dep: Deployment) -> None:
    """An answer ends a deployment's failure streak and any cooldown."""
    dep.failures, dep.cooled_until = 0, 0.0
