"""Every benchmark script starts as its results files say it is run (``.venv/bin/python benchmarks/X.py``
from the repository root, no PYTHONPATH): a script importing ``benchmarks.X`` worked in a worktree with
PYTHONPATH set and failed from a fresh clone."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELPERS = {"__init__", "bench_report", "local_server"}


def _help(script: Path) -> tuple[str, int, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return script.name, done.returncode, done.stderr[-600:]


def test_every_benchmark_script_starts_from_the_repository_root() -> None:
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in HELPERS)
    assert len(scripts) >= 15
    with ThreadPoolExecutor(4) as pool:
        failed = [(name, err) for name, rc, err in pool.map(_help, scripts) if rc != 0]
    assert not failed, failed
