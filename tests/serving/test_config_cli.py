"""Serving config parsing (sizes, errors naming the key) and the make-tiny-moe command."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.config import REPO_ROOT
from thalamus.errors import ConfigError
from thalamus.serving.config import ServingConfig, parse_bytes
from thalamus.serving.moe import moe_info


def test_parse_bytes() -> None:
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("1.5 GB") == 1_500_000_000
    assert parse_bytes(1024) == 1024
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


def test_example_config_loads() -> None:
    config = ServingConfig.from_yaml(REPO_ROOT / "examples" / "local.yaml")
    assert config.memory_budget == 2 * 2**30
    assert [m.name for m in config.models] == ["smollm2-135m", "tiny-mixtral", "tiny-mixtral-offloaded"]
    assert config.models[1].path is not None and "~" not in str(config.models[1].path)
    offload = config.models[2].offload
    assert offload is not None and (offload.experts_resident, offload.policy) == (2, "predict")


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="memory_budget"):
        ServingConfig.from_dict({"memory_budget": "lots", "models": []})
    with pytest.raises(ConfigError, match="exactly one of 'path' or 'source'"):
        ServingConfig.from_dict({"models": [{"name": "x"}]})
    with pytest.raises(ConfigError, match="duplicate"):
        ServingConfig.from_dict({"models": [{"name": "x", "source": "smollm2"}] * 2})


def test_make_tiny_moe_command(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = CliRunner().invoke(build_app(), ["models", "make-tiny-moe", "--arch", "olmoe",
                                              "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    info = moe_info(model)
    assert info is not None and (info.num_experts, info.top_k) == (4, 2)
    assert (tmp_path / "m" / "tokenizer.json").is_file()


def test_make_tiny_moe_rejects_unknown_arch(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["models", "make-tiny-moe", "--arch", "gpt9",
                                              "--out", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "gpt9" in str(result.exception)
