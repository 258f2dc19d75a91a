"""Several deployments behind one backend name, on two upstreams of our own: balancing and the circuit breaker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from gwhelpers import MODELS, GatewayFactory, backend

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer


@pytest.fixture(scope="module")
def upstreams(dataset: RoutingDataset) -> Iterator[tuple[ThreadedServer, ThreadedServer]]:
    with ThreadedServer(create_replay_app(dataset), log_level="critical") as a, \
            ThreadedServer(create_replay_app(dataset), log_level="critical") as b:
        yield a, b


def hits(server: ThreadedServer) -> int:
    return len(server.server.config.app.state.replay.requests)  # type: ignore[attr-defined]


def pool_gateway(make_gateway: GatewayFactory, replay: ThreadedServer, deployments: list[dict[str, Any]],
                 provider: str = "openai-compatible", **pool: Any) -> ThreadedServer:
    api = replay.url + "/v1"
    entry = {"name": "pool", "model": "openai/mid", "provider": provider, "input_per_m": 1.0, "output_per_m": 2.0,
             "max_retries": 0, "timeout": 5.0, "deployments": deployments} | pool
    return make_gateway(provider=provider, backends=[backend(m, m, api, provider=provider) for m in MODELS] + [entry])


def ask(gw: ThreadedServer, stream: bool = False) -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "Hello"}]
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="pool", messages=messages, stream=True) if c.choices)  # type: ignore[arg-type]
    answer = client.chat.completions.create(model="pool", messages=messages)  # type: ignore[arg-type]
    return str(answer.choices[0].message.content)


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
def test_idle_traffic_splits_by_weight(make_gateway: GatewayFactory, replay: ThreadedServer,
                                       upstreams: tuple[ThreadedServer, ThreadedServer], provider: str) -> None:
    a, b = upstreams
    gw = pool_gateway(make_gateway, replay, [{"api_base": a.url + "/v1", "weight": 3},
                                             {"api_base": b.url + "/v1", "weight": 1}], provider)
    before = hits(a), hits(b)
    for _ in range(40):
        assert ask(gw).endswith("from mid.")
    assert (hits(a) - before[0], hits(b) - before[1]) == (30, 10)


def test_busy_traffic_goes_to_the_least_loaded(make_gateway: GatewayFactory, replay: ThreadedServer,
                                               dataset: RoutingDataset) -> None:
    with ThreadedServer(create_replay_app(dataset, delay_ms=400), log_level="critical") as slow, \
            ThreadedServer(create_replay_app(dataset), log_level="critical") as fast:
        gw = pool_gateway(make_gateway, replay, [{"api_base": slow.url + "/v1"}, {"api_base": fast.url + "/v1"}])

        def worker(_: int) -> None:
            for _ in range(5):
                ask(gw)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(worker, range(4)))
        # round robin would give each 10; least in flight keeps sending to the one that answers
        assert hits(slow) + hits(fast) == 20 and hits(fast) >= 2 * hits(slow), (hits(slow), hits(fast))


def test_failing_deployment_is_cooled_down_then_retried(make_gateway: GatewayFactory, replay: ThreadedServer,
                                                        upstreams: tuple[ThreadedServer, ThreadedServer]) -> None:
    a, b = upstreams
    gw = pool_gateway(make_gateway, replay, [{"api_base": a.url + "/v1"},
                                             {"api_base": b.url + "/v1", "model": "openai/mid::503"}],
                      cooldown_failures=2, cooldown_s=1.0)
    start_b = hits(b)
    for i in range(6):  # every request answered: a failing deployment hands over to the other at once
        assert ask(gw, stream=i % 2 == 1).endswith("from mid.")
    assert hits(b) - start_b == 2  # picked every other time until it failed twice in a row: then cooled
    for _ in range(4):
        ask(gw)
    assert hits(b) - start_b == 2  # resting
    time.sleep(1.1)
    ask(gw)
    ask(gw)
    assert hits(b) - start_b == 3  # tried once after the rest (half open), failed, cooled again


@pytest.mark.parametrize(("fault", "cap", "rest"), [("429s", 300.0, 1.0), ("429date", 0.3, 0.3)])
def test_retry_after_cools_a_deployment_for_that_long_capped(
        make_gateway: GatewayFactory, replay: ThreadedServer, upstreams: tuple[ThreadedServer, ThreadedServer],
        fault: str, cap: float, rest: float) -> None:
    a, b = upstreams
    gw = pool_gateway(make_gateway, replay, [{"api_base": b.url + "/v1", "model": f"openai/mid::{fault}"},
                                             {"api_base": a.url + "/v1"}],
                      cooldown_failures=100, max_cooldown_s=cap)
    start_b = hits(b)
    t0 = time.monotonic()
    assert ask(gw).endswith("from mid.")  # b first (tie), 429 with Retry-After, then a
    answered = time.monotonic()  # the rest began between t0 and here (when the 429 came back)
    assert hits(b) - start_b == 1
    while time.monotonic() - t0 < rest - 0.15:  # within the rest: only a
        ask(gw)
    assert hits(b) - start_b == 1
    time.sleep(max(0.0, rest + 0.1 - (time.monotonic() - answered)))
    ask(gw)
    ask(gw)
    assert hits(b) - start_b == 2  # (429date says 2 s; the cap of 0.3 s wins)
