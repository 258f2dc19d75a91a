"""Named routing policies (issue 23): route-selection accuracy with task names and one-line descriptions.

For each dataset, every task becomes a policy: its name and a one-line description written here (no
examples, no labels). A sample of the dataset's prompts (``--per-dataset``, seeded) is matched with the
gateway's own matcher (gateway/learning/policies.py) on the MiniLM embedder that routers use by default:
top-1 accuracy is the share of prompts whose most similar policy is their own task; with the calibrated
thresholds, coverage is the share of prompts that match a policy at all and precision the accuracy among
them. References: one over the number of tasks (random), the largest task's share (majority).

    .venv/bin/python benchmarks/policies.py [--per-dataset 500] [--embedder minilm]

Writes benchmarks/results/policies.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
from bench_report import command, load_average, utc_now, write
from tqdm import tqdm

from thalamus.datasets.registry import load_dataset
from thalamus.gateway.config import PolicyConfig
from thalamus.gateway.learning.policies import PolicyMatcher
from thalamus.router.embedders import get_embedder

RESULTS = Path(__file__).parent / "results"
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "routerbench_subset": {
        "arc-challenge": "Grade-school science multiple-choice questions (physics, biology, earth science).",
        "mbpp": "Write a short Python function that solves a basic programming task, with tests.",
        "winogrande": "Fill in the blank of a sentence with the option that makes common sense (pronoun resolution).",
    },
    "llmrouter_dcrouter": {
        "agentverse-logicgrid": "Logic grid puzzles: deduce who lives in which house from a list of clues.",
        "agentverse-mgsm": "Multilingual grade-school math word problems.",
        "commongen": "Write a sentence that uses all of the given concept words.",
        "natural_qa": "Open-domain factual questions as people type them into a search engine.",
        "trivia_qa": "Trivia questions about history, geography, entertainment and general knowledge.",
        "mmlu": "Multiple-choice exam questions across academic subjects.",
        "gpqa": "Graduate-level multiple-choice questions in biology, physics and chemistry.",
        "mbpp": "Write a short Python function that solves a basic programming task, with tests.",
        "human_eval": "Complete a Python function from its signature and docstring.",
        "gsm8k": "Grade-school math word problems solved step by step.",
        "commonsense_qa": "Multiple-choice questions that need everyday common sense.",
        "math": "Competition mathematics problems: algebra, geometry, number theory, with LaTeX.",
        "openbook_qa": "Elementary science multiple-choice questions answered from basic science facts.",
        "arc_challenge": "Grade-school science multiple-choice questions (physics, biology, earth science).",
    },
    "routerdc_7model": {
        "MATH_prealgebra": "Pre-algebra competition math problems: fractions, ratios, simple equations.",
        "arc_challenge": "Hard grade-school science multiple-choice questions.",
        "arc_easy": "Easy grade-school science multiple-choice questions.",
        "ceval": "Chinese multiple-choice exam questions across academic and professional subjects.",
        "cmmlu": "Chinese multiple-choice questions on Chinese knowledge, culture and academic subjects.",
        "gsm8k": "Grade-school math word problems solved step by step.",
        "humaneval": "Complete a Python function from its signature and docstring.",
        "javascript": "Complete a JavaScript function from its signature and comment.",
        "mbpp": "Write a short Python function that solves a basic programming task, with tests.",
        "mmlu": "English multiple-choice exam questions across academic subjects.",
    },
    "routellm_mtbench": {
        "writing": "Creative and professional writing: blog posts, emails, stories, poems.",
        "roleplay": "Pretend to be a character or person and answer in their voice.",
        "reasoning": "Logic puzzles and riddles that need careful reasoning.",
        "math": "Math problems: arithmetic, geometry, probability, equations.",
        "coding": "Write or explain program code and algorithms.",
        "extraction": "Extract structured information from a given text into a list, table or JSON.",
        "stem": "Explain science, technology, engineering and medicine concepts.",
        "humanities": "Discuss history, economics, philosophy, law, politics and society.",
    },
}


def evaluate(name: str, matcher: PolicyMatcher, texts: list[str], tasks: np.ndarray) -> dict[str, Any]:
    vectors = matcher.embedder.embed(texts)
    sims = matcher.similarities(vectors)
    best = sims.argmax(axis=1)
    names = np.array([p.name for p in matcher.policies])
    top1 = names[best] == tasks
    matched = sims[np.arange(len(texts)), best] >= matcher.thresholds[best]
    shares = np.unique(tasks, return_counts=True)[1] / len(tasks)
    return {"dataset": name, "n": len(texts), "tasks": len(names), "top1_accuracy": float(top1.mean()),
            "coverage": float(matched.mean()),
            "precision_when_matched": float(top1[matched].mean()) if matched.any() else None,
            "random": 1 / len(names), "majority": float(shares.max()),
            "thresholds": {str(n): float(t) for n, t in zip(names, matcher.thresholds, strict=True)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-dataset", type=int, default=500)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started, load_start, t0 = utc_now(), load_average(), time.perf_counter()
    embedder = get_embedder(args.embedder)
    results = []
    for name, descriptions in tqdm(DESCRIPTIONS.items(), desc="datasets"):
        ds = load_dataset(name)
        rows = np.arange(ds.n_prompts)
        if len(rows) > args.per_dataset:
            rows = np.sort(np.random.default_rng(args.seed).choice(rows, args.per_dataset, replace=False))
        policies = [PolicyConfig(name=task, description=text, models=["any"]) for task, text in descriptions.items()]
        matcher = PolicyMatcher(policies, embedder)
        texts = [str(ds.texts[i]) for i in rows]
        results.append(evaluate(name, matcher, texts, np.asarray(ds.tasks)[rows].astype(str)))
    report = {"benchmark": "policies", "command": command("policies.py", argv), "started": started,
              "load_average_start": load_start, "load_average_end": load_average(),
              "seconds": time.perf_counter() - t0, "embedder": args.embedder, "results": results}
    write(RESULTS / "policies", report, markdown(report))


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Named policies: route-selection accuracy from task names and one-line descriptions", "",
             f"{r['started']}; load average {r['load_average_start']} at the start, {r['load_average_end']} at the "
             f"end (shared 2-core machine); {r['seconds']:.0f} s. Command: `{r['command']}`", "",
             f"Each task of a dataset is a policy (its name and a one-line description, no examples, no labels), "
             f"matched on the `{r['embedder']}` embedder by the gateway's matcher; thresholds calibrated from the "
             "policies themselves (gateway/learning/policies.py).", "",
             "| dataset | prompts | tasks | top-1 accuracy | random | majority | coverage at the calibrated "
             "thresholds | accuracy when matched |", "|---|---|---|---|---|---|---|---|"]
    for x in r["results"]:
        prec = "-" if x["precision_when_matched"] is None else f"{x['precision_when_matched']:.1%}"
        lines.append(f"| {x['dataset']} | {x['n']} | {x['tasks']} | {x['top1_accuracy']:.1%} | {x['random']:.1%} | "
                     f"{x['majority']:.1%} | {x['coverage']:.1%} | {prec} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
