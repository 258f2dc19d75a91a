"""Backend variants: ``mid`` declared with a variant ``high`` is also the candidate ``mid@high``, routed by a
router that knows it, sent with its default parameters and system prompt (a request's own fields win),
billed at its own prices and named on the ledger row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pandas as pd
import pytest
from gwhelpers import base_config, row_for

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.baselines import BestSingleRouter

VARIANT = {"params": {"reasoning_effort": "high", "max_tokens": 64}, "system": "Think step by step.",
           "input_per_m": 3.0, "output_per_m": 12.0}


@pytest.fixture(scope="module")
def variant_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A router whose best model is the variant mid@high (its own profile, as onboarding would give it)."""
    models, n = ["strong", "mid", "mid@high"], 30
    quality = np.tile([0.8, 0.6, 0.9], (n, 1))
    ds = RoutingDataset(name="variants", prompts=pd.DataFrame({"text": [f"Question {i}?" for i in range(n)]}),
                        models=models, quality=quality, cost=np.tile([0.01, 0.001, 0.003], (n, 1)))
    out = tmp_path_factory.mktemp("variant-router") / "best"
    BestSingleRouter().fit(ds).save(out)
    return out


@pytest.fixture
def variant_gateway(replay: ThreadedServer, variant_artifact: Path, tmp_path: Path) -> Iterator[ThreadedServer]:
    ledger = tmp_path / "ledger.sqlite"
    config = base_config(replay.url, variant_artifact, ledger, provider="openai-compatible")
    config["routers"]["best"]["strong"] = config["routers"]["best"]["weak"] = None
    for entry in config["backends"]:
        if entry["name"] == "mid":
            entry["variants"] = {"high": VARIANT}
    with ThreadedServer(create_app(config_from_dict(config))) as server:
        server.ledger_path = ledger  # type: ignore[attr-defined]
        yield server


def upstream_body(replay: ThreadedServer) -> dict[str, Any]:
    app: Any = replay.server.config.app
    return dict(app.state.replay.requests[-1])


def test_variant_is_routed_sent_billed_and_logged(variant_gateway: ThreadedServer, replay: ThreadedServer) -> None:
    sdk = openai.OpenAI(base_url=variant_gateway.url + "/v1", api_key="unused", max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="router:best", messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert raw.headers["x-thalamus-model"] == "mid@high" and raw.parse().model == "mid@high"
    sent = upstream_body(replay)
    assert sent["model"] == "mid" and sent["reasoning_effort"] == "high" and sent["max_tokens"] == 64
    assert sent["messages"][0] == {"role": "system", "content": "Think step by step."}
    ledger: Path = variant_gateway.ledger_path  # type: ignore[attr-defined]
    row = row_for(ledger, raw.headers["x-thalamus-request-id"])
    assert (row["chosen_model"], row["variant"]) == ("mid@high", "high")
    assert (row["price_input_per_m"], row["price_output_per_m"]) == (3.0, 12.0)
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 3.0 + row["completion_tokens"] * 12.0) / 1e6)
    # the request's own parameters and system prompt win over the variant's
    explicit = sdk.chat.completions.with_raw_response.create(
        model="mid@high", max_tokens=5, reasoning_effort="low",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2 + 2?"}])
    sent = upstream_body(replay)
    assert explicit.headers["x-thalamus-model"] == "mid@high"
    assert (sent["max_tokens"], sent["reasoning_effort"]) == (5, "low")
    assert [m["content"] for m in sent["messages"] if m["role"] == "system"] == ["Be terse."]
    # the plain backend stays as it was
    sdk.chat.completions.create(model="mid", messages=[{"role": "user", "content": "What is 2 + 2?"}])
    sent = upstream_body(replay)
    assert "reasoning_effort" not in sent and sent["messages"][0]["role"] == "user"


def test_variant_names_are_checked() -> None:
    from thalamus.errors import ConfigError

    backend = {"name": "m", "model": "openai/m", "api_base": "http://127.0.0.1:9/v1", "input_per_m": 0.0,
               "output_per_m": 0.0}  # an uncatalogued model needs its prices
    with pytest.raises(ConfigError, match="variant name 'a@b'"):
        config_from_dict({"backends": [backend | {"variants": {"a@b": {}}}]})
    with pytest.raises(ConfigError, match="duplicate backend names"):
        config_from_dict({"backends": [backend | {"variants": {"x": {}}}, backend | {"name": "m@x"}]})
    cfg = config_from_dict({"backends": [backend | {"input_per_m": 1.0, "variants": {"x": {"output_per_m": 5.0}}}]})
    assert [(b.name, b.variant, b.input_per_m, b.output_per_m) for b in cfg.backends] == [
        ("m", None, 1.0, 0.0), ("m@x", "x", 1.0, 5.0)]
