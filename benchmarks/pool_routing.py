"""Pool-aware routing (issue 16): model swaps, latency and routed quality with and without it, one run.

Three random-weight dense models of different sizes (so their load times differ) are served by the
real local server under a memory budget that holds the large one alone or the two smaller ones
together. RouterBench's quality matrix is mapped onto them (small <- Mistral-7B, medium <- Mixtral-8x7B,
large <- Yi-34B); a kNN router (hashing embedder) is fitted on its train split, and the same shuffled
mix of test prompts is replayed through the real gateway (``model="auto"``, one request at a time, 4
tokens each) once with ``pool_routing`` off and once per switching-cost rate. Each pass starts with a
fresh server whose models were each loaded (so load times are measured) and the large one resident.
Prompts are cut to their first 300 characters (the router and the models see the same text).
Swaps are the server's own load counts; latency is the client's; routed quality is the dataset's
quality of the mapped model each request went to.

    .venv/bin/python benchmarks/pool_routing.py [--n 100] [--rates 0.05,0.2]

Writes benchmarks/results/pool_routing.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import numpy as np
from bench_report import command, load_average, utc_now, write

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app as create_gateway
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.knn import KNNRouter
from thalamus.serving.app import create_app as create_local_server
from thalamus.serving.config import ServingConfig
from thalamus.serving.pool import estimate_bytes

RESULTS = Path(__file__).parent / "results"
# local name -> (hidden size, layers, the RouterBench model whose quality it takes)
LOCAL = {"local-small": (64, 2, "mistralai/mistral-7b-chat"),
         "local-medium": (192, 3, "mistralai/mixtral-8x7b-chat"),
         "local-large": (384, 6, "zero-one-ai/Yi-34B-Chat")}
BODY: dict[str, Any] = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
# the first load of a fresh server also warms transformers up: small is loaded again once warm; under the
# budget this order leaves the large model resident
WARM_UP = ("local-small", "local-large", "local-medium", "local-small", "local-large")
PROMPT_CHARS = 300  # replayed prompts are cut here, so prefill on these CPU models stays well under loads


def make_models(root: Path) -> dict[str, int]:
    """Save the three dense models (SmolLM2's tokenizer); their weight bytes as the pool counts them."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from thalamus.serving.models import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    eos = int(tokenizer.eos_token_id)
    sizes = {}
    for name, (hidden, layers, _) in LOCAL.items():
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=1024, tie_word_embeddings=True, eos_token_id=eos,
                             pad_token_id=eos, bos_token_id=int(tokenizer.bos_token_id or eos))
        AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        sizes[name] = estimate_bytes(root / name, "float32")
    return sizes


def mapped_dataset() -> RoutingDataset:
    ds = load_dataset("routerbench_subset").select_models([m for _, _, m in LOCAL.values()])
    return RoutingDataset(name="routerbench->local", prompts=ds.prompts, models=list(LOCAL),
                          quality=ds.quality, cost=ds.cost)


def workload(test: RoutingDataset, n: int) -> list[int]:
    """A shuffled mix of test prompts (the three tasks interleaved), the same for every pass."""
    order = np.random.default_rng(0).permutation(len(test.texts))
    return [int(i) for i in order[:n]]


def server_loads(url: str) -> int:
    data = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    return sum(int(m["loads"]) for m in data)


def load_times(url: str) -> dict[str, float]:
    data = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    return {m["id"]: float(m["load_seconds_last"]) for m in data if m["load_seconds_last"] is not None}


def gateway_config(local_url: str, artifact: Path, ledger: Path, rate: float | None) -> dict[str, Any]:
    backends = [{"name": m, "model": f"openai/{m}", "api_base": f"{local_url}/v1", "input_per_m": 0.0,
                 "output_per_m": 0.0, "timeout": 300, "max_retries": 0} for m in LOCAL]
    # "last": the first load of a fresh server also pays for warming transformers up, which the mean would keep
    pool = {"enabled": rate is not None, "per_second": rate or 0.0, "estimate": "last", "poll_interval_s": 1.0}
    return {"backends": backends, "pool_routing": pool,
            "routers": {"knn": {"artifact": str(artifact), "aliases": ["auto"],
                                "knob": {"kind": "lambda", "value": 0.0}}},
            "ledger": {"url": f"sqlite:///{ledger}", "flush_ms": 50}}


def replay(gateway_url: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Every prompt once, in order, through the gateway: the model that answered and the latency (ms)."""
    chosen, ms = [], []
    with httpx.Client(timeout=300) as client:
        for text in texts:
            t0 = time.perf_counter()
            r = client.post(f"{gateway_url}/v1/chat/completions",
                            json={"model": "auto", "messages": [{"role": "user", "content": text}], **BODY})
            ms.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            chosen.append(r.headers["x-thalamus-model"])
    return chosen, np.asarray(ms)


def one_pass(root: Path, budget: int, artifact: Path, texts: list[str], rate: float | None,
             tag: str) -> dict[str, Any]:
    serving = ServingConfig.from_dict({"memory_budget": budget, "torch_threads": 1, "batch_window_ms": 0,
                                       "models": [{"name": m, "path": str(root / m)} for m in LOCAL]})
    with ThreadedServer(create_local_server(serving)) as local:
        with httpx.Client(timeout=300) as client:  # every model's load measured warm, the large one left resident
            for name in WARM_UP:
                client.post(f"{local.url}/v1/chat/completions", json={
                    "model": name, "messages": [{"role": "user", "content": "hi"}], **BODY}).raise_for_status()
        measured, before = load_times(local.url), server_loads(local.url)
        config = config_from_dict(gateway_config(local.url, artifact, root / f"ledger-{tag}.sqlite", rate))
        with ThreadedServer(create_gateway(config)) as gateway:
            t0 = time.perf_counter()
            chosen, ms = replay(gateway.url, texts)
            wall = time.perf_counter() - t0
        swaps = server_loads(local.url) - before
    return {"rate": rate, "chosen": chosen, "ms": ms, "swaps": swaps, "wall_s": wall, "load_s": measured}


def summarise(run: dict[str, Any], quality: np.ndarray, baseline: list[str] | None) -> dict[str, Any]:
    names = list(LOCAL)
    q = quality[np.arange(len(run["chosen"])), [names.index(m) for m in run["chosen"]]]
    ms = run["ms"]
    return {"pool_routing": "off" if run["rate"] is None else f"per_second={run['rate']:g}",
            "requests": len(ms), "swaps": run["swaps"], "mean_ms": float(ms.mean()),
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "routed_quality": float(q.mean()), "wall_s": run["wall_s"],
            "share": {m: run["chosen"].count(m) / len(ms) for m in names},
            "changed_vs_off": None if baseline is None else
            sum(a != b for a, b in zip(run["chosen"], baseline, strict=True)) / len(ms),
            "load_s_last": run["load_s"]}


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    labels = [r["pool_routing"] for r in rows]
    for ax, key, title in zip(axes, ("swaps", "mean_ms", "routed_quality"),
                              ("model swaps (server loads)", "mean latency (ms)", "routed quality"), strict=True):
        ax.bar(labels, [r[key] for r in rows], color=["#888"] + ["#2a7"] * (len(rows) - 1))
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=20)
    axes[2].set_ylim(min(r["routed_quality"] for r in rows) - 0.05, max(r["routed_quality"] for r in rows) + 0.02)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Pool-aware routing: swaps, latency, routed quality", "",
             f"{report['when']}; load average {report['load_start']} at the start, {report['load_end']} at the end "
             f"(shared 2-core machine). Command: `{report['command']}`", "",
             f"{report['requests']} RouterBench test prompts (mixed ARC/MBPP/Winogrande, shuffled, the same for "
             f"every pass, cut to {PROMPT_CHARS} characters) through the real gateway (`model=\"auto\"`, kNN "
             f"router, lambda 0: pure predicted quality) to the real local server; budget "
             f"{report['budget_bytes'] / 1e6:.0f} MB for models of "
             + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in report["model_bytes"].items())
             + " (the large one alone, or the two smaller ones). 4 tokens per answer, one request at a time.", "",
             "| pool routing | swaps | mean ms | p50 ms | p95 ms | routed quality | decisions changed | "
             "share small/medium/large |", "|---|---|---|---|---|---|---|---|"]
    for r in report["passes"]:
        share = "/".join(f"{r['share'][m]:.2f}" for m in LOCAL)
        changed = "-" if r["changed_vs_off"] is None else f"{r['changed_vs_off']:.1%}"
        lines.append(f"| {r['pool_routing']} | {r['swaps']} | {r['mean_ms']:.0f} | {r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | {r['routed_quality']:.3f} | {changed} | {share} |")
    first = report["passes"][0]
    loads = ", ".join(f"{k} {v:.2f} s" for k, v in first["load_s_last"].items())
    lines += ["", f"Measured load times before the first pass (evictions included): {loads}; the gateway "
              "expects a model's last measured load time (`estimate: last`).",
              "`per_second` is utility points per expected second of loading charged to a candidate "
              "that is not resident (docs/serving.md, \"Pool-aware routing\").", "",
              "![pool routing](pool_routing.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rates", default="0.05,0.2", help="pool_routing.per_second values to compare with off")
    parser.add_argument("--out", type=Path, default=RESULTS / "pool_routing")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"when": utc_now(), "command": command("pool_routing.py", argv),
                              "load_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="pool-routing-") as tmp:
        root = Path(tmp)
        sizes = make_models(root)
        budget = int(sizes["local-large"] * 1.1)
        train, test = mapped_dataset().train_test(test_size=0.3, seed=0)
        artifact = root / "router"
        KNNRouter(k=20, embedder="hashing").fit(train).save(artifact)
        rows = workload(test, args.n)
        texts, quality = [test.texts[i][:PROMPT_CHARS] for i in rows], test.quality[rows]
        runs = [one_pass(root, budget, artifact, texts, None, "off")]
        runs += [one_pass(root, budget, artifact, texts, float(r), f"r{r}") for r in args.rates.split(",")]
    passes = [summarise(runs[0], quality, None)] + [summarise(r, quality, runs[0]["chosen"]) for r in runs[1:]]
    report.update(requests=len(texts), budget_bytes=budget, model_bytes=sizes, passes=passes,
                  load_end=load_average())
    write(args.out, report, markdown(report))
    plot(passes, args.out.with_suffix(".png"))
    print(json.dumps({p["pool_routing"]: [p["swaps"], round(p["mean_ms"])] for p in passes}))


if __name__ == "__main__":
    main()
