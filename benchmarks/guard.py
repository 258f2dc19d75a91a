"""The guard stage (issue 23): latency per request and false-positive rate on the bundled datasets' prompts.

Every prompt of each dataset (``--per-dataset`` at most, a seeded sample) is one chat request (a user
message) through ``GuardStage.apply`` with the three built-in checks (``secrets``, ``pii``, ``injection``)
in ``log`` mode, so each check scans every prompt. These prompts are benchmark questions, not attacks and
not personal data, so every finding is counted as a false positive (an upper bound: a few datasets quote
e-mail addresses or "ignore the previous instructions" puzzles on purpose); the rules that fired and a
few examples are reported. Latency is the stage's own time per request (``perf_counter`` around
``apply``), in this process, single-threaded.

    .venv/bin/python benchmarks/guard.py [--per-dataset 2000]

Writes benchmarks/results/guard.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_report import command, load_average, percentiles, utc_now, write
from tqdm import tqdm

from thalamus.datasets.registry import SPECS, load_dataset
from thalamus.gateway.config.guard import GuardConfig
from thalamus.gateway.core.call import Call
from thalamus.gateway.core.guard import GuardStage
from thalamus.gateway.core.request import chat_view
from thalamus.ledger.row import LedgerRow

RESULTS = Path(__file__).parent / "results"
CHECKS = ("secrets", "pii", "injection")


def measure(stage: GuardStage, texts: list[str]) -> dict[str, Any]:
    """Per-request latency and findings of ``texts``."""
    ms: list[float] = []
    flagged, rules = Counter[str](), Counter[str]()
    examples: dict[str, str] = {}
    for text in texts:
        body = {"model": "router:x", "messages": [{"role": "user", "content": text}]}
        view, call = chat_view(body, body), Call(row=LedgerRow(id="b", created_at=0.0))
        t0 = time.perf_counter()
        stage.apply(call, view)
        ms.append((time.perf_counter() - t0) * 1000)
        for hit in (call.row.guard or {}).get("findings", []):
            flagged[hit["check"]] += 1
            for rule in hit["rules"]:
                rules[f"{hit['check']}:{rule}"] += 1
                examples.setdefault(f"{hit['check']}:{rule}", text[:160].replace("\n", " "))
    n = len(texts)
    return {"n": n, "latency": percentiles(np.array(ms)), "false_positive_rate": {c: flagged[c] / n for c in CHECKS},
            "rules": dict(rules), "examples": examples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-dataset", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started, load_start, t0 = utc_now(), load_average(), time.perf_counter()
    stage = GuardStage(GuardConfig.model_validate({"checks": [{"check": c, "action": "log"} for c in CHECKS]}))
    out = {}
    for name in tqdm(sorted(SPECS), desc="datasets"):
        texts = load_dataset(name).texts
        if len(texts) > args.per_dataset:
            pick = np.random.default_rng(args.seed).choice(len(texts), args.per_dataset, replace=False)
            texts = [texts[i] for i in sorted(pick)]
        out[name] = measure(stage, [str(t) for t in texts])
    report = {"benchmark": "guard", "command": command("guard.py", argv), "started": started,
              "load_average_start": load_start, "load_average_end": load_average(),
              "seconds": time.perf_counter() - t0, "checks": list(CHECKS), "datasets": out}
    write(RESULTS / "guard", report, markdown(report))


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Guard stage: latency and false positives on the datasets' prompts", "",
             f"{r['started']}; load average {r['load_average_start']} at the start, {r['load_average_end']} at the "
             f"end (shared 2-core machine); {r['seconds']:.0f} s. Command: `{r['command']}`", "",
             "The three built-in checks (secrets, pii, injection) on every sampled prompt as one chat request; "
             "every finding on these benchmark prompts counts as a false positive.", "",
             "| dataset | prompts | p50 ms | p99 ms | secrets FP | pii FP | injection FP | rules that fired |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in r["datasets"].items():
        fp = d["false_positive_rate"]
        fired = ", ".join(f"{k} {v}" for k, v in sorted(d["rules"].items())) or "none"
        lines.append(f"| {name} | {d['n']} | {d['latency']['p50_ms']:.3f} | {d['latency']['p99_ms']:.3f} | "
                     f"{fp['secrets']:.2%} | {fp['pii']:.2%} | {fp['injection']:.2%} | {fired} |")
    lines += ["", "Examples (first prompt per rule, cut to 160 characters):", ""]
    for name, d in r["datasets"].items():
        for rule, text in d["examples"].items():
            lines.append(f"- {name}, {rule}: {text!r}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
