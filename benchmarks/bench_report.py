"""What every benchmark writes: the command that produced it, when, and the JSON + markdown files."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def command(script: str, argv: list[str] | None) -> str:
    args = argv if argv is not None else sys.argv[1:]
    return shlex.join([".venv/bin/python", f"benchmarks/{script}", *args])  # quoted, so it can be pasted


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def write(out: Path, report: dict[str, Any], markdown: str) -> None:
    """``out``.json and ``out``.md, and the markdown on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}
