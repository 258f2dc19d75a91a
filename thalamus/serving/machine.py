"""Torch settings chosen from the machine: thread count and the dtype ``dtype: machine`` stands for.

Threads: torch's own default counts physical cores and ignores the CPU affinity mask and a cgroup CPU
quota, so a container limited to 2 of 64 cores would run 64 threads fighting over 2; the server uses
the cores it may actually run on. Dtype: bfloat16 decodes faster than float32 where the CPU has native
bf16 instructions (``avx512_bf16`` or AMX), but on SmolLM2 its greedy answers differ from float32's on
some prompts (benchmarks/results/vllm_vs_torch.md), so ``float32`` stays the default and ``machine`` is
an opt-in.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = ("float32", "bfloat16", "float16", "auto", "machine")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The ``flags`` of the first processor in ``cpuinfo``; empty where the file is missing (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def machine_dtype(flags: set[str] | None = None) -> str:
    """``bfloat16`` where the CPU has native bf16 instructions, else ``float32``."""
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(f in flags for f in BF16_FLAGS) else "float32"


def resolve_dtype(dtype: str, flags: set[str] | None = None) -> str:
    """A config's dtype as torch names it (``auto`` stays ``auto``: as stored in the checkpoint)."""
    return machine_dtype(flags) if dtype == "machine" else dtype


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota; None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota (rounded up), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)
