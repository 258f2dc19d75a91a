"""serve-local's machine defaults (float32, threads = usable cores) answer greedily token for token like
float32 on one thread, on the prompts of the SmolLM2 tests."""

from __future__ import annotations

import pytest
from openai import OpenAI
from servehelpers import ask, serve_app

from thalamus.serving.app import create_app
from thalamus.serving.config import ServingConfig
from thalamus.serving.machine import usable_cores

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "What is the capital of Italy?", "Say hello.", "Name a colour."]


def _answers(overrides: dict[str, object]) -> tuple[list[tuple[str, int]], int]:
    config = ServingConfig.from_dict({"models": [{"name": "smollm2", "source": "smollm2"}], **overrides})
    app = create_app(config)
    with serve_app(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        out = []
        for prompt in PROMPTS:
            reply = client.chat.completions.create(model="smollm2", messages=ask(prompt), max_tokens=24,
                                                   temperature=0)
            assert reply.usage is not None
            out.append((reply.choices[0].message.content or "", reply.usage.completion_tokens))
        return out, app.state.serving.pool.loaded["smollm2"].worker.torch_threads


def test_new_defaults_match_float32_one_thread() -> None:
    reference, one = _answers({"default_dtype": "float32", "torch_threads": 1})
    defaults, threads = _answers({})
    assert one == 1 and threads == usable_cores()
    assert defaults == reference
    assert "Paris" in defaults[0][0]
