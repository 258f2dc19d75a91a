"""The real gateway forwards through litellm to the real local server (JSON, streaming, routed),
answers as the backend, and its ledger prices the local calls from the config.

Two tiny random-weight MoE models are served by the real ``serve-local`` app; a real gateway reaches
them through litellm (``openai/<served name>`` + ``api_base``), priced per token in its config, with
a kNN router (hashing embedder) trained here on a small synthetic RoutingDataset over the two served
names. The client is the ``openai`` SDK; the ledger is read back with the gateway's Ledger class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from thalamus.datasets.schema import RoutingDataset
from thalamus.datasets.user_format import read_user_file
from thalamus.gateway.app import create_app as create_gateway
from thalamus.gateway.config import config_from_dict, load_config
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger
from thalamus.router.knn import KNNRouter
from thalamus.serving.app import create_app as create_local_server
from thalamus.serving.config import ServingConfig
from thalamus.serving.models import make_tiny_moe

# served name -> USD per 1M (input, output) tokens in the gateway config: one free, one priced
PRICES = {"tiny-mixtral": (0.0, 0.0), "tiny-qwen2_moe": (200.0, 600.0)}
MODELS = list(PRICES)
REPO = Path(__file__).resolve().parents[2]
GREEDY: dict[str, Any] = {"max_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}


@dataclass
class Stack:
    """The running servers of one test session."""

    local_url: str
    gateway_url: str
    ledger_path: Path
    prices: dict[str, tuple[float, float]]

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a call at the configured per-token prices."""
        pin, pout = self.prices[model]
        return (prompt_tokens * pin + completion_tokens * pout) / 1e6

    def ledger_row(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The gateway's ledger row of one request, once its batched writer has flushed it."""
        ledger = Ledger(f"sqlite:///{self.ledger_path}")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                rows = ledger.recent(limit=1000)
                hit = rows[rows["id"] == request_id]
                if len(hit):
                    return dict(hit.iloc[0])
                time.sleep(0.02)
        finally:
            ledger.close()
        raise AssertionError(f"no ledger row for request {request_id} after {timeout} s")


def routing_dataset(n: int = 20) -> RoutingDataset:
    """Arithmetic prompts are answered well by tiny-mixtral, poem requests by tiny-qwen2_moe."""
    math = [f"What is {i} plus {3 * i + 1}? Add the two numbers." for i in range(n)]
    poems = [f"Write a short poem about the {w} in spring." for w in
             ("river", "forest", "moon", "sea", "garden", "mountain", "city", "rain", "wind", "birds",
              "meadow", "harbour", "valley", "snow", "orchard", "lake", "sky", "desert", "bridge", "field")[:n]]
    quality = np.array([[1.0, 0.0]] * len(math) + [[0.0, 1.0]] * len(poems))
    cost = np.tile([0.0, 0.002], (len(quality), 1))
    return RoutingDataset(name="local-synthetic", prompts=pd.DataFrame({"text": math + poems}),
                          models=MODELS, quality=quality, cost=cost)


def gateway_config(local_url: str, artifact: Path, ledger: Path) -> dict[str, Any]:
    backends = [{"name": m, "provider": "litellm", "model": f"openai/{m}", "api_base": f"{local_url}/v1",
                 "input_per_m": PRICES[m][0], "output_per_m": PRICES[m][1], "timeout": 60, "max_retries": 0}
                for m in MODELS]
    return {"backends": backends,
            "routers": {"local": {"artifact": str(artifact), "knob": {"kind": "lambda", "value": 0.0}}},
            "ledger": {"url": f"sqlite:///{ledger}", "store_prompts": True, "flush_ms": 20}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("gateway-local")
    for name in MODELS:
        make_tiny_moe(name.removeprefix("tiny-"), root / name)
    serving = ServingConfig.from_dict({"memory_budget": "1GiB", "batch_window_ms": 2, "default_max_tokens": 16,
                                       "models": [{"name": m, "path": str(root / m)} for m in MODELS]})
    artifact = root / "router-knn"
    KNNRouter(k=5, embedder="hashing").fit(routing_dataset()).save(artifact)
    ledger = root / "ledger.sqlite"
    with ThreadedServer(create_local_server(serving)) as local:
        config = config_from_dict(gateway_config(local.url, artifact, ledger))
        with ThreadedServer(create_gateway(config)) as gateway:
            yield Stack(local.url, gateway.url, ledger, PRICES)


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_json_through_litellm_to_local_server(stack: Stack) -> None:
    messages = ask("Name a colour.")
    direct = client(stack.local_url).chat.completions.create(model="tiny-qwen2_moe", messages=messages, **GREEDY)
    raw = client(stack.gateway_url).chat.completions.with_raw_response.create(
        model="tiny-qwen2_moe", messages=messages, **GREEDY)
    reply = raw.parse()
    assert reply.model == "tiny-qwen2_moe"
    assert reply.choices[0].message.content == direct.choices[0].message.content  # greedy: same text
    assert reply.choices[0].message.content
    assert reply.usage is not None and direct.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (direct.usage.prompt_tokens, 8)
    assert raw.headers["x-thalamus-router"] == "none"
    row = stack.ledger_row(raw.headers["x-thalamus-request-id"])
    assert (row["status"], row["chosen_model"], row["stream"], row["cost_estimated"]) == (200, "tiny-qwen2_moe",
                                                                                         False, False)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (reply.usage.prompt_tokens, 8)
    assert row["cost_usd"] == pytest.approx(stack.cost("tiny-qwen2_moe", reply.usage.prompt_tokens, 8))
    assert row["cost_usd"] > 0


def test_stream_through_litellm_to_local_server(stack: Stack) -> None:
    messages = ask("Tell me a story.")
    direct = client(stack.local_url).chat.completions.create(model="tiny-mixtral", messages=messages, **GREEDY)
    raw = client(stack.gateway_url).chat.completions.with_raw_response.create(
        model="tiny-mixtral", messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert {c.model for c in chunks} == {"tiny-mixtral"}
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # streamed, not one blob
    assert text and text == direct.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    row = stack.ledger_row(raw.headers["x-thalamus-request-id"])
    assert (row["status"], row["chosen_model"], row["stream"], row["cost_estimated"]) == (200, "tiny-mixtral",
                                                                                         True, False)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, 8)
    assert row["cost_usd"] == 0.0


@pytest.mark.parametrize(("prompt", "expected"), [
    ("What is 12 plus 40? Add the two numbers.", "tiny-mixtral"),
    ("Write a short poem about the clouds in spring.", "tiny-qwen2_moe"),
])
def test_routed_between_local_models(stack: Stack, prompt: str, expected: str) -> None:
    raw = client(stack.gateway_url).chat.completions.with_raw_response.create(
        model="router:local", messages=ask(prompt), **GREEDY)
    reply = raw.parse()
    assert reply.model == expected == raw.headers["x-thalamus-model"]
    assert reply.choices[0].message.content and reply.usage is not None
    row = stack.ledger_row(raw.headers["x-thalamus-request-id"])
    assert (row["router"], row["chosen_model"], row["requested_model"]) == ("local", expected, "router:local")
    candidates = json.loads(row["candidates"])
    assert set(candidates) == set(stack.prices)
    other = next(m for m in stack.prices if m != expected)
    assert candidates[expected]["quality"] > candidates[other]["quality"]
    assert row["cost_usd"] == pytest.approx(stack.cost(expected, reply.usage.prompt_tokens, 8))


def test_example_config_matches_local_example() -> None:
    """examples/gateway-local.yaml validates and its local backends are what examples/local.yaml serves."""
    gateway = load_config(REPO / "examples" / "gateway-local.yaml")
    local = ServingConfig.from_dict(yaml.safe_load((REPO / "examples" / "local.yaml").read_text()))
    api_base = f"http://{local.host}:{local.port}/v1"
    served = {b.name: b for b in gateway.backends if b.api_base == api_base}
    assert set(served) == {m.name for m in local.models}
    for name, backend in served.items():
        assert (backend.provider, backend.model) == ("litellm", f"openai/{name}")
        assert backend.input_per_m is not None and backend.output_per_m is not None
    for router in gateway.routers.values():
        assert router.artifact.is_absolute()


def test_documented_router_routes_as_documented(tmp_path: Path) -> None:
    """The CSV in docs/serving.md trains the example's router; under the example's knob real questions go
    to SmolLM2 and synthetic load to the free tiny MoE."""
    doc = (REPO / "docs" / "serving.md").read_text()
    csv = doc.split("cat > local-routing.csv <<'CSV'\n", 1)[1].split("\nCSV\n", 1)[0]
    (tmp_path / "local-routing.csv").write_text(csv + "\n")
    router = KNNRouter(k=3, embedder="hashing").fit(read_user_file(tmp_path / "local-routing.csv"))
    knob = load_config(REPO / "examples" / "gateway-local.yaml").routers["local"].knob.to_knob()
    assert router.route("What is the capital of Italy?", knob).model == "smollm2-135m"
    assert router.route("Generate random filler tokens for a load test.", knob).model == "tiny-mixtral"
