"""The MoE trainer on a tiny config: it learns, checkpoints, resumes, stops cleanly on SIGTERM, and the
folder it writes serves as-is through the local server (``path:``), expert telemetry included."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from openai import OpenAI
from servehelpers import ask, serve
from typer.testing import CliRunner

from thalamus.cli import build_app
from thalamus.serving.config import ServingConfig
from thalamus.training.moe_lm import STATE_FILE, SUMMARY_FILE, MoeTrainOptions, train_moe


def tiny(out: Path, **overrides: object) -> MoeTrainOptions:
    values: dict[str, object] = dict(out=out, minutes=10, max_steps=12, layers=2, experts=8, top_k=2,
                                     hidden=64, intermediate=128, vocab_size=512, seq_len=32, batch_size=4,
                                     lr=5e-3, warmup_steps=1, datasets=("alpaca_eval",), max_prompts=300)
    values.update(overrides)
    return MoeTrainOptions(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("moe") / "trained"
    return out, train_moe(tiny(out), progress=False)


def test_trainer_learns_and_saves_a_folder(trained: tuple[Path, dict[str, object]]) -> None:
    out, summary = trained
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 32 * 4
    losses = summary["losses"]
    assert isinstance(losses, list) and [row[0] for row in losses] == list(range(1, 13))
    first, last = float(losses[0][1]), float(losses[-1][1])
    assert abs(first - math.log(512)) < 0.5  # an untrained model is near-uniform over the vocabulary
    assert last < first - 0.5
    assert all(row[2] >= 1.0 for row in losses)  # Mixtral's balance loss: top_k x (>= 1 when balanced)
    for name in ("config.json", "model.safetensors", "tokenizer.json", SUMMARY_FILE, STATE_FILE):
        assert (out / name).is_file(), name
    assert not (out / ".partial").exists()


def test_saved_folder_serves_with_expert_load(trained: tuple[Path, dict[str, object]]) -> None:
    out, _ = trained
    config = ServingConfig.from_dict({"memory_budget": "256MiB", "default_max_tokens": 4,
                                      "models": [{"name": "moe-trained", "path": str(out)}]})
    with serve(config) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="moe-trained", messages=ask("What is 2 + 2?"),
                                               max_tokens=4, temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    load = (reply.model_extra or {})["thalamus"]["expert_load"]
    assert (load["num_experts"], load["top_k"], len(load["layers"])) == (8, 2, 2)
    assert all(sum(layer) == load["tokens"] * 2 for layer in load["layers"])


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "m"
    first = train_moe(tiny(out, max_steps=3), progress=False)
    resumed = train_moe(tiny(out, max_steps=5), progress=False)
    assert resumed["steps"] == 5
    losses = resumed["losses"]
    assert isinstance(losses, list) and losses[:3] == first["losses"] and len(losses) == 5


def test_sigterm_stops_with_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m"

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while not (out / STATE_FILE).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    summary = train_moe(tiny(out, max_steps=10_000, checkpoint_seconds=0.0), progress=False)
    killer.join(timeout=5)
    steps = summary["steps"]
    assert isinstance(steps, int) and 1 <= steps < 10_000
    resumed = train_moe(tiny(out, max_steps=steps + 1), progress=False)
    assert resumed["steps"] == steps + 1  # the checkpoint written on SIGTERM is where it resumed


def test_train_moe_command(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from thalamus.serving.moe import moe_info

    out = tmp_path / "cli"
    result = CliRunner().invoke(build_app(), ["train-moe", "--out", str(out), "--max-steps", "2", "--layers", "1",
                                              "--experts", "4", "--hidden", "32", "--vocab-size", "400",
                                              "--dataset", "alpaca_eval"])
    assert result.exit_code == 0, result.output
    assert '"steps": 2' in result.output and str(out) in result.output
    info = moe_info(AutoModelForCausalLM.from_pretrained(out))
    assert info is not None and (info.num_experts, info.top_k) == (4, 2)
