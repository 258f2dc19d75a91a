"""The model catalog: today's models need no prices in a config; a model it cannot price is an error that
names the backend, the model and the fix."""

from __future__ import annotations

import pytest

from thalamus.catalog import ALIASES, CATALOG, ROUTERARENA_2025, ROUTERBENCH_2023, lookup
from thalamus.errors import ConfigError
from thalamus.gateway.config import config_from_dict


def _backends(*entries: dict[str, object]) -> list[tuple[str | None, str | None, float | None, float | None]]:
    cfg = config_from_dict({"backends": list(entries)}, "team.yaml")
    return [(b.model, b.api_key_env, b.input_per_m, b.output_per_m) for b in cfg.backends]


def test_todays_models_by_name_need_no_prices() -> None:
    assert _backends({"name": "gpt-4o-mini"}, {"name": "gpt-4o"}, {"name": "claude-3-5-sonnet"},
                     {"name": "llama-3.1-8b-instruct"}, {"name": "gemini-2.5-flash"}) == [
        ("openai/gpt-4o-mini", "OPENAI_API_KEY", 0.15, 0.6),
        ("openai/gpt-4o", "OPENAI_API_KEY", 2.5, 10.0),
        ("anthropic/claude-3-5-sonnet-20241022", "ANTHROPIC_API_KEY", 3.0, 15.0),
        ("watsonx/meta-llama/llama-3-1-8b-instruct", "WATSONX_APIKEY", 0.22, 0.22),
        ("gemini/gemini-2.5-flash", "GEMINI_API_KEY", 0.3, 1.0),
    ]
    assert config_from_dict({"backends": [{"name": "gpt-4o-mini"}]}).backends[0].context_window == 128_000


def test_a_catalogued_model_behind_any_name_or_server_gets_its_price_and_config_prices_win() -> None:
    own: dict[str, object] = {"name": "fast", "model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1"}
    assert _backends(own, {"name": "gpt-4o", "input_per_m": 1.25, "output_per_m": 5.0}) == [
        ("openai/gpt-4o-mini", None, 0.15, 0.6),  # behind an api_base: no provider key
        ("openai/gpt-4o", "OPENAI_API_KEY", 1.25, 5.0),
    ]


@pytest.mark.parametrize("backend", [{"name": "team-llm", "model": "openai/team-llm", "api_base": "http://h/v1"},
                                     {"name": "team-llm", "model": "openai/team-llm", "input_per_m": 0.5}])
def test_an_unknown_model_without_prices_is_an_error_naming_it_and_the_fix(backend: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"backends": [backend]}, "team.yaml")
    message = str(info.value)
    assert message.startswith("team.yaml: backends[0]: ")
    assert "backend 'team-llm' (model 'openai/team-llm') is not in the model catalog" in message
    assert "set input_per_m and output_per_m" in message and "2025" in message
    free = config_from_dict({"backends": [backend | {"input_per_m": 0, "output_per_m": 0}]}).backends[0]
    assert (free.input_per_m, free.output_per_m) == (0, 0)  # a free local model says so


def test_one_dated_price_per_name() -> None:
    assert len([e for e in CATALOG.values() if e.source == ROUTERARENA_2025]) == 43  # + 2 shared with RouterBench
    assert {e.source for e in CATALOG.values()} == {ROUTERARENA_2025, ROUTERBENCH_2023}
    assert not set(ALIASES) & set(CATALOG)  # an alias never shadows a name with another price
    gpt4 = lookup("gpt-4-1106-preview")
    assert gpt4 is not None and (gpt4.price.input_per_m, gpt4.price.output_per_m, gpt4.source) == (
        10.0, 30.0, ROUTERBENCH_2023)
