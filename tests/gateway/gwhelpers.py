"""Helpers shared by the gateway tests: a synthetic dataset, configs, ledger polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.ledger import Ledger

GatewayFactory = Callable[..., ThreadedServer]  # the make_gateway fixture's type

MODELS = ["strong", "mid", "weak"]
PRICES = {"strong": (10.0, 30.0), "mid": (1.0, 2.0), "weak": (0.1, 0.2)}


def synthetic_dataset(n: int = 60) -> RoutingDataset:
    """Three models with a clear trade-off; every response recorded."""
    rng = np.random.default_rng(0)
    texts = [f"Question {i}: what is {i} plus {i * 7 % 13}?" for i in range(n)]
    quality = np.stack([rng.random(n) < 0.9, rng.random(n) < 0.7, rng.random(n) < 0.4], axis=1).astype(float)
    cost = np.tile([0.01, 0.001, 0.0001], (n, 1))
    responses = np.array([[f"{m} says the answer to question {i} is {2 * i}." for m in MODELS]
                          for i in range(n)], dtype=object)
    return RoutingDataset(name="synthetic", prompts=pd.DataFrame({"text": texts}), models=MODELS,
                          quality=quality, cost=cost, responses=responses)


def backend(name: str, upstream: str, api_base: str, **extra: Any) -> dict[str, Any]:
    base = upstream.split("::")[0]
    pin, pout = PRICES.get(base, (1.0, 1.0))
    return {"name": name, "model": f"openai/{upstream}", "api_base": api_base, "input_per_m": pin,
            "output_per_m": pout, "timeout": 2.0, "max_retries": 1} | extra


def base_config(replay_url: str, artifact: Path, ledger_path: Path, faults: dict[str, str] | None = None,
                provider: str = "litellm", **overrides: Any) -> dict[str, Any]:
    """Three routable backends (``faults`` appends a replay fault suffix to some) plus faulty ones,
    all on ``provider``."""
    api = replay_url + "/v1"
    faults = faults or {}
    config: dict[str, Any] = {
        "backends": [backend(m, m + (f"::{faults[m]}" if m in faults else ""), api,
                             timeout=0.3 if faults.get(m) == "hang" else 2.0, provider=provider) for m in MODELS] + [
            backend("broken", "strong::503", api),
            backend("flaky", "mid::503x1", api),
            backend("hanging", "weak::hang", api, timeout=0.3, max_retries=0),
            backend("dropping", "weak::drop", api),
            backend("short-context", "weak::ctx", api),
            backend("rejecting", "weak::400", api),
        ],
        "routers": {"best": {"artifact": str(artifact), "aliases": ["auto"],
                             "knob": {"kind": "lambda", "value": 0.0}, "strong": "strong", "weak": "weak"}},
        "fallback": {"backoff_s": 0.01, "context_model": "strong"},
        "ledger": {"url": f"sqlite:///{ledger_path}", "store_prompts": True, "flush_ms": 20},
        "server": {"max_body_bytes": 200_000},
    }
    for entry in config["backends"]:
        entry["provider"] = provider
        if entry["name"] not in MODELS:  # fallback and passthrough targets: a profile router does not take them on
            entry["adopt"] = False
    config.update(overrides)
    return config


def ledger_rows(path: Path, expected: int, timeout: float = 10.0) -> pd.DataFrame:
    """The ledger's rows once at least ``expected`` are written (the writer batches)."""
    ledger = Ledger(f"sqlite:///{path}")
    deadline = time.monotonic() + timeout
    try:
        while ledger.count() < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return ledger.recent(limit=100_000)
    finally:
        ledger.close()


def row_for(path: Path, request_id: str) -> dict[str, Any]:
    """The ledger row of one request, waiting for the batched writer."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        df = ledger_rows(path, 0)
        hit = df[df["id"] == request_id]
        if len(hit):
            return {k: (None if isinstance(v, float) and v != v else v) for k, v in dict(hit.iloc[0]).items()}
        time.sleep(0.02)
    raise AssertionError(f"no ledger row for {request_id}")
