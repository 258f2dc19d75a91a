"""Named routing policies end to end: a prompt like a policy's description goes to the policy's models (the
knob choosing among them), others to the learned router; the decision and the row name the policy; the
calibrated threshold keeps a policy's description from matching another policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gwhelpers import backend, base_config, row_for, synthetic_dataset

from thalamus.gateway.app import create_app
from thalamus.gateway.config import PolicyConfig, config_from_dict
from thalamus.gateway.learning.policies import PolicyMatcher
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.baselines import BestSingleRouter
from thalamus.router.embedders import get_embedder

POLICIES = [
    {"name": "code", "description": "Write, explain or fix program code: Python, JavaScript, SQL functions and bugs.",
     "examples": ["Write a Python function that reverses a string.", "Fix the bug in this JavaScript loop."],
     "models": ["mid", "weak"]},
    {"name": "legal", "description": "Legal questions about contracts, liability, court cases and the law.",
     "examples": ["Is a verbal contract legally binding?"], "models": ["counsel"]},
]


def test_calibrated_thresholds_separate_the_policies() -> None:
    matcher = PolicyMatcher([PolicyConfig.model_validate(p) for p in POLICIES], get_embedder("hashing"))
    own = matcher.similarities(get_embedder("hashing").embed([POLICIES[1]["description"]]))[0]  # type: ignore[list-item]
    assert own[1] >= matcher.thresholds[1] and own[0] < matcher.thresholds[0]
    assert (matcher.thresholds >= 0.2).all()
    assert matcher.match("Write a Python function that sorts a list of numbers.").name == "code"  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def policy_gateway(replay: ThreadedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    tmp = tmp_path_factory.mktemp("policies")
    artifact = tmp / "best"
    BestSingleRouter(embedder="hashing").fit(synthetic_dataset()).save(artifact)
    ledger = tmp / "ledger.sqlite"
    config = base_config(replay.url, artifact, ledger)
    config["backends"].append(backend("counsel", "mid", replay.url + "/v1"))
    config["routers"]["best"]["policies"] = POLICIES
    with ThreadedServer(create_app(config_from_dict(config))) as server:
        server.ledger_path = ledger  # type: ignore[attr-defined]
        yield server


def test_policies_route_before_the_knob(policy_gateway: ThreadedServer) -> None:
    sdk = openai.OpenAI(base_url=policy_gateway.url + "/v1", api_key="unused", max_retries=0)
    ledger: Path = policy_gateway.ledger_path  # type: ignore[attr-defined]

    def ask(text: str) -> tuple[str, dict[str, object]]:
        raw = sdk.chat.completions.with_raw_response.create(model="router:best",
                                                            messages=[{"role": "user", "content": text}])
        return raw.headers["x-thalamus-model"], row_for(ledger, raw.headers["x-thalamus-request-id"])

    plain, row = ask("What is the capital of France?")
    assert plain == "strong" and row["policy"] is None  # lambda 0: the router's best model
    code, row = ask("Write a Python function that sorts a list of numbers.")
    assert code == "mid" and row["policy"] == "code"  # the knob's best among the policy's models
    legal, row = ask("Can my landlord break the lease contract? What does the law say about liability?")
    assert legal == "counsel" and row["policy"] == "legal"  # a model the router does not score


def test_a_policy_stays_within_the_request_and_the_routellm_form(policy_gateway: ThreadedServer) -> None:
    sdk = openai.OpenAI(base_url=policy_gateway.url + "/v1", api_key="unused", max_retries=0)
    legal = "Can my landlord break the lease contract? What does the law say about liability?"
    code = "Write a Python function that sorts a list of numbers."
    # the client excluded the legal policy's model: the router's decision stands
    raw = sdk.chat.completions.with_raw_response.create(
        model="router:best", messages=[{"role": "user", "content": legal}],
        extra_body={"routing": {"excluded": ["counsel"]}})
    assert raw.headers["x-thalamus-model"] == "strong"
    # RouteLLM's threshold form (strong vs weak): the code policy leaves only weak of the pair
    raw = sdk.chat.completions.with_raw_response.create(model="router-best-0.0",
                                                        messages=[{"role": "user", "content": code}])
    assert raw.headers["x-thalamus-model"] == "weak"
