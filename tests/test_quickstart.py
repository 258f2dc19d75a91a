"""The README's "Route among your own models" quickstart, run as written (with fewer probes and requests).

The config, the replay server's ``--as`` names and the list of onboarded models are read from the README's
code block, so the test fails when the README drifts from what works. Every step is the real command in a
subprocess: the replay upstream and the gateway on loopback ports, ``train cluster``, ``onboard`` with the
judge grader for each model, ``serve``, then requests through the real ``openai`` SDK; the ledger must show
routed traffic to the onboarded models only, explored requests (propensity < 1) and one judge feedback row
per answer. One deviation: ``train`` uses the ``hashing`` embedder, because MiniLM embeds the 3,162 training
prompts at 4-50 prompts/s on a loaded 2-core machine from a cold cache (1-13 minutes); the loop under test is
the same for every embedder.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from thalamus.cli import main; sys.argv[0] = 'thalamus'; main()"
PROBES = 6
REQUESTS = 40

pytestmark = pytest.mark.slow


def quickstart_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Route among your own models", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def thalamus(*args: str, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"thalamus {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                         "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "200"}


def _wait(url: str, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url}: the server exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def _start(args: list[str], cwd: Path, url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(url, proc)
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def replay(tmp_path: Path, data_dir: Path) -> Iterator[int]:
    block = quickstart_block()
    port = free_port()
    aliases = [arg for pair in re.findall(r"--as (\S+)", block) for arg in ("--as", pair)]
    proc = _start(["replay-server", "--data", "routerbench_subset", "--port", str(port), *aliases],
                  tmp_path, f"http://127.0.0.1:{port}/v1/models")
    yield port
    _stop(proc)


def test_quickstart_routes_explores_and_judges(tmp_path: Path, replay: int) -> None:
    block = quickstart_block()
    config = block.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0].replace("127.0.0.1:8001", f"127.0.0.1:{replay}")
    (tmp_path / "thalamus.yaml").write_text(config + "\n")
    models = re.search(r"for m in (.*); do", block)
    assert models is not None, "the README's quickstart lost its onboarding loop"
    team = models.group(1).split()
    assert set(team) == {"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-8b-instruct"}

    thalamus("train", "cluster", "--data", "routerbench_subset", "--embedder", "hashing", "--out", "artifacts/base",
             cwd=tmp_path)
    prev = "artifacts/base"
    for model in team:
        thalamus("onboard", prev, "--model", model, "--probe", "routerbench_subset", "--n", str(PROBES),
                 "--grader", "judge", "--config", "thalamus.yaml", "--out", f"artifacts/team-{model}", cwd=tmp_path)
        prev = f"artifacts/team-{model}"
        done = json.loads((tmp_path / prev / "onboard.json").read_text())
        assert (done["graded"], done["failed"]) == (PROBES, 0), done
        assert done["spent_usd"] > 0
    subprocess.run(["cp", "-r", prev, "artifacts/team"], cwd=tmp_path, check=True)
    profiles = json.loads((tmp_path / "artifacts/team/profiles.json").read_text())["profiles"]
    assert set(team) <= {p["name"] for p in profiles}

    port = free_port()
    gateway = _start(["serve", "--config", "thalamus.yaml", "--port", str(port)], tmp_path,
                     f"http://127.0.0.1:{port}/health/readiness")
    try:
        _send(port, REQUESTS)
        judge = _judged(port, REQUESTS)
        logs = thalamus("logs", "--limit", "5", cwd=tmp_path)
    finally:
        _stop(gateway)
    assert judge["counts"]["failed"] == 0 and judge["counts"]["unparseable"] == 0, judge
    assert "team" in logs and any(m in logs for m in team), logs
    _check_ledger(tmp_path / "ledger.sqlite", set(team))


def _send(port: int, n: int) -> None:
    from openai import OpenAI

    from thalamus.datasets.registry import load_dataset

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=60)
    for text in load_dataset("routerbench_subset").texts[-n:]:
        answer = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": text}])
        assert answer.choices[0].message.content


def _judged(port: int, n: int, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        body = httpx.get(f"http://127.0.0.1:{port}/api/judge", timeout=5).json()
        if body["counts"]["scored"] >= n or time.monotonic() > deadline:
            assert body["counts"]["scored"] == n, body
            return dict(body)
        time.sleep(0.5)


def _check_ledger(path: Path, team: set[str]) -> None:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT chosen_model, probability FROM requests WHERE status = 200").fetchall()
        feedback = db.execute("SELECT source, score FROM feedback").fetchall()
    finally:
        db.close()
    assert len(rows) == REQUESTS
    assert {model for model, _ in rows} <= team
    assert len({model for model, _ in rows}) >= 2, rows  # routed, and exploration reached another model
    assert any(p < 1 for _, p in rows), rows
    assert len(feedback) == REQUESTS and {source for source, _ in feedback} == {"judge:judge"}
    assert all(0 <= score <= 1 for _, score in feedback)
