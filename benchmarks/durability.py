"""Durability: rows lost to kill -9 under load in each ``ledger.durability`` mode, and what ``journal`` costs.

The gateway (``thalamus serve``) and a replay upstream each run as their own process on loopback;
load comes from the openai SDK in this process. Per mode, ``--runs`` times: start the gateway on a
fresh SQLite ledger, load it at ``--concurrency``, kill -9 it ``--kill-after`` seconds in, restart it
(``journal`` rows are replayed at start), wait for /readyz, stop it gracefully, then count the request
ids the clients saw answered 200 that have no row. Latency: one gateway per mode, both up at once,
requests interleaved between them (concurrency 1, then ``--concurrency``), p50/p99 per mode.

    .venv/bin/python benchmarks/durability.py [--runs 3] [--concurrency 32] [--n-latency 400]

Writes benchmarks/results/durability.json and .md (with this command line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLI = "import sys; from thalamus.cli import build_app; build_app()(sys.argv[1:], prog_name='thalamus')"
REPLAY = ("import sys, uvicorn; from thalamus.gateway.replay.server import create_replay_app; "
          "from thalamus.datasets.schema import RoutingDataset; import pandas as pd, numpy as np; "
          "ds = RoutingDataset(name='d', prompts=pd.DataFrame({'text': ['q']}), models=['weak'], "
          "quality=np.ones((1, 1)), cost=np.ones((1, 1))); "
          "uvicorn.run(create_replay_app(ds), host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')")
TEXTS = [f"Durability question {i}: what is {i} times {i % 7}?" for i in range(64)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180, path: str = "/readyz") -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}{path} not 200 after {timeout} s")


def start_gateway(config: dict[str, Any], folder: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (folder / f"{name}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--config", str(path)], cwd=ROOT, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{config['server']['port']}"
    wait_ready(url, proc)
    return proc, url


def gateway_config(replay_url: str, ledger: Path, mode: str, port: int) -> dict[str, Any]:
    return {"backends": [{"name": "weak", "model": "openai/weak", "api_base": replay_url + "/v1",
                          "provider": "openai-compatible", "input_per_m": 0.1, "output_per_m": 0.2}],
            "server": {"host": "127.0.0.1", "port": port},
            "ledger": {"url": f"sqlite:///{ledger}", "durability": mode,
                       "journal_path": str(ledger.with_suffix(".journal.jsonl"))}}


async def _until_dead(url: str, concurrency: int, stop_at: float) -> list[str]:
    """Load until ``stop_at`` (monotonic) or the gateway dies; the ids answered 200."""
    import openai

    answered: list[str] = []
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30) as client:
        async def worker(k: int) -> None:
            i = k
            while time.monotonic() < stop_at:
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="weak", messages=[{"role": "user", "content": TEXTS[i % len(TEXTS)]}])
                except openai.APIConnectionError:
                    return  # the gateway was killed: connection refused or reset
                except openai.APIStatusError:
                    i += concurrency
                    continue  # answered, but not 200: not counted
                if raw.status_code == 200:
                    answered.append(raw.headers["x-thalamus-request-id"])
                i += concurrency

        await asyncio.gather(*[worker(k) for k in range(concurrency)])
    return answered


def kill_run(replay_url: str, folder: Path, mode: str, concurrency: int, kill_after: float) -> dict[str, Any]:
    from thalamus.ledger import Ledger

    ledger_path = folder / f"{mode}-{time.time_ns()}.sqlite"
    config = gateway_config(replay_url, ledger_path, mode, free_port())
    proc, url = start_gateway(config, folder, f"{mode}-kill")

    def killer() -> None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)

    import threading

    thread = threading.Thread(target=killer)
    thread.start()
    answered = asyncio.run(_until_dead(url, concurrency, time.monotonic() + kill_after + 5))
    thread.join()
    proc.wait(timeout=30)
    ledger = Ledger(f"sqlite:///{ledger_path}")
    before_restart = len(set(answered) & ledger.ids())
    proc, url = start_gateway(config, folder, f"{mode}-restart")  # /readyz 200: journal replayed
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stored = ledger.ids()
    ledger.close()
    lost = len(set(answered) - stored)
    return {"answered_200": len(answered), "rows_before_restart": before_restart,
            "rows_after_restart": len(set(answered) & stored), "lost": lost,
            "lost_pct": 100.0 * lost / max(1, len(answered))}


async def _interleaved(urls: dict[str, str], n: int, concurrency: int) -> dict[str, list[float]]:
    import openai

    latencies: dict[str, list[float]] = {mode: [] for mode in urls}
    clients = {m: openai.AsyncOpenAI(base_url=u + "/v1", api_key="x", max_retries=0, timeout=30)
               for m, u in urls.items()}
    modes = list(urls)
    counter = iter(range(n * len(modes)))

    async def worker() -> None:
        for i in counter:
            mode = modes[i % len(modes)]
            t0 = time.perf_counter()
            await clients[mode].chat.completions.create(
                model="weak", messages=[{"role": "user", "content": TEXTS[i % len(TEXTS)]}])
            latencies[mode].append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    for client in clients.values():
        await client.close()
    return latencies


def latency(replay_url: str, folder: Path, n: int, concurrency: int) -> dict[str, Any]:
    procs, urls = [], {}
    for mode in ("batched", "journal"):
        proc, url = start_gateway(gateway_config(replay_url, folder / f"lat-{mode}.sqlite", mode, free_port()),
                                  folder, f"lat-{mode}")
        procs.append(proc)
        urls[mode] = url
    try:
        asyncio.run(_interleaved(urls, 50, 4))  # warm-up
        out: dict[str, Any] = {}
        for c in (1, concurrency):
            lat = asyncio.run(_interleaved(urls, n, c))
            out[f"c{c}"] = {m: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                                "n": len(v)} for m, v in lat.items()}
            out[f"c{c}"]["added_p50_ms"] = out[f"c{c}"]["journal"]["p50_ms"] - out[f"c{c}"]["batched"]["p50_ms"]
            out[f"c{c}"]["added_p99_ms"] = out[f"c{c}"]["journal"]["p99_ms"] - out[f"c{c}"]["batched"]["p99_ms"]
        return out
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def fsync_floor(folder: Path, n: int = 200) -> dict[str, float]:
    """What one fdatasync of a small append costs on the journal's disk right now: the floor under
    ``journal`` mode's added latency at concurrency 1."""
    fd = os.open(folder / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 400 + b"\n")
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.002)
    finally:
        os.close(fd)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def write_report(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "durability.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Durability: kill -9 under load, and the latency cost of `ledger.durability: journal`", "",
             f"Command: `{result['command']}`", "", f"Machine: {result['machine']}", "",
             "| mode | run | answered 200 | rows before restart | rows after restart | lost | lost % |",
             "|---|---|---|---|---|---|---|"]
    for mode, runs in result["kill"].items():
        for i, r in enumerate(runs, start=1):
            lines.append(f"| {mode} | {i} | {r['answered_200']} | {r['rows_before_restart']} | "
                         f"{r['rows_after_restart']} | {r['lost']} | {r['lost_pct']:.2f} |")
    lines += ["", "| concurrency | batched p50 / p99 ms | journal p50 / p99 ms | added p50 / p99 ms |",
              "|---|---|---|---|"]
    for key, row in result["latency"].items():
        b, j = row["batched"], row["journal"]
        lines.append(f"| {key[1:]} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {j['p50_ms']:.2f} / {j['p99_ms']:.2f} | "
                     f"{row['added_p50_ms']:+.2f} / {row['added_p99_ms']:+.2f} |")
    floor = result["fdatasync"]
    lines += ["", "One fdatasync of a small append on this disk, measured in the same run: "
              f"p50 {floor['p50_ms']:.2f} ms, "
              f"p99 {floor['p99_ms']:.2f} ms (the floor under `journal`'s cost at concurrency 1).", "",
              result["note"], ""]
    (RESULTS / "durability.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-after", type=float, default=3.0)
    parser.add_argument("--n-latency", type=int, default=400)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="thalamus-durability-"))
    port = free_port()
    replay = subprocess.Popen([sys.executable, "-c", REPLAY, str(port)], cwd=ROOT, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    replay_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(replay_url, replay, path="/v1/models")
        asyncio.run(_interleaved({"warm-up": replay_url}, 20, 4))  # the SDK's lazy imports, before any clock runs
        kill = {mode: [kill_run(replay_url, folder, mode, args.concurrency, args.kill_after) for _ in range(args.runs)]
                for mode in ("batched", "journal")}
        lat = latency(replay_url, folder, args.n_latency, min(args.concurrency, 16))
        floor = fsync_floor(folder)
    finally:
        replay.send_signal(signal.SIGTERM)
        replay.wait(timeout=30)
    result = {"command": " ".join(["python benchmarks/durability.py", *sys.argv[1:]]),
              "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
              "kill": kill, "latency": lat, "fdatasync": floor,
              "note": "Client latency through the openai SDK, loopback, openai-compatible provider, SQLite ledger; "
                      "both gateways up at once and requests interleaved, so machine noise hits both modes alike. "
                      "`journal` needs the service to `await writer.record(row)` before the response's last byte "
                      "(non-stream: before returning the body)."}
    write_report(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
