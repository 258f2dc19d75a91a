"""Gateway overhead: client -> gateway -> replay upstream vs client -> replay upstream directly.

Each server runs in its own process (``thalamus replay-server`` and ``thalamus serve``) on
loopback; the load generator (aiohttp) runs in this process. Measured, in one run on the same
machine: latency p50/p99 at concurrency 1 and 32 and throughput at concurrency 32, for
(a) a concrete model (no routing) and (b) a routed model (``router:knn``), the gateway's own
routing latency from its ledger, and whether every request left exactly one ledger row.
``--proxy-url URL --proxy-model NAME`` adds any other OpenAI-compatible proxy as a target
(pointed at the same replay upstream, whose URL the script prints).

    .venv/bin/python benchmarks/gateway_overhead.py [--n1 300] [--n32 2000] [--proxy-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
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
from bench_report import write

ROOT = Path(__file__).resolve().parent.parent
THALAMUS = [str(Path(sys.executable).parent / "thalamus")]
CONCRETE = "gpt-4-1106-preview"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


async def _load(url: str, model: str, texts: list[str], n: int, concurrency: int) -> tuple[np.ndarray, float]:
    import aiohttp

    latencies = np.zeros(n)
    counter = iter(range(n))
    errors: list[str] = []
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker() -> None:
            for i in counter:
                body = {"model": model, "messages": [{"role": "user", "content": texts[i % len(texts)]}]}
                t0 = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors.append(f"{resp.status}")
                latencies[i] = time.perf_counter() - t0

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{url} {model}: {len(errors)} failed requests, e.g. status {errors[0]}")
    return latencies * 1000, wall


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), robust to other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, model: str, texts: list[str], n1: int, n32: int, pids: dict[str, int]) -> dict[str, float]:
    asyncio.run(_load(url, model, texts, 30, 4))  # warm-up: connections, lazy imports
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    lat1, _ = asyncio.run(_load(url, model, texts, n1, 1))
    lat32, wall = asyncio.run(_load(url, model, texts, n32, 32))
    cpu = {f"cpu_ms_per_req_{k}": (cpu_seconds(p) - before[k]) * 1000 / (n1 + n32) for k, p in pids.items()}
    return {"p50_c1": float(np.percentile(lat1, 50)), "p99_c1": float(np.percentile(lat1, 99)),
            "p50_c32": float(np.percentile(lat32, 50)), "p99_c32": float(np.percentile(lat32, 99)),
            "rps_c32": n32 / wall, "requests": 30 + n1 + n32, **cpu}


def start(cmd: list[str], url: str, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_ready(url, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the ledger writer drains
    proc.wait(timeout=60)


def gateway_config(models: list[str], replay_url: str, artifact: Path, router: str, ledger: Path, port: int,
                   provider: str) -> dict[str, Any]:
    from thalamus.gateway.replay.demo import gateway_config as demo_config

    config = demo_config(models, replay_url, artifact, router, {"kind": "lambda", "value": 0.2},
                         f"sqlite:///{ledger}")
    for backend in config["backends"]:
        backend["provider"] = provider
    config["server"] = {"host": "127.0.0.1", "port": port}
    config["ledger"]["store_prompts"] = False
    return config


def routing_stats(ledger: Path, n1: int) -> dict[str, float]:
    """Ledger row count and the routing latency of the routed requests sent at concurrency 1."""
    from thalamus.ledger import Ledger

    db = Ledger(f"sqlite:///{ledger}")
    df = db.recent(limit=10_000_000)
    db.close()
    routed = df[df["routing_ms"].notna()].sort_values("created_at")["routing_ms"].to_numpy()
    c1 = routed[30:30 + n1]  # after the warm-up, before the concurrency-32 phase
    return {"rows": len(df), "routing_p50_ms_c1": float(np.percentile(c1, 50)),
            "routing_p99_ms_c1": float(np.percentile(c1, 99)),
            "routing_p50_ms_all": float(np.percentile(routed, 50))}


def measure_gateway(provider: str, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Start one gateway process with every backend on ``provider``; measure concrete and routed."""
    tmp: Path = ctx["tmp"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ledger = tmp / f"ledger-{provider}.sqlite"
    cfg = tmp / f"thalamus-{provider}.yaml"
    cfg.write_text(yaml.safe_dump(gateway_config(ctx["models"], ctx["replay_url"], ctx["artifact"], ctx["router"],
                                                 ledger, port, provider)))
    # without the on-disk embedding cache every routed prompt is embedded, as a fresh prompt would be
    env = {} if args.embed_cache else {"THALAMUS_EMBED_CACHE": "0"}
    gateway = start([*THALAMUS, "serve", "--config", str(cfg)], url + "/readyz", tmp / f"gateway-{provider}.log",
                    env)
    pids = {"gateway": gateway.pid, "replay": ctx["replay_pid"]}
    out: dict[str, Any] = {}
    try:
        for kind, model in (("concrete", CONCRETE), ("router", f"router:{ctx['router']}")):
            print(f"measuring gateway ({provider}) {model} ...", flush=True)
            out[kind] = measure(url, model, ctx["texts"], args.n1, args.n32, pids)
    finally:
        stop(gateway)
    out["ledger"] = {**routing_stats(ledger, args.n1), "sent": out["concrete"]["requests"] + out["router"]["requests"]}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from thalamus.config import Settings
    from thalamus.datasets.registry import load_dataset
    from thalamus.gateway.replay.demo import DATASET, train_or_load

    dataset = load_dataset(DATASET)
    train, test = dataset.train_test()
    artifact, router = train_or_load(train, Settings().cache_dir, args.router, args.embedder)
    tmp = Path(tempfile.mkdtemp(prefix="thalamus-bench-"))
    rport = free_port()
    replay_url = f"http://127.0.0.1:{rport}"
    replay = start([*THALAMUS, "replay-server", "--data", DATASET, "--port", str(rport)],
                   replay_url + "/v1/models", tmp / "replay.log")
    print(f"replay upstream at {replay_url}/v1", flush=True)
    ctx = {"tmp": tmp, "models": dataset.models, "replay_url": replay_url, "artifact": artifact, "router": router,
           "replay_pid": replay.pid, "texts": test.texts}
    results: dict[str, Any] = {}
    try:
        print("measuring direct ...", flush=True)
        results["direct"] = measure(replay_url, CONCRETE, test.texts, args.n1, args.n32, {"replay": replay.pid})
        for provider in ("openai-compatible", "litellm"):
            results[provider] = measure_gateway(provider, ctx, args)
        if args.proxy_url:
            results["proxy"] = measure(args.proxy_url.rstrip("/").removesuffix("/v1"), args.proxy_model,
                                       test.texts, args.n1, args.n32, {"replay": replay.pid})
    finally:
        stop(replay)
    results["meta"] = {"router": router, "embedder": args.embedder, "embed_cache": args.embed_cache,
                       "n1": args.n1, "n32": args.n32,
                       "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
                       "command": " ".join(["python", *sys.argv])}
    return results


def _row(name: str, x: dict[str, float], d: dict[str, float]) -> str:
    gw_cpu = x.get("cpu_ms_per_req_gateway")
    return (f"| {name} | {x['p50_c1']:.2f} | {x['p99_c1']:.2f} | {x['p50_c32']:.2f} | {x['p99_c32']:.2f} "
            f"| {x['rps_c32']:.0f} | {x['p50_c1'] - d['p50_c1']:+.2f} | {x['p99_c1'] - d['p99_c1']:+.2f} | "
            f"{'' if gw_cpu is None else f'{gw_cpu:.2f}'} |")


def report(r: dict[str, Any]) -> str:
    d, meta = r["direct"], r["meta"]
    load = ", ".join(f"{x:.1f}" for x in meta["loadavg_at_end"])
    lines = [f"# Gateway overhead ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['cpus']} CPU cores, shared by the load generator (aiohttp), the gateway process, the "
             f"replay upstream process and other jobs (load average at the end: {load}). Router: "
             f"`router:{meta['router']}` with the `{meta['embedder']}` embedder, on-disk embedding cache "
             f"{'on (prompts repeat: cache hits)' if meta['embed_cache'] else 'off (every routed prompt embedded)'}. "
             "Latencies in ms; 'added' is "
             "the gateway's latency minus the direct call's at concurrency 1; 'gateway CPU' is the gateway "
             "process's CPU time per request (independent of other load).", "",
             "| target | p50 c=1 | p99 c=1 | p50 c=32 | p99 c=32 | req/s c=32 | added p50 c=1 | added p99 c=1 | "
             "gateway CPU ms/req |", "|---|---|---|---|---|---|---|---|---|", _row("direct to replay", d, d)]
    for provider in ("openai-compatible", "litellm"):
        for kind in ("concrete", "router"):
            lines.append(_row(f"gateway {provider} {kind}", r[provider][kind], d))
    if "proxy" in r:
        lines.append(_row("other proxy", r["proxy"], d))
    lines.append("")
    for provider in ("openai-compatible", "litellm"):
        led = r[provider]["ledger"]
        lines.append(f"- {provider}: routing latency in the gateway (ledger routing_ms) at c=1 p50 "
                     f"{led['routing_p50_ms_c1']:.2f} ms, p99 {led['routing_p99_ms_c1']:.2f} ms (all requests, "
                     f"incl. c=32 queueing for the worker thread: p50 {led['routing_p50_ms_all']:.2f} ms); "
                     f"ledger rows {led['rows']} "
                     f"for {led['sent']} requests ({'none lost' if led['rows'] == led['sent'] else 'MISMATCH'}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n1", type=int, default=300, help="requests at concurrency 1")
    parser.add_argument("--n32", type=int, default=2000, help="requests at concurrency 32")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--router", default="knn", help="the router behind the routed rows (e.g. cluster)")
    parser.add_argument("--embed-cache", action="store_true",
                        help="let the gateway use the on-disk embedding cache (the benchmark's prompts repeat)")
    parser.add_argument("--proxy-url", help="another OpenAI-compatible proxy to measure side by side")
    parser.add_argument("--proxy-model", default=CONCRETE, help="model name to send to --proxy-url")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gateway_overhead")
    args = parser.parse_args()
    results = run(args)
    write(args.out, results, report(results))


if __name__ == "__main__":
    main()
