"""Helpers of the serving tests: tiny model folders, a real uvicorn server on loopback, configs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from thalamus.serving.app import create_app
from thalamus.serving.config import ServingConfig
from thalamus.serving.models import TINY_MOE_ARCHS, smollm2_tokenizer


def make_broken(out: Path) -> None:
    """A dense model whose embedding table is smaller than its tokenizer: every forward pass fails."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


PARTIAL_VOCAB = 40_000  # SmolLM2's chat template and common words stay below this id


def make_partial_vocab(out: Path) -> str:
    """A dense model knowing only the first PARTIAL_VOCAB of its tokenizer's ids; returns a poison word.

    Prompts of common words generate normally; a prompt holding the poison word (a token id past the
    embedding table) fails in the forward pass, at generation time, where no request validation sees it.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    tokenizer = smollm2_tokenizer()
    eos = int(tokenizer.eos_token_id)
    config = LlamaConfig(vocab_size=PARTIAL_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=eos, pad_token_id=eos, bos_token_id=int(tokenizer.bos_token_id or eos))
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(tokenizer.decode([len(tokenizer) - 100]))


def tiny_config(tiny_dir: Path, **overrides: Any) -> ServingConfig:
    models = [{"name": f"tiny-{arch}", "path": str(tiny_dir / f"tiny-{arch}")} for arch in TINY_MOE_ARCHS]
    models.append({"name": "broken", "path": str(tiny_dir / "broken")})
    raw: dict[str, Any] = {"memory_budget": "1GiB", "batch_window_ms": 30, "max_batch_size": 8,
                           "default_max_tokens": 16, "models": models}
    raw.update(overrides)
    return ServingConfig.from_dict(raw)


def serve(config: ServingConfig) -> contextlib.AbstractContextManager[str]:
    """Run the real app for ``config`` under uvicorn on loopback; yield its base URL."""
    return serve_app(create_app(config))


@contextlib.contextmanager
def serve_app(app: FastAPI, log_level: str = "warning") -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (ephemeral port) in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("local server did not start within 30 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def post_raw(url: str, body: bytes, timeout: float = 60) -> httpx.Response:
    """POST bytes as JSON: the JSON may hold what httpx's own encoder refuses (NaN, lone surrogates)."""
    return httpx.post(f"{url}/v1/chat/completions", content=body, timeout=timeout,
                      headers={"content-type": "application/json"})


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``, from Prometheus text."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())
