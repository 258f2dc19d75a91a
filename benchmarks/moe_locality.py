"""Local routing consistency (SRP, SCH) of the trained small MoE next to a random-weight one.

Random-weight MoE models route almost uniformly, so every expert-cache policy looks alike on them. This
measures how much locality a model trained by ``thalamus train-moe`` has: routing traces (top-k experts of
every token at every MoE layer) on held-out prompts of the training datasets, framed as the chat user turn
the server renders, for

- ``trained``: the folder ``--model`` (default ``<cache>/models/moe-trained``);
- ``random``: the same config with freshly initialised weights (``--seed``), same tokenizer, same texts;
- ``random init 0.5``: the same, initialised like ``make-tiny-moe``'s models (``initializer_range`` 0.5,
  which spreads router logits far wider than transformers' default 0.02);
- ``iid uniform``: simulated traces where every token picks k distinct experts uniformly at random.

Metrics (thalamus.serving.locality, after Liang et al., arXiv 2505.16056): SRP(m), the best F1 of
predicting one fixed expert set per m-token segment, and SCH(m, c), the best hit rate of a c-expert
per-layer cache that sees m tokens ahead; next to them the hit rate of a static cache of the c globally
most used experts per layer (popularity without locality). Also the held-out LM loss and the largest expert's share of
activations (load balance).

    .venv/bin/python benchmarks/moe_locality.py [--model DIR] [--prompts 240] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_report import command, load_average, utc_now, write

from thalamus.serving.locality import Trace, routing_traces, sch, srp, static_hit_rate
from thalamus.training.moe_corpus import chat_text, load_corpus

SEGMENTS = (1, 2, 4, 8, 16, 32, 64)
SCH_SEGMENTS = (4, 16, 64)
CACHES = (2, 3, 4, 6)
OUT = Path(__file__).resolve().parent / "results" / "moe_locality"


def held_out_texts(n: int) -> list[tuple[str, str]]:
    """Up to ``n`` held-out prompts, taken round-robin over the datasets so no one dataset dominates."""
    by_name: dict[str, list[str]] = {}
    for name, text in load_corpus().held_out:
        by_name.setdefault(name, []).append(text)
    picked: list[tuple[str, str]] = []
    while len(picked) < n and any(by_name.values()):
        for name, texts in by_name.items():
            if texts and len(picked) < n:
                picked.append((name, chat_text(texts.pop(0))))
    return picked


def uniform_traces(like: list[Trace], experts: int, seed: int) -> list[Trace]:
    rng = np.random.default_rng(seed)
    out = []
    for trace in like:
        layers, tokens, k = trace.shape
        out.append(np.argsort(rng.random((layers, tokens, experts)), axis=-1)[..., :k])
    return out


def heldout_loss(model: Any, tokenizer: Any, texts: list[str], max_tokens: int) -> float:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :max_tokens]
            if ids.shape[1] < 2:
                continue
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def scores(traces: list[Trace], experts: int) -> dict[str, Any]:
    share = np.bincount(np.concatenate([t.ravel() for t in traces]), minlength=experts)
    return {"srp": {str(m): srp(traces, experts, m) for m in SEGMENTS},
            "sch": {str(m): {str(c): sch(traces, experts, m, c) for c in CACHES} for m in SCH_SEGMENTS},
            "static": {str(c): static_hit_rate(traces, experts, c) for c in CACHES},
            "max_expert_share": float(share.max() / share.sum())}


def measure(folder: Path, prompts: int, max_tokens: int, seed: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trained = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    randoms = {}
    for name, init in (("random", trained.config.initializer_range), ("random init 0.5", 0.5)):
        config = copy.deepcopy(trained.config)
        config.initializer_range = init
        torch.manual_seed(seed)
        randoms[name] = AutoModelForCausalLM.from_config(config).eval()
    texts = [text for _, text in held_out_texts(prompts)]
    experts = int(trained.config.num_local_experts)
    started = time.perf_counter()
    models = {"trained": trained, **randoms}
    traces = {name: routing_traces(model, tokenizer, texts, max_tokens) for name, model in models.items()}
    traces["iid uniform"] = uniform_traces(traces["trained"], experts, seed)
    report = {name: scores(t, experts) for name, t in traces.items()}
    for name, model in models.items():
        report[name]["heldout_loss"] = heldout_loss(model, tokenizer, texts[:60], max_tokens)
    tokens = [t.shape[1] for t in traces["trained"]]
    return {"models": report, "prompts": len(texts), "tokens": int(sum(tokens)),
            "mean_tokens": float(np.mean(tokens)), "experts": experts, "top_k": int(trained.config.num_experts_per_tok),
            "layers": int(trained.config.num_hidden_layers), "seconds": round(time.perf_counter() - started, 1)}


def markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    names = list(models)
    t = report["training"]
    lines = [f"# Local routing consistency of the trained MoE ({utc_now()})", "",
             f"`{report['command']}`", "",
             f"Model: {report['layers']} layers x {report['experts']} experts, top-{report['top_k']}, "
             f"trained by `thalamus train-moe` for {t.get('minutes')} min ({t.get('steps')} steps, "
             f"{t.get('tokens')} tokens, 1 torch thread, load {report['load']}); LM loss "
             f"{_f(t.get('loss_first10'))} (first 10 steps) -> {_f(t.get('loss_last10'))} (last 10). "
             f"Held-out prompts: {report['prompts']} ({report['tokens']} tokens, "
             f"{report['mean_tokens']:.0f} a prompt, cut at {report['max_tokens']}).", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             "| held-out LM loss | " + " | ".join(_f(models[n].get("heldout_loss")) for n in names) + " |",
             "| largest expert's share (layers pooled) | "
             + " | ".join(_f(models[n]["max_expert_share"]) for n in names) + " |"]
    lines += [f"| SRP(m={m}) | " + " | ".join(_f(models[n]["srp"][str(m)]) for n in names) + " |"
              for m in SEGMENTS if m > 1]
    lines += [f"| SCH(m={m}, cache={c}) | " + " | ".join(_f(models[n]["sch"][str(m)][str(c)]) for n in names)
              + " |" for m in SCH_SEGMENTS for c in CACHES]
    lines += [f"| static cache={c} | " + " | ".join(_f(models[n]["static"][str(c)]) for n in names) + " |"
              for c in CACHES]
    lines += ["", "SRP(m): best F1 of one fixed expert set per m-token segment (1.0: a segment keeps its "
              "experts). SCH(m, c): hit rate of a per-layer cache of c experts filled with each segment's "
              "most used ones (an oracle m tokens ahead). Both over sliding segments inside each prompt, "
              "all MoE layers. static cache=c: a fixed per-layer cache of the c experts most used over all "
              "prompts. `iid uniform`: every token picks its experts uniformly at random.", ""]
    return "\n".join(lines)


def _f(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, values in report["models"].items():
        left.plot(SEGMENTS[1:], [values["srp"][str(m)] for m in SEGMENTS[1:]], marker="o", label=name)
        line = right.plot(CACHES, [values["sch"]["16"][str(c)] for c in CACHES], marker="o", label=name)[0]
        right.plot(CACHES, [values["static"][str(c)] for c in CACHES], ls=":", color=line.get_color())
    left.set_xscale("log", base=2)
    left.set(xlabel="segment length m (tokens)", ylabel="SRP", title="segment routing best F1")
    left.set_xticks(SEGMENTS[1:], [str(m) for m in SEGMENTS[1:]], minor=False)
    left.minorticks_off()
    right.set(xlabel=f"cache size (experts per layer; top-k = {report['top_k']})", ylabel="SCH",
              title="SCH, m = 16 (dotted: static cache)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main(argv: list[str] | None = None) -> None:
    from thalamus.serving.models import models_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=models_dir() / "moe-trained")
    ap.add_argument("--prompts", type=int, default=240)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    report = measure(args.model, args.prompts, args.max_tokens, args.seed)
    summary_file = args.model / "training.json"
    training = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    training.pop("losses", None)
    report.update(command=command("moe_locality.py", argv), model=str(args.model), load=load_average(),
                  max_tokens=args.max_tokens, training=training, loss_curve=_curve(args.model))
    write(args.out, report, markdown(report))
    plot(report, args.out)


def _curve(folder: Path) -> list[tuple[int, float, float]]:
    """Every 10th (step, lm loss, aux loss) of the run, for the record."""
    file = folder / "training.json"
    rows = json.loads(file.read_text()).get("losses", []) if file.is_file() else []
    return [tuple(r) for r in rows[::10]] + ([tuple(rows[-1])] if rows else [])


if __name__ == "__main__":
    main()
