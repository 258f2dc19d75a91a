"""Conversation affinity (issue 23): switch rate and quality of two-turn conversations with and without it.

MT-Bench (``/work/shared/data/routellm/mt_bench``): 80 questions of two turns each, with GPT-4 judge scores
(1-10) of both turns for GPT-4-1106 and Mixtral-8x7B; a turn's quality is (score - 1) / 9. A kNN router
(MiniLM) is fitted on per-turn rows (each turn's text with that turn's two scores) of half the questions
and routes the conversations of the other half (2-fold cross-fitting by question: no conversation is
routed by a router that saw it). Every conversation is replayed through the real gateway with the openai
SDK: turn 1, then turn 1 + its answer + turn 2, as a chat client sends them, to the replay upstream. With
affinity off every turn is routed on its own text (what the issue's "conversations bounce" measured);
with it on, each ``switch_margin`` is one router (same artifact) of one gateway, and each conversation
carries a session id. Conversation quality is the mean of the two turns' judge scores of the models
that answered them. Caveat: MT-Bench judged each model's turn 2 after its own turn 1, so a switched
conversation's turn-2 score is the new model's score in a context it did not produce (an estimate).

    .venv/bin/python benchmarks/affinity.py [--lambdas 0.05,0.1] [--margins 0.01,0.03,0.1]

Writes benchmarks/results/affinity.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import numpy as np
import openai
import pandas as pd
from bench_report import command, load_average, utc_now, write
from tqdm import tqdm

from thalamus.config import Settings
from thalamus.datasets.common import estimate_tokens, read_jsonl
from thalamus.datasets.pricing import load_price_table, price_of
from thalamus.datasets.routellm import MODELS, PRICE_NAMES, STRONG
from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.knn import KNNRouter

RESULTS = Path(__file__).parent / "results"
ANSWER_TOKENS = 400  # the output tokens a turn's cost is estimated at (MT-Bench answers are a few hundred)


def load_mtbench(data_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The questions (question_id, category, turn1, turn2) and their quality (n, model, turn) in [0, 1]."""
    folder = data_dir / "routellm" / "mt_bench"
    questions = pd.DataFrame(read_jsonl(folder / "question.jsonl"))
    scores: dict[tuple[int, str, int], float] = {}
    for row in read_jsonl(folder / "judgements.jsonl"):
        scores[int(row["question_id"]), str(row["model"]), int(row["turn"])] = float(row["score"])
    quality = np.array([[[(scores[int(q), m, t] - 1) / 9 for t in (1, 2)] for m in MODELS]
                        for q in questions["question_id"]])
    questions["turn1"] = questions["turns"].map(lambda t: str(t[0]))
    questions["turn2"] = questions["turns"].map(lambda t: str(t[1]))
    return questions.drop(columns=["turns"]), quality


def turn_dataset(questions: pd.DataFrame, quality: np.ndarray, rows: np.ndarray, data_dir: Path) -> RoutingDataset:
    """Per-turn routing rows of ``rows``: each turn's text with its own scores; cost at the turn's tokens."""
    table = load_price_table(data_dir)
    prices = {m: price_of(table, PRICE_NAMES[m]) for m in MODELS}
    texts, tasks, q, cost = [], [], [], []
    for i in rows:
        for t, col in enumerate(("turn1", "turn2")):
            text = questions[col].iloc[i]
            tokens = float(estimate_tokens([text])[0]) + (ANSWER_TOKENS + estimate_tokens(
                [questions["turn1"].iloc[i]])[0] if t else 0)
            texts.append(text)
            tasks.append(questions["category"].iloc[i])
            q.append(quality[i, :, t])
            cost.append([prices[m].cost(tokens, ANSWER_TOKENS) for m in MODELS])
    return RoutingDataset(name="mtbench-turns", prompts=pd.DataFrame({"text": texts, "task": tasks}),
                          models=list(MODELS), quality=np.array(q), cost=np.array(cost), cost_estimated=True,
                          prices=prices)


def gateway_config(replay_url: str, artifact: Path, ledger: Path, margins: list[float] | None,
                   prices: dict[str, Any], lam: float) -> dict[str, Any]:
    backends = [{"name": m, "model": f"openai/{m}", "api_base": replay_url + "/v1", "timeout": 30.0,
                 "input_per_m": prices[m].input_per_m, "output_per_m": prices[m].output_per_m} for m in MODELS]
    knob = {"kind": "lambda", "value": lam}
    routers = ({f"m{i}": {"artifact": str(artifact), "knob": knob, "switch_margin": m} for i, m in enumerate(margins)}
               if margins is not None else {"off": {"artifact": str(artifact), "knob": knob}})
    return {"backends": backends, "routers": routers, "ledger": {"url": f"sqlite:///{ledger}"},
            "affinity": {"enabled": margins is not None}, "server": {"embed_batch_ms": 0}}


def converse(sdk: openai.OpenAI, router: str, questions: pd.DataFrame, rows: np.ndarray, tag: str
             ) -> list[tuple[str, str]]:
    """Each conversation of ``rows`` through the gateway: the models that answered turn 1 and turn 2."""
    out = []
    for i in rows:
        headers = {"x-thalamus-session-id": f"{tag}-{questions['question_id'].iloc[i]}"}
        first = [{"role": "user", "content": questions["turn1"].iloc[i]}]
        r1 = sdk.chat.completions.with_raw_response.create(model=f"router:{router}", messages=first,  # type: ignore[arg-type]
                                                           max_tokens=8, extra_headers=headers)
        answer = r1.parse().choices[0].message.content or ""
        second = [*first, {"role": "assistant", "content": answer},
                  {"role": "user", "content": questions["turn2"].iloc[i]}]
        r2 = sdk.chat.completions.with_raw_response.create(model=f"router:{router}", messages=second,  # type: ignore[arg-type]
                                                           max_tokens=8, extra_headers=headers)
        out.append((r1.headers["x-thalamus-model"], r2.headers["x-thalamus-model"]))
    return out


def summarise(pairs: list[tuple[str, str]], rows: np.ndarray, quality: np.ndarray) -> dict[str, Any]:
    idx = {m: j for j, m in enumerate(MODELS)}
    t1 = np.array([quality[i, idx[a], 0] for i, (a, _) in zip(rows, pairs, strict=True)])
    t2 = np.array([quality[i, idx[b], 1] for i, (_, b) in zip(rows, pairs, strict=True)])
    calls = [m for pair in pairs for m in pair]
    return {"n": len(pairs), "switch_rate": float(np.mean([a != b for a, b in pairs])),
            "quality": float(np.mean((t1 + t2) / 2)), "turn2_quality": float(t2.mean()),
            "strong_share": calls.count(STRONG) / len(calls)}


def run_fold(questions: pd.DataFrame, quality: np.ndarray, train: np.ndarray, test: np.ndarray, data_dir: Path,
             lambdas: list[float], margins: list[float], work: Path) -> dict[str, list[tuple[str, str]]]:
    ds = turn_dataset(questions, quality, train, data_dir)
    artifact = work / f"router-{train[0]}"
    KNNRouter(k=10, embedder="minilm").fit(ds).save(artifact)
    pairs: dict[str, list[tuple[str, str]]] = {}
    with ThreadedServer(create_replay_app(), log_level="warning") as replay:
        for lam in lambdas:
            for label, margin_list in (("off", None), ("on", margins)):
                ledger = work / f"ledger-{train[0]}-{lam}-{label}.sqlite"
                config = config_from_dict(gateway_config(replay.url, artifact, ledger, margin_list, ds.prices, lam))
                with ThreadedServer(create_app(config, Settings(cache_dir=work))) as gw:
                    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)
                    names = ["off"] if margin_list is None else [f"m{i}" for i in range(len(margin_list))]
                    for j, name in enumerate(names):
                        key = f"{lam}|off" if margin_list is None else f"{lam}|{margin_list[j]}"
                        pairs[key] = converse(sdk, name, questions, test, f"{train[0]}-{key}")
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", default="0.05,0.1")
    parser.add_argument("--margins", default="0.01,0.03,0.1")
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    margins = [float(x) for x in args.margins.split(",")]
    started, load_start, t0 = utc_now(), load_average(), time.perf_counter()
    questions, quality = load_mtbench(args.data_dir)
    order = np.random.default_rng(args.seed).permutation(len(questions))
    folds = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])]
    merged: dict[str, tuple[list[tuple[str, str]], list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for f in tqdm(range(2), desc="folds"):
            train, test = folds[1 - f], folds[f]
            for key, pairs in run_fold(questions, quality, train, test, args.data_dir, lambdas, margins,
                                       Path(tmp)).items():
                got = merged.setdefault(key, ([], []))
                got[0].extend(pairs)
                got[1].extend(int(i) for i in test)
    results = [{"lambda": float(k.split("|")[0]), "switch_margin": k.split("|")[1]}
               | summarise(p, np.array(rows), quality) for k, (p, rows) in merged.items()]
    report = {"benchmark": "affinity", "command": command("affinity.py", argv), "started": started,
              "load_average_start": load_start, "load_average_end": load_average(),
              "seconds": time.perf_counter() - t0, "questions": len(questions), "models": MODELS,
              "single_model_quality": {m: float(quality[:, j].mean()) for j, m in enumerate(MODELS)},
              "results": results}
    write(RESULTS / "affinity", report, markdown(report))


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Conversation affinity: switch rate and quality of two-turn conversations", "",
             f"{r['started']}; load average {r['load_average_start']} at the start, {r['load_average_end']} at the "
             f"end (shared 2-core machine); {r['seconds']:.0f} s. Command: `{r['command']}`", "",
             f"MT-Bench, {r['questions']} questions x 2 turns, GPT-4 judge scores of {' and '.join(r['models'])} "
             "(quality = (score - 1) / 9); kNN router (MiniLM) cross-fitted on per-turn rows (2 folds by "
             "question); every conversation through the real gateway and the openai SDK. Single models: "
             + ", ".join(f"{m} {q:.3f}" for m, q in r["single_model_quality"].items()) + ".", "",
             "| lambda | affinity (switch_margin) | conversations | switch rate | quality | turn-2 quality | "
             "GPT-4 share of calls |", "|---|---|---|---|---|---|---|"]
    for x in r["results"]:
        margin = "off" if x["switch_margin"] == "off" else f"on ({x['switch_margin']})"
        lines.append(f"| {x['lambda']:g} | {margin} | {x['n']} | {x['switch_rate']:.1%} | {x['quality']:.3f} | "
                     f"{x['turn2_quality']:.3f} | {x['strong_share']:.1%} |")
    lines += ["", "Switch rate: share of conversations whose turn 2 was answered by another model than turn 1. "
              "A switched conversation's turn-2 score is the new model's MT-Bench score, which was judged after "
              "its own turn 1 (an estimate of the switched conversation's quality).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
