"""``thalamus config check`` runs the checks ``thalamus serve`` runs at start-up (one shared function).

Each config below was passed by ``config check`` and failed at ``serve`` (a 33-line traceback for a MySQL
URL), or was silently accepted by both (a duplicated YAML key).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from gwhelpers import backend, base_config
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.errors import ConfigError
from thalamus.gateway.app import check_startup
from thalamus.gateway.config import config_from_dict, load_config

API = "http://127.0.0.1:9/v1"


def write(tmp_path: Path, config: dict[str, Any], name: str = "thalamus.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def both_commands(path: Path) -> list[str]:
    """The error of ``config check`` and of ``serve`` on the same file (serve fails before it binds)."""
    runner, app = CliRunner(), build_app()
    messages = []
    for args in (["config", "check", str(path)], ["serve", "--config", str(path), "--port", "9"]):
        result = runner.invoke(app, args)
        assert result.exit_code != 0 and isinstance(result.exception, ConfigError), (args, result.output)
        messages.append(str(result.exception))
    assert messages[0] == messages[1]  # the same check, the same words
    return messages


@pytest.fixture
def good(artifact: Path, tmp_path: Path) -> dict[str, Any]:
    return base_config("http://127.0.0.1:9", artifact, tmp_path / "ledger.sqlite")


@pytest.mark.parametrize(("url", "words"), [
    ("mysql://user:secret@db.example/thalamus", ["ledger.url", "not mysql", "sqlite:///", "postgresql+psycopg://"]),
    ("postgresql+psycopg2://user:secret@db.example/thalamus", ["ledger.url", "'psycopg2' is not installed",
                                                               "pip install psycopg2-binary", "postgresql+psycopg://"]),
    ("postgresql+nodriver://db.example/thalamus", ["no driver named 'nodriver'"]),
])
def test_a_ledger_url_that_cannot_work_is_one_line(good: dict[str, Any], tmp_path: Path, url: str,
                                                   words: list[str]) -> None:
    path = write(tmp_path, good | {"ledger": {"url": url}})
    message = both_commands(path)[0]
    assert all(w in message for w in words), message
    assert "secret" not in message and "\n" not in message


def test_serve_exits_with_one_line_not_a_traceback(good: dict[str, Any], tmp_path: Path) -> None:
    path = write(tmp_path, good | {"ledger": {"url": "mysql://user:secret@db.example/thalamus"}})
    cli = "import sys; from thalamus.cli import main; sys.argv = ['thalamus', *sys.argv[1:]]; main()"
    done = subprocess.run([sys.executable, "-c", cli, "serve", "--config", str(path), "--port", "9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "ledger.url" in done.stderr and "not mysql" in done.stderr


def test_router_models_that_match_no_backend(good: dict[str, Any], tmp_path: Path) -> None:
    config = good | {"backends": [backend("gpt-a", "strong", API), backend("gpt-b", "weak", API)], "fallback": {}}
    config["routers"]["best"].pop("strong")
    config["routers"]["best"].pop("weak")
    message = both_commands(write(tmp_path, config))[0]
    assert "routers.best: none of the router's models (strong, mid, weak) is a backend" in message
    assert "(backends: gpt-a, gpt-b)" in message and "name a backend after one of the router's models" in message


def test_router_models_partly_unserved_is_a_warning(good: dict[str, Any], tmp_path: Path) -> None:
    config = good | {"backends": [backend(m, m, API) for m in ("strong", "weak")]}  # no 'mid'
    result = CliRunner().invoke(build_app(), ["config", "check", str(write(tmp_path, config))])
    assert result.exit_code == 0, result.output
    assert "routers.best: the router's models mid have no backend" in result.output and "ok" in result.output


def test_pair_model_not_in_the_router(good: dict[str, Any], tmp_path: Path) -> None:
    good["backends"].append(backend("gpt-9", "strong", API))  # a backend, but the router never learned it
    good["routers"]["best"]["strong"] = "gpt-9"
    message = both_commands(write(tmp_path, good))[0]
    assert "routers.best.strong: 'gpt-9' is not one of the router's models; use one of: strong, mid, weak" in message


def test_an_artifact_that_does_not_load(good: dict[str, Any], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "router.json").write_text("{not json")
    good["routers"]["best"]["artifact"] = str(broken)
    message = both_commands(write(tmp_path, good))[0]
    assert f"routers.best.artifact: {broken} does not load" in message and "train the router again" in message
    good["routers"]["best"]["artifact"] = str(tmp_path / "nowhere")
    assert "is not a directory" in both_commands(write(tmp_path, good, "b.yaml"))[0]


@pytest.mark.parametrize(("text", "words"), [
    ("backends: []\nserver: {port: 1}\nbackends: []\n", ["line 3", "'backends'", "first on line 1"]),
    ("backends:\n  - name: a\n    model: m\n    timeout: 1\n    timeout: 2\n", ["line 5", "'timeout'", "line 4"]),
])
def test_duplicated_yaml_keys_are_refused(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and all(w in str(error.value) for w in words), error.value
    result = CliRunner().invoke(build_app(), ["config", "check", str(path)])
    assert result.exit_code != 0 and "appears twice" in str(result.exception)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("backends:\n  - &base {name: a, model: openai/m, timeout: 5, input_per_m: 0, output_per_m: 0}\n"
                    "  - <<: *base\n    name: b\n    timeout: 7\n")
    assert [b.first_byte_s for b in load_config(path).backends] == [5, 7]


def test_a_good_config_passes_both(good: dict[str, Any], tmp_path: Path) -> None:
    startup = check_startup(config_from_dict(good))
    assert list(startup.routers) == ["best"] and startup.warnings == []
    result = CliRunner().invoke(build_app(), ["config", "check", str(write(tmp_path, good))])
    assert result.exit_code == 0 and "ok" in result.output, result.output
    json.dumps(good)  # the fixture stays plain data


def test_yaml_as_the_docs_write_it_for_priors_and_exploration(tmp_path: Path) -> None:
    """``prior: {tier: 0.9}`` (a YAML number) is a quantile prior as documented; ``explore`` without a value is
    thompson's posterior as estimated, and an error for epsilon and softmax (a default of 1.0 would explore
    every request)."""
    path = tmp_path / "own.yaml"
    path.write_text("backends:\n  - {name: a, model: openai/m, input_per_m: 0, output_per_m: 0, prior: {tier: 0.9}}\n"
                    "  - {name: b, model: openai/n, input_per_m: 0, output_per_m: 0, prior: {tier: top}}\n")
    assert [b.prior.spec() for b in load_config(path).backends if b.prior] == ["tier:0.9", "tier:top"]
    router = {"artifact": str(tmp_path)}
    backends = [{"name": "a", "model": "openai/m", "input_per_m": 0, "output_per_m": 0}]
    config = config_from_dict({"backends": backends, "routers": {"r": router | {"explore": {"kind": "thompson"}}}})
    assert config.routers["r"].explore is not None and config.routers["r"].explore.value == 1.0
    for kind in ("epsilon", "softmax"):
        with pytest.raises(ConfigError, match=f"explore kind '{kind}' needs a 'value'"):
            config_from_dict({"backends": backends, "routers": {"r": router | {"explore": {"kind": kind}}}})
