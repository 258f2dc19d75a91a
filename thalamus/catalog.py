"""The backend catalog: known model names -> litellm model id, key env var and USD prices.

A gateway config names backends; when a backend omits its price or provider details, the
catalog fills them in, so a config can stay as short as ``- name: gpt-4-1106-preview``.
Prices are USD per one million input / output tokens. The RouterBench entries use the
prices RouterBench used to cost its calls (vendor / Together AI list prices, late 2023),
so costs computed from token usage line up with the recorded per-call costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from thalamus.datasets.schema import Price


@dataclass(frozen=True)
class CatalogEntry:
    """What Thalamus knows about a model without being told."""

    name: str
    litellm_model: str
    price: Price
    api_key_env: str | None = None
    context_window: int | None = None


def _entry(name: str, litellm_model: str, pin: float, pout: float, key: str | None,
           ctx: int | None) -> CatalogEntry:
    return CatalogEntry(name, litellm_model, Price(pin, pout), key, ctx)


_ENTRIES = (
    _entry("gpt-4-1106-preview", "openai/gpt-4-1106-preview", 10.0, 30.0, "OPENAI_API_KEY", 128_000),
    _entry("gpt-3.5-turbo-1106", "openai/gpt-3.5-turbo-1106", 1.0, 2.0, "OPENAI_API_KEY", 16_385),
    _entry("claude-instant-v1", "anthropic/claude-instant-1.2", 0.8, 2.4, "ANTHROPIC_API_KEY", 100_000),
    _entry("claude-v1", "anthropic/claude-1.3", 8.0, 24.0, "ANTHROPIC_API_KEY", 100_000),
    _entry("claude-v2", "anthropic/claude-2.0", 8.0, 24.0, "ANTHROPIC_API_KEY", 100_000),
    _entry("meta/llama-2-70b-chat", "together_ai/meta-llama/Llama-2-70b-chat-hf", 0.9, 0.9,
           "TOGETHERAI_API_KEY", 4_096),
    _entry("meta/code-llama-instruct-34b-chat", "together_ai/codellama/CodeLlama-34b-Instruct-hf",
           0.776, 0.776, "TOGETHERAI_API_KEY", 16_384),
    _entry("mistralai/mistral-7b-chat", "together_ai/mistralai/Mistral-7B-Instruct-v0.1", 0.2, 0.2,
           "TOGETHERAI_API_KEY", 8_192),
    _entry("mistralai/mixtral-8x7b-chat", "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1", 0.6, 0.6,
           "TOGETHERAI_API_KEY", 32_768),
    _entry("zero-one-ai/Yi-34B-Chat", "together_ai/zero-one-ai/Yi-34B-Chat", 0.8, 0.8,
           "TOGETHERAI_API_KEY", 4_096),
    _entry("WizardLM/WizardLM-13B-V1.2", "together_ai/WizardLM/WizardLM-13B-V1.2", 0.3, 0.3,
           "TOGETHERAI_API_KEY", 4_096),
)

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in _ENTRIES}


def lookup(name: str) -> CatalogEntry | None:
    """The catalog entry for a backend name, or None when the model is not catalogued."""
    return CATALOG.get(name)
