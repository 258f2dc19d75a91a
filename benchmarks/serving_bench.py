"""Local serving speed: SmolLM2-135M, greedy, 64 new tokens, at 1/4/8 concurrent requests, batching on vs off.

Starts ``thalamus serve-local`` as a subprocess (once with dynamic batching, once one-at-a-time), sends
concurrent streaming requests over loopback, and measures time to first token (TTFT), per-request latency
and aggregate tokens/s. ``ignore_eos`` keeps every answer at exactly 64 tokens. The floor is plain
``model.generate`` in a loop, in this process, with nothing else running.

    .venv/bin/python benchmarks/serving_bench.py [--torch-threads 1] [--tokens 64]

Writes benchmarks/results/serving.md and serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from local_server import PROMPTS, start_local, stream_one

RESULTS = Path(__file__).parent / "results"


def _start(batching: bool, threads: int | None) -> tuple[subprocess.Popen[bytes], str]:
    cfg = {"models": [{"name": "smollm2", "source": "smollm2"}], "batching": batching,
           "batch_window_ms": 5, "max_batch_size": 8, "torch_threads": threads}
    return start_local(cfg, "batching on" if batching else "batching off")


async def _one(client: httpx.AsyncClient, url: str, prompt: str, tokens: int) -> dict[str, float]:
    run = await stream_one(client, url, "smollm2", prompt, tokens)
    return {"ttft": run["ttft"], "latency": run["end"] - run["start"], "tokens": run["tokens"]}


async def _round(url: str, concurrency: int, tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(*(_one(client, url, PROMPTS[i % len(PROMPTS)], tokens)
                                      for i in range(concurrency)))
        wall = time.perf_counter() - start
    total = sum(r["tokens"] for r in runs)
    return {"concurrency": concurrency, "tokens": total, "wall_s": wall, "tokens_per_s": total / wall,
            "ttft_mean_s": sum(r["ttft"] for r in runs) / len(runs), "ttft_max_s": max(r["ttft"] for r in runs),
            "latency_mean_s": sum(r["latency"] for r in runs) / len(runs)}


def _serve_rounds(batching: bool, threads: int | None, tokens: int) -> list[dict[str, float]]:
    proc, url = _start(batching, threads)
    try:
        asyncio.run(_round(url, 1, 4))  # load the model and warm up
        return [asyncio.run(_round(url, c, tokens)) for c in (1, 4, 8)]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _floor(threads: int | None, tokens: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thalamus.serving.models import prepare_smollm2

    if threads:
        torch.set_num_threads(threads)
    folder = prepare_smollm2()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    encoded: Any = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}],
                                           add_generation_prompt=True, return_dict=True)
    ids = torch.tensor([encoded["input_ids"]])
    model.generate(ids, max_new_tokens=4, do_sample=False)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"latency_s": best, "tokens_per_s": tokens / best}


def _markdown(data: dict[str, Any]) -> str:
    lines = ["# Local serving benchmark (SmolLM2-135M-Instruct, CPU)", "",
             f"Command: `{data['command']}`  ", f"Date: {data['date']}  ",
             f"Machine: {data['cpus']} CPU cores; load average before/after: {data['load_before']} / "
             f"{data['load_after']} ({data['load_note']})  ",
             f"torch threads: {data['torch_threads']}; greedy; {data['tokens']} new tokens per request "
             "(ignore_eos); streaming over loopback; server in a separate process.", "",
             "| mode | concurrency | aggregate tok/s | mean TTFT s | max TTFT s | mean latency s |",
             "|---|---|---|---|---|---|"]
    for mode in ("batching", "one_at_a_time"):
        for r in data[mode]:
            lines.append(f"| {mode} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['ttft_mean_s']:.3f} | "
                         f"{r['ttft_max_s']:.3f} | {r['latency_mean_s']:.2f} |")
    f = data["floor"]
    lines += [f"| model.generate loop (floor) | 1 | {f['tokens_per_s']:.1f} | - | - | {f['latency_s']:.2f} |", "",
              "## Targets", "",
              f"- batching speedup at 8 concurrent (aggregate tok/s vs one-at-a-time): "
              f"**{data['speedup_at_8']:.2f}x** (target >= 2.5x)",
              f"- single-request latency added by batching (vs one-at-a-time): "
              f"**{100 * data['added_latency_at_1']:+.1f}%** (target <= +10%)",
              f"- server at concurrency 1 vs plain model.generate: **{data['vs_floor_at_1']:.2f}x** the floor's "
              "tokens/s (includes HTTP, tokenization and streaming)",
              f"- batching at 8 concurrent vs the model.generate floor: "
              f"**{data['batching'][2]['tokens_per_s'] / f['tokens_per_s']:.2f}x** aggregate tokens/s", "",
              "Each cell is one round (after a warm-up request). On a shared, loaded machine single rounds are "
              "noisy: differences of tens of percent at concurrency 1 (batching on vs off, server vs floor) "
              "are load noise, not effects; the 5 ms batch window is the only latency batching adds to a "
              "lone request.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()
    floor = _floor(args.torch_threads, args.tokens)
    on = _serve_rounds(True, args.torch_threads, args.tokens)
    off = _serve_rounds(False, args.torch_threads, args.tokens)
    load_after = os.getloadavg()
    busy = max(load_before[0], load_after[0]) > (os.cpu_count() or 2) * 0.75
    data: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "load_note": "machine shared with other jobs: absolute numbers are pessimistic" if busy else "quiet",
        "torch_threads": args.torch_threads or "torch default", "tokens": args.tokens,
        "batching": on, "one_at_a_time": off, "floor": floor,
        "speedup_at_8": on[2]["tokens_per_s"] / off[2]["tokens_per_s"],
        "added_latency_at_1": on[0]["latency_mean_s"] / off[0]["latency_mean_s"] - 1,
        "vs_floor_at_1": on[0]["tokens_per_s"] / floor["tokens_per_s"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(data, indent=2))
    (RESULTS / "serving.md").write_text(_markdown(data))
    print(_markdown(data))


if __name__ == "__main__":
    main()
