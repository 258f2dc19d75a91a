"""Load-aware routing (issue 25 item 2): p95 latency and routed quality with and without the wait penalty.

Two ``thalamus serve-local`` processes serve one tiny random-weight MoE each (the same weights; two
decoding slots each). RouterBench's quality matrix is mapped onto them (engine-a <- Mixtral-8x7B,
engine-b <- GPT-3.5-turbo-1106: close in mean quality, so the router splits the traffic); a kNN router
(hashing embedder) is fitted on its train split. engine-a is made busy by background clients sending
long generations (more than its slots hold, so requests queue). The same shuffled test prompts are then
sent through the real gateway (``model="auto"``, lambda 0: pure predicted quality, one request at a time)
once with ``pool_routing.load_aware`` off and once on per ``per_second`` rate. The per-request service
time is measured before the passes: one background-sized generation on the idle engine, divided by its
slots. Latency is the client's; routed quality is the dataset's quality of the mapped model each request
went to, and the quality change is given with a 95% interval over the paired prompts.

    .venv/bin/python benchmarks/load_routing.py [--n 60] [--rates 0.05,0.2,1]

Writes benchmarks/results/load_routing.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import numpy as np
import yaml
from bench_report import command, load_average, utc_now, write

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.engine_metrics import parse_load
from thalamus.gateway.app import create_app as create_gateway
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.knn import KNNRouter
from thalamus.serving.models import make_tiny_moe

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"engine-a": "mistralai/mixtral-8x7b-chat", "engine-b": "gpt-3.5-turbo-1106"}
BUSY = "engine-a"
SLOTS, STREAMS, BACKGROUND_TOKENS = 2, 4, 300
BODY: dict[str, Any] = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}
PROMPT_CHARS = 300


@contextmanager
def engines(root: Path) -> Iterator[dict[str, str]]:
    """Both serve-local processes, up; name -> URL."""
    started: list[subprocess.Popen[bytes]] = []
    urls = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        for name in ENGINES:
            make_tiny_moe("mixtral", root / name)
            config = root / f"{name}.yaml"
            config.write_text(yaml.safe_dump({"torch_threads": 1, "max_batch_size": SLOTS, "batch_window_ms": 1,
                                              "models": [{"name": name, "path": str(root / name)}]}))
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            started.append(subprocess.Popen([sys.executable, "-c", "from thalamus.cli import main; main()",
                                             "serve-local", "--config", str(config), "--host", "127.0.0.1",
                                             "--port", str(port)], env=env))
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            wait_until(lambda u=url: _up(u), f"serve-local {name} to answer /v1/models", 180)
        yield urls
    finally:
        for process in started:
            process.terminate()
            process.wait(30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check: Any, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


def chat(url: str, model: str, text: str, tokens: int) -> float:
    t0 = time.perf_counter()
    httpx.post(f"{url}/v1/chat/completions", timeout=600, json={
        "model": model, "messages": [{"role": "user", "content": text}], "max_tokens": tokens,
        "temperature": 0, "ignore_eos": True}).raise_for_status()
    return time.perf_counter() - t0


def in_flight(url: str, model: str) -> float:
    load = parse_load(httpx.get(f"{url}/metrics", timeout=10).text).get(model)
    return load.in_flight if load is not None else 0.0


@contextmanager
def busy(url: str, model: str) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            chat(url, model, "Go on.", BACKGROUND_TOKENS)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: in_flight(url, model) >= STREAMS - 1, f"{model} to queue the background traffic", 120)
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(600)


def mapped() -> RoutingDataset:
    ds = load_dataset("routerbench_subset").select_models(list(ENGINES.values()))
    return RoutingDataset(name="routerbench->engines", prompts=ds.prompts, models=list(ENGINES),
                          quality=ds.quality, cost=ds.cost)


def gateway_config(urls: dict[str, str], root: Path, per_second: float | None, service_s: float) -> dict[str, Any]:
    """Pool routing on in both passes (the same polling); ``per_second`` None: load_aware off."""
    backends = [{"name": m, "model": f"openai/{m}", "api_base": f"{url}/v1", "input_per_m": 0.0,
                 "output_per_m": 0.0, "timeout": 600, "max_retries": 0} for m, url in urls.items()]
    pool = {"enabled": True, "load_aware": per_second is not None, "per_second": per_second or 0.0,
            "service_s": service_s,
            "poll_interval_s": 0.5, "poll_timeout_s": 2.0}
    return {"backends": backends, "pool_routing": pool,
            "routers": {"knn": {"artifact": str(root / "router"), "aliases": ["auto"],
                                "knob": {"kind": "lambda", "value": 0.0}}},
            "ledger": {"url": f"sqlite:///{root / f'ledger-{per_second}.sqlite'}", "flush_ms": 50}}


def one_pass(urls: dict[str, str], config: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    chosen, ms = [], []
    with busy(urls[BUSY], BUSY), ThreadedServer(create_gateway(config_from_dict(config))) as gateway, \
            httpx.Client(timeout=600) as client:
        time.sleep(1.0)  # a poll or two after start-up, under the background load
        for text in texts:
            t0 = time.perf_counter()
            r = client.post(f"{gateway.url}/v1/chat/completions",
                            json={"model": "auto", "messages": [{"role": "user", "content": text}], **BODY})
            ms.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            chosen.append(r.headers["x-thalamus-model"])
    return {"chosen": chosen, "ms": np.asarray(ms)}


def summarise(label: str, run: dict[str, Any], quality: np.ndarray) -> dict[str, Any]:
    names = list(ENGINES)
    q = quality[np.arange(len(run["chosen"])), [names.index(m) for m in run["chosen"]]]
    ms = run["ms"]
    return {"load_penalty": label, "requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
            "routed_quality": float(q.mean()), "quality": q.tolist(),
            "share_busy": run["chosen"].count(BUSY) / len(ms)}


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Load-aware routing: p95 latency and routed quality, one engine busy", "",
             f"{report['when']}; load average {report['load_start']} at the start, {report['load_end']} at the "
             "end, on a shared 2-core machine under high load from other jobs (absolute times are noisy; all "
             f"passes ran back to back). Command: `{report['command']}`", "",
             f"{report['requests']} RouterBench test prompts (shuffled, cut to {PROMPT_CHARS} characters), one at "
             "a time through the real gateway (kNN router, lambda 0) to two `thalamus serve-local` processes "
             f"(tiny MoE, {SLOTS} decoding slots, 1 thread each), {BODY['max_tokens']} tokens per answer. "
             f"{BUSY} was kept busy by {STREAMS} background clients of {BACKGROUND_TOKENS}-token generations. "
             f"Measured service time: {report['service_s']:.2f} s per request (one background generation on the "
             f"idle engine / {SLOTS} slots); the penalty charges (running + waiting) x that x `per_second` utility "
             "points (lambda 0: utility = predicted quality).", "",
             "| load penalty | p50 ms | p95 ms | mean ms | routed quality | share to busy engine |",
             "|---|---|---|---|---|---|"]
    for r in report["passes"]:
        lines.append(f"| {r['load_penalty']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['mean_ms']:.0f} | "
                     f"{r['routed_quality']:.3f} | {r['share_busy']:.2f} |")
    lines += ["", "Against the pass without the penalty (goal: p95 -30% or better at equal quality within noise):", ""]
    for r in report["passes"][1:]:
        d = r["vs_off"]
        lines.append(f"- {r['load_penalty']}: p95 {d['p95_change']:+.1%}, routed quality {d['quality_mean']:+.3f} "
                     f"(95% interval over the paired prompts {d['quality_low']:+.3f} .. {d['quality_high']:+.3f})")
    return "\n".join([*lines, ""])


def versus(off: dict[str, Any], on: dict[str, Any]) -> dict[str, float]:
    diff = np.asarray(on["quality"]) - np.asarray(off["quality"])
    half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return {"p95_change": on["p95_ms"] / off["p95_ms"] - 1, "quality_mean": float(diff.mean()),
            "quality_low": float(diff.mean()) - half, "quality_high": float(diff.mean()) + half}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--rates", default="0.05,0.2,1", help="pool_routing.per_second values to compare with off")
    parser.add_argument("--out", type=Path, default=RESULTS / "load_routing")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"when": utc_now(), "command": command("load_routing.py", argv),
                              "load_start": load_average()}
    train, test = mapped().train_test(test_size=0.3, seed=0)
    rows = [int(i) for i in np.random.default_rng(0).permutation(len(test.texts))[:args.n]]
    texts, quality = [test.texts[i][:PROMPT_CHARS] for i in rows], test.quality[rows]
    with tempfile.TemporaryDirectory(prefix="load-routing-") as tmp, engines(Path(tmp)) as urls:
        KNNRouter(k=20, embedder="hashing").fit(train).save(Path(tmp) / "router")
        chat(urls[BUSY], BUSY, "warm up", BODY["max_tokens"])
        service_s = chat(urls[BUSY], BUSY, "Go on.", BACKGROUND_TOKENS) / SLOTS
        chat(urls["engine-b"], "engine-b", "warm up", BODY["max_tokens"])
        rates: list[float | None] = [None, *(float(r) for r in args.rates.split(","))]
        passes = [summarise("off" if rate is None else f"per_second={rate:g}",
                            one_pass(urls, gateway_config(urls, Path(tmp), rate, service_s), texts), quality)
                  for rate in rates]
    for p in passes[1:]:
        p["vs_off"] = versus(passes[0], p)
    report.update(requests=len(texts), service_s=service_s, passes=passes, load_end=load_average())
    write(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
