"""vLLM (eager, behind serve-local's ``engine: vllm``) vs serve-local's torch engine, same model, same run.

SmolLM2-135M-Instruct, greedy, streamed answers of exactly ``--tokens`` tokens (ignore_eos), over loopback
to ``thalamus serve-local`` in a separate process, one configuration after another:

- ``vllm``: ``engine: vllm`` (bf16, eager; vLLM's own process, proxied by serve-local)
- ``torch-1thread``: float32 on 1 torch thread (the setting the serving benchmarks and issue 25 measured)
- ``torch-defaults``: serve-local's defaults (float32, torch threads = usable cores)
- ``torch-bf16``: ``default_dtype: machine`` (bf16 on a CPU with avx512_bf16/AMX), threads = usable cores

For each: tokens/s of one request at a time (``--single`` requests in turn) and of 8 concurrent ones, time to
first token p50/p95, resident memory of the server's process tree (vLLM's processes included), and how many
of 12 short greedy answers are token-for-token those of ``torch-1thread`` (float32).

    PYTHONPATH=. python benchmarks/vllm_vs_torch.py [--vllm-venv /work/vllm-venv] [--tokens 64]

Writes benchmarks/results/vllm_vs_torch.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from local_server import PROMPTS, start_local, stream_one

RESULTS = Path(__file__).parent / "results"
CHECK_PROMPTS = ["What is the capital of France?", "What is the capital of Italy?", "Say hello.",
                 "Name a colour.", *PROMPTS]


def _configs(vllm_python: Path) -> dict[str, dict[str, Any]]:
    base = {"name": "smollm2", "source": "smollm2"}
    return {
        "torch-1thread": {"models": [base], "torch_threads": 1, "default_dtype": "float32"},
        "vllm": {"models": [{**base, "engine": "vllm", "dtype": "bfloat16", "context_length": 2048,
                             "vllm": {"python": str(vllm_python), "kv_cache_space": "2GiB"}}]},
        "torch-defaults": {"models": [base]},
        "torch-bf16": {"models": [base], "default_dtype": "machine"},
    }


def _wait_loaded(url: str, timeout_s: float = 600) -> float:
    """Load the model (a first request for torch; vLLM starts with the server) and return its load seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]
        if entry["engine"] == "torch" or entry["loaded"]:
            break
        time.sleep(1)
    asyncio.run(_round(url, 1, 4))  # warm-up (and the torch model's load)
    entry = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    return float(entry["load_seconds_last"])


async def _round(url: str, concurrency: int, tokens: int) -> list[dict[str, float]]:
    async with httpx.AsyncClient(timeout=600) as client:
        return list(await asyncio.gather(*(stream_one(client, url, "smollm2", PROMPTS[i % len(PROMPTS)], tokens)
                                           for i in range(concurrency))))


def _tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _greedy(url: str, tokens: int) -> list[str]:
    out = []
    for prompt in CHECK_PROMPTS:
        body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                "temperature": 0}
        out.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
                   ["choices"][0]["message"]["content"])
    return out


def _measure(name: str, config: dict[str, Any], tokens: int, single: int, check_tokens: int) -> dict[str, Any]:
    proc, url = start_local(config, name)
    try:
        load_s = _wait_loaded(url)
        singles = [asyncio.run(_round(url, 1, tokens))[0] for _ in range(single)]
        eight = asyncio.run(_round(url, 8, tokens))
        wall8 = max(r["end"] for r in eight) - min(r["start"] for r in eight)
        rss = _tree_rss(proc.pid)
        answers = _greedy(url, check_tokens)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    per_request = [r["tokens"] / (r["end"] - r["start"]) for r in singles]
    return {"config": name, "load_s": load_s, "single_tokens_per_s": statistics.mean(per_request),
            "single_ttft_p50_s": _pct([r["ttft"] for r in singles], 0.5),
            "single_ttft_p95_s": _pct([r["ttft"] for r in singles], 0.95),
            "c8_tokens_per_s": sum(r["tokens"] for r in eight) / wall8,
            "c8_ttft_p50_s": _pct([r["ttft"] for r in eight], 0.5),
            "c8_ttft_p95_s": _pct([r["ttft"] for r in eight], 0.95),
            "rss_bytes": rss, "answers": answers}


def _markdown(data: dict[str, Any]) -> str:
    lines = ["# vLLM vs serve-local's torch engine (SmolLM2-135M-Instruct, CPU)", "",
             f"Command: `{data['command']}`  ", f"Date: {data['date']}  ",
             f"Machine: {data['cpus']} CPU cores (usable: {data['usable_cores']}), CPU bf16: {data['cpu_bf16']}; "
             f"load average before/after: {data['load_before']} / {data['load_after']} (shared with other "
             "jobs: absolute numbers are pessimistic and single rounds noisy)  ",
             f"Greedy, {data['tokens']} new tokens per request (ignore_eos), streamed over loopback to serve-local "
             f"in its own process; single: {data['single']} requests in turn; c8: one round of 8 concurrent. "
             "Memory: RSS of serve-local's process tree after the rounds. Same as float32: of "
             f"{len(CHECK_PROMPTS)} greedy {data['check_tokens']}-token answers, how many equal torch-1thread's "
             "(float32).", "",
             "| config | load s | single tok/s | single TTFT p50/p95 s | c8 tok/s | c8 TTFT p50/p95 s | RSS MB | "
             "same as float32 |", "|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        lines.append(f"| {r['config']} | {r['load_s']:.1f} | {r['single_tokens_per_s']:.1f} | "
                     f"{r['single_ttft_p50_s']:.3f} / {r['single_ttft_p95_s']:.3f} | {r['c8_tokens_per_s']:.1f} | "
                     f"{r['c8_ttft_p50_s']:.3f} / {r['c8_ttft_p95_s']:.3f} | {r['rss_bytes'] / 1e6:.0f} | "
                     f"{r.get('same_as_float32', '-')}/{len(CHECK_PROMPTS)} |")
    lines += ["", "Configs: vllm = `engine: vllm`, bf16, `--enforce-eager`, VLLM_CPU_KVCACHE_SPACE=2; "
              "torch-1thread = float32, `torch_threads: 1`; torch-defaults = no dtype or thread settings "
              "(float32, threads = usable cores); torch-bf16 = `default_dtype: machine`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get("THALAMUS_VLLM_VENV",
                                                                              "/work/vllm-venv")))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--single", type=int, default=3)
    parser.add_argument("--check-tokens", type=int, default=32, help="tokens of each greedy answer compared")
    parser.add_argument("--only", nargs="*", help="configs to run (default: all)")
    args = parser.parse_args()
    from thalamus.serving.machine import machine_dtype, usable_cores

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    subprocess.run([sys.executable, "-c", "from thalamus.serving.models import prepare_smollm2; "
                    "prepare_smollm2()"], check=True)
    configs = _configs(args.vllm_venv / "bin" / "python")
    data: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv), "cpus": os.cpu_count(), "usable_cores": usable_cores(),
        "cpu_bf16": machine_dtype() == "bfloat16", "load_before": [round(x, 2) for x in os.getloadavg()],
        "tokens": args.tokens, "single": args.single, "check_tokens": args.check_tokens,
        "check_prompts": CHECK_PROMPTS, "runs": []}
    for name, cfg in configs.items():
        if not args.only or name in args.only:
            data["runs"].append(_measure(name, cfg, args.tokens, args.single, args.check_tokens))
            _write(data)  # after each config: a run cut short on a loaded machine keeps what it measured


def _write(data: dict[str, Any]) -> None:
    data["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    data["load_after"] = [round(x, 2) for x in os.getloadavg()]
    reference = next((r["answers"] for r in data["runs"] if r["config"] == "torch-1thread"), None)
    for r in data["runs"]:
        if reference is not None:
            r["same_as_float32"] = sum(a == b for a, b in zip(r["answers"], reference, strict=True))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm_vs_torch.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "vllm_vs_torch.md").write_text(_markdown(data))


if __name__ == "__main__":
    main()
