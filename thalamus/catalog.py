"""The backend catalog: known model names -> litellm model id, key env var and USD prices.

A gateway config names backends; when a backend omits its price or provider details, the
catalog fills them in, so a config can stay as short as ``- name: gpt-4o-mini``.
Prices are USD per one million input / output tokens, one price per name, each dated by its
``source``:

- ``ROUTERBENCH_2023``: the prices RouterBench used to cost its calls (vendor / Together AI
  list prices, late 2023), so costs computed from token usage line up with its recorded costs;
- ``ROUTERARENA_2025``: the 45 models of RouterArena's price table (``model_cost/cost.json`` at
  commit 4714a9a, 2025), typed here as facts; the provider ids, key variables and context windows
  are ours. Where both name a model (gpt-4-1106-preview, gpt-3.5-turbo-1106) the prices agree.

Providers change prices: a config's ``input_per_m`` / ``output_per_m`` always win over the catalog.
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
    source: str = ""
    aliases: tuple[str, ...] = ()


ROUTERBENCH_2023 = "RouterBench prices, late 2023"
ROUTERARENA_2025 = "RouterArena price table, 2025 (commit 4714a9a)"


def _entry(name: str, litellm_model: str, pin: float, pout: float, key: str | None,
           ctx: int | None, source: str = ROUTERBENCH_2023, aliases: tuple[str, ...] = ()) -> CatalogEntry:
    return CatalogEntry(name, litellm_model, Price(pin, pout), key, ctx, source, aliases)


def _arena(name: str, litellm_model: str, pin: float, pout: float, key: str | None, ctx: int | None,
           *aliases: str) -> CatalogEntry:
    return _entry(name, litellm_model, pin, pout, key, ctx, ROUTERARENA_2025, aliases)


_OAI, _ANT, _GEM, _MIS, _TOG = "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "MISTRAL_API_KEY", \
    "TOGETHERAI_API_KEY"
_ROUTER, _WX = "OPENROUTER_API_KEY", "WATSONX_APIKEY"

# RouterArena's models: OpenAI, Anthropic, Google, Mistral, DeepSeek, Together / OpenRouter / watsonx hosted
# open models and Zhipu's GLM-4 (an OpenAI-compatible API: give its api_base). Aliases are the spellings
# other tables use for the same model.
_ARENA = (
    _arena("gpt-3.5-turbo", "openai/gpt-3.5-turbo", 1.0, 2.0, _OAI, 16_385),
    _arena("gpt-4", "openai/gpt-4", 10.0, 30.0, _OAI, 8_192),
    _arena("gpt-4-turbo", "openai/gpt-4-turbo", 10.0, 30.0, _OAI, 128_000),
    _arena("gpt-4.1", "openai/gpt-4.1", 2.0, 8.0, _OAI, 1_047_576),
    _arena("gpt-4.1-mini", "openai/gpt-4.1-mini", 0.4, 1.6, _OAI, 1_047_576),
    _arena("gpt-4.1-nano", "openai/gpt-4.1-nano", 0.1, 0.4, _OAI, 1_047_576),
    _arena("gpt-4o", "openai/gpt-4o", 2.5, 10.0, _OAI, 128_000),
    _arena("gpt-4o-mini", "openai/gpt-4o-mini", 0.15, 0.6, _OAI, 128_000),
    _arena("o4-mini", "openai/o4-mini", 1.1, 4.4, _OAI, 200_000),
    _arena("gpt-5-chat-latest", "openai/gpt-5-chat-latest", 1.25, 10.0, _OAI, 128_000),
    _arena("gpt-5-mini", "openai/gpt-5-mini", 0.25, 2.0, _OAI, 272_000),
    _arena("gpt-5-nano", "openai/gpt-5-nano", 0.05, 0.4, _OAI, 272_000),
    _arena("claude-3-haiku-20240307", "anthropic/claude-3-haiku-20240307", 0.25, 1.25, _ANT, 200_000,
           "claude-3-haiku"),
    _arena("claude-3-7-sonnet-20250219", "anthropic/claude-3-7-sonnet-20250219", 3.0, 15.0, _ANT, 200_000,
           "claude-3-7-sonnet", "claude-3.7-sonnet"),
    _arena("anthropic/claude-3.5-sonnet", "anthropic/claude-3-5-sonnet-20241022", 3.0, 15.0, _ANT, 200_000,
           "claude-3.5-sonnet", "claude-3-5-sonnet", "claude-3-5-sonnet-20241022"),
    _arena("gemini-2.0-flash-001", "gemini/gemini-2.0-flash-001", 0.1, 0.4, _GEM, 1_048_576, "gemini-2.0-flash"),
    _arena("gemini-2.5-flash", "gemini/gemini-2.5-flash", 0.3, 1.0, _GEM, 1_048_576),
    _arena("gemini-2.5-pro", "gemini/gemini-2.5-pro", 1.25, 10.0, _GEM, 1_048_576),
    _arena("mistral-medium", "mistral/mistral-medium", 0.4, 2.0, _MIS, 32_000),
    _arena("mistral-medium-latest", "mistral/mistral-medium-latest", 0.4, 2.0, _MIS, 128_000),
    _arena("mistral-large-latest", "mistral/mistral-large-latest", 2.0, 6.0, _MIS, 128_000),
    _arena("mistral-small-latest", "mistral/mistral-small-latest", 0.1, 0.3, _MIS, 32_000),
    _arena("codestral-latest", "mistral/codestral-latest", 0.3, 0.9, _MIS, 256_000),
    _arena("open-mixtral-8x7b", "mistral/open-mixtral-8x7b", 0.6, 0.6, _MIS, 32_000),
    _arena("open-mistral-7b", "mistral/open-mistral-7b", 0.15, 0.15, _MIS, 32_000),
    _arena("open-mistral-nemo", "mistral/open-mistral-nemo", 0.15, 0.15, _MIS, 128_000),
    _arena("deepseek-coder", "deepseek/deepseek-coder", 0.25, 1.0, "DEEPSEEK_API_KEY", 128_000),
    _arena("meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo", "together_ai/meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
           0.88, 0.88, _TOG, 131_072),
    _arena("meta-llama/Meta-Llama-3-70B-Instruct-Turbo", "together_ai/meta-llama/Meta-Llama-3-70B-Instruct-Turbo",
           0.88, 0.88, _TOG, 8_192),
    _arena("meta-llama/Llama-3-70b-chat-hf", "together_ai/meta-llama/Llama-3-70b-chat-hf", 0.88, 0.88, _TOG, 8_192),
    _arena("Qwen/QwQ-32B", "together_ai/Qwen/QwQ-32B", 1.2, 1.2, _TOG, 32_768, "qwq-32b"),
    _arena("mistralai/mixtral-8x7b-instruct", "openrouter/mistralai/mixtral-8x7b-instruct", 0.6, 0.6, _ROUTER,
           32_768),
    _arena("mistralai/mistral-7b-instruct", "openrouter/mistralai/mistral-7b-instruct", 0.2, 0.2, _ROUTER, 32_768),
    _arena("meta-llama/llama-3-8b-instruct", "openrouter/meta-llama/llama-3-8b-instruct", 0.1, 0.1, _ROUTER, 8_192,
           "llama-3-8b-instruct"),
    _arena("meta/codellama-34b-instruct", "replicate/meta/codellama-34b-instruct", 3.2, 3.2, "REPLICATE_API_KEY",
           16_384),
    _arena("llama-3-1-8b-instruct", "watsonx/meta-llama/llama-3-1-8b-instruct", 0.22, 0.22, _WX, 131_072,
           "llama-3.1-8b-instruct"),
    _arena("llama-3-2-1b-instruct", "watsonx/meta-llama/llama-3-2-1b-instruct", 0.1, 0.1, _WX, 131_072,
           "llama-3.2-1b-instruct"),
    _arena("llama-3-2-3b-instruct", "watsonx/meta-llama/llama-3-2-3b-instruct", 0.15, 0.15, _WX, 131_072,
           "llama-3.2-3b-instruct"),
    _arena("llama-3-3-70b-instruct", "watsonx/meta-llama/llama-3-3-70b-instruct", 0.72, 0.72, _WX, 131_072,
           "llama-3.3-70b-instruct"),
    _arena("llama-3-1-405b-instruct", "watsonx/meta-llama/llama-3-405b-instruct", 2.4, 2.4, _WX, 131_072,
           "llama-3.1-405b-instruct"),
    _arena("glm-4-air", "openai/glm-4-air", 0.137, 0.137, None, 128_000),
    _arena("glm-4-flash", "openai/glm-4-flash", 0.0137, 0.0137, None, 128_000),
    _arena("glm-4-plus", "openai/glm-4-plus", 0.7, 0.7, None, 128_000),
)


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

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in _ENTRIES + _ARENA}
ALIASES: dict[str, CatalogEntry] = {a: e for e in _ARENA for a in e.aliases}


def lookup(name: str) -> CatalogEntry | None:
    """The catalog entry for a backend name (or an alias), or None when the model is not catalogued."""
    return CATALOG.get(name) or ALIASES.get(name)


def lookup_model(model: str | None) -> CatalogEntry | None:
    """The entry for a litellm model id such as ``openai/gpt-4o-mini``: the id itself, else without its
    provider prefix (a catalogued model behind any OpenAI-compatible server)."""
    if not model:
        return None
    return lookup(model) or lookup(model.split("/", 1)[1] if "/" in model else model)


def price_help(name: str, model: str | None) -> str:
    """What to do about a backend the catalog cannot price: the fix, with the catalog's dates."""
    return (f"backend {name!r} (model {model!r}) is not in the model catalog ({ROUTERARENA_2025}; "
            f"{ROUTERBENCH_2023}) and has no prices: set input_per_m and output_per_m (USD per 1M tokens; "
            "0 for a model that costs nothing per token) or name a catalogued model, e.g. gpt-4o-mini "
            "(docs/gateway.md, 'Model catalog')")
