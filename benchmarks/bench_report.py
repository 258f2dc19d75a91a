"""What every benchmark writes: the command that produced it, when, and the JSON + markdown files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def command(script: str, argv: list[str] | None) -> str:
    return " ".join([".venv/bin/python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def write(out: Path, report: dict[str, Any], markdown: str) -> None:
    """``out``.json and ``out``.md, and the markdown on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
