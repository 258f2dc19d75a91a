"""Continuous vs window batching under staggered arrivals: time to first token and aggregate tokens/s.

Starts ``thalamus serve-local`` twice as a subprocess (``batch_mode: continuous``, then ``window``; same
model, ``max_batch_size`` 16, 5 ms window, torch threads 1) and, at each concurrency c in 1, 4, 8, 16,
sends c streaming greedy requests whose arrivals are staggered by ``--gap`` seconds (request i starts at
i x gap), the same prompts in both modes. ``ignore_eos`` keeps every answer at ``--tokens`` tokens.
TTFT is measured at the client (send to first content chunk); aggregate tokens/s is all completion
tokens over the time from the first send to the last answer's end.

    .venv/bin/python benchmarks/continuous_batching.py [--model smollm2] [--tokens 32] [--gap 0.25]

Writes benchmarks/results/continuous_batching.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_report import command, load_average, utc_now, write
from local_server import PROMPTS, start_local, stream_one

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (1, 4, 8, 16)
MODES = ("continuous", "window")


def _start(mode: str, model: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    cfg = {"models": [model], "batch_mode": mode, "batch_window_ms": 5, "max_batch_size": max(CONCURRENCY),
           "torch_threads": 1}
    return start_local(cfg, mode)


async def _one(client: httpx.AsyncClient, url: str, name: str, prompt: str, tokens: int,
               delay: float) -> dict[str, float]:
    await asyncio.sleep(delay)
    return await stream_one(client, url, name, prompt, tokens)


async def _round(url: str, name: str, concurrency: int, tokens: int, gap: float) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:
        runs = await asyncio.gather(*(_one(client, url, name, PROMPTS[i % len(PROMPTS)], tokens, i * gap)
                                      for i in range(concurrency)))
    ttft = np.array([r["ttft"] for r in runs])
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    total = sum(int(r["tokens"]) for r in runs)
    return {"concurrency": concurrency, "tokens": total, "wall_s": wall, "tokens_per_s": total / wall,
            "ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p95_s": float(np.percentile(ttft, 95)),
            "latency_mean_s": float(np.mean([r["end"] - r["start"] for r in runs]))}


def _serve_rounds(mode: str, model: dict[str, Any], tokens: int, gap: float) -> list[dict[str, Any]]:
    proc, url = _start(mode, model)
    try:
        asyncio.run(_round(url, model["name"], 1, 2, 0))  # load the model and warm up
        rounds = []
        for c in CONCURRENCY:
            rounds.append(asyncio.run(_round(url, model["name"], c, tokens, gap)))
            print(f"  {mode} c={c}: {rounds[-1]['tokens_per_s']:.1f} tok/s, "
                  f"TTFT p50 {rounds[-1]['ttft_p50_s']:.3f} s", flush=True)
        return rounds
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _markdown(data: dict[str, Any]) -> str:
    lines = ["# Continuous vs window batching, staggered arrivals", "",
             f"Command: `{data['command']}`  ", f"Date: {data['date']}  ",
             f"Machine: {data['cpus']} CPU cores, load average before / after: {data['load_before']} / "
             f"{data['load_after']} (shared with other jobs: absolute numbers are pessimistic)  ",
             f"Model: {data['model']}; torch threads 1; greedy; {data['tokens']} new tokens per request "
             f"(ignore_eos); request i starts at i x {data['gap_s']} s; max_batch_size 16, 5 ms window; "
             "streaming over loopback, server in a separate process; one round per cell.", "",
             "| concurrency | mode | TTFT p50 s | TTFT p95 s | aggregate tok/s | mean latency s | wall s |",
             "|---|---|---|---|---|---|---|"]
    for i, c in enumerate(CONCURRENCY):
        for mode in MODES:
            r = data[mode][i]
            lines.append(f"| {c} | {mode} | {r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} | "
                         f"{r['tokens_per_s']:.1f} | {r['latency_mean_s']:.2f} | {r['wall_s']:.2f} |")
    lines += ["", "## Continuous / window", "", "| concurrency | TTFT p50 | TTFT p95 | aggregate tok/s |",
              "|---|---|---|---|"]
    for i, c in enumerate(CONCURRENCY):
        a, b = data["continuous"][i], data["window"][i]
        lines.append(f"| {c} | {a['ttft_p50_s'] / b['ttft_p50_s']:.2f}x | {a['ttft_p95_s'] / b['ttft_p95_s']:.2f}x "
                     f"| {a['tokens_per_s'] / b['tokens_per_s']:.2f}x |")
    lines += ["", "At concurrency 1 both modes run the same single request (differences are noise). With "
              "staggered arrivals, window batching makes a request that arrives while a batch decodes wait "
              "for that whole batch; continuous batching prefills it at the next step and decodes it with "
              "the others.", ""]
    return "\n".join(lines)


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thalamus.eval.plots import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        rows = data[mode]
        left.plot(CONCURRENCY, [r["ttft_p50_s"] for r in rows], marker="o", label=f"{mode} p50")
        left.plot(CONCURRENCY, [r["ttft_p95_s"] for r in rows], marker="x", linestyle="--", label=f"{mode} p95")
        right.plot(CONCURRENCY, [r["tokens_per_s"] for r in rows], marker="o", label=mode)
    left.set(xlabel="concurrent requests (staggered)", ylabel="time to first token, s", title="TTFT")
    right.set(xlabel="concurrent requests (staggered)", ylabel="tokens/s", title="aggregate throughput")
    for ax in (left, right):
        ax.set_xticks(CONCURRENCY)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' (prepared from its wheel) or a model folder")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between two requests' arrivals")
    parser.add_argument("--out", type=Path, default=RESULTS / "continuous_batching")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = {"name": "bench", "source": "smollm2"} if args.model == "smollm2" else \
        {"name": "bench", "path": str(Path(args.model).resolve())}
    load_before = load_average()
    data: dict[str, Any] = {"command": command("continuous_batching.py", argv), "date": utc_now(),
                            "cpus": os.cpu_count(), "load_before": load_before, "model": args.model,
                            "tokens": args.tokens, "gap_s": args.gap}
    for mode in MODES:
        data[mode] = _serve_rounds(mode, model, args.tokens, args.gap)
    data["load_after"] = load_average()
    write(args.out, data, _markdown(data))
    _plot(data, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
