"""``onboard``: give a cluster router's artifact a profile for a model from a few graded probe answers.

Steps: load the router; pick ``n`` probe prompts stratified over its groups (training/probes.py); send
each to the model's backend through the gateway's own backend code (litellm or the OpenAI-compatible
relay, the config's timeouts, retries on retryable errors with backoff), recording tokens and USD cost
by the backend's prices; grade the answers (training/graders.py); add the model to the router with a
prior (or update the profile of a model it knows) and save a new artifact directory, ready for
``thalamus rollout`` to shadow or canary.

Resumable: every answer is appended to ``OUT/answers.jsonl`` as it arrives (keyed by the prompt's hash),
and a re-run sends only the probes without an answer there. ``OUT/onboard.json`` records what was done.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thalamus.datasets.schema import stable_hash
from thalamus.errors import ConfigError, DataError
from thalamus.gateway.config import GatewayConfig
from thalamus.gateway.learning.judge_score import judge_messages, parse_score
from thalamus.gateway.upstream.backends import make_backend
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.checks import UpstreamError
from thalamus.gateway.wire.protocol import answer_text, estimate_prompt_tokens, estimate_tokens, token_count
from thalamus.router.base import Router, artifact_version
from thalamus.router.cluster import ClusterRouter
from thalamus.training.graders import GRADERS, agreement_scores, recorded_scores, reference_scores
from thalamus.training.probes import ProbeSet, assignments, choose_probes

ANSWERS_FILE = "answers.jsonl"
ONBOARD_FILE = "onboard.json"
Progress = Callable[[int, float], None]  # (answers done, USD spent so far)


@dataclass
class OnboardResult:
    directory: Path
    version: str
    model: str
    grader: str
    probes: int
    graded: int
    failed: int
    spent_usd: float
    seconds: float
    profile: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


def load_cluster(router_dir: str | Path) -> ClusterRouter:
    router = Router.load(router_dir)
    if not isinstance(router, ClusterRouter):
        raise ConfigError(f"{router_dir}: onboarding needs a cluster router (models as per-group profiles); "
                          f"this artifact is {router.name!r}: train one with `thalamus train cluster`")
    return router


# -- sending --------------------------------------------------------------------------------------
def read_answers(path: Path) -> dict[str, dict[str, Any]]:
    """Answers already collected, by prompt hash (failed ones are left out, so they are sent again)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key = item["prompt_sha1"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: line {i} is not an answer record ({exc}); delete the line or the file "
                            "to send that probe again") from None
        if item.get("answer") is not None:
            done[key] = item
    return done


def price(backend: Backend, usage: Any, messages: list[dict[str, Any]], answer: str) -> tuple[int, int, float]:
    """(prompt tokens, completion tokens, USD) by the backend's prices; tokens estimated without usage."""
    prompt = token_count(usage, "prompt_tokens")
    done = token_count(usage, "completion_tokens")
    p = prompt if prompt is not None else estimate_prompt_tokens(messages)
    c = done if done is not None else estimate_tokens(answer)
    return p, c, backend.config.cost(p, c)  # the one price rule


async def ask(backend: Backend, messages: list[dict[str, Any]], max_tokens: int | None,
              retries: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One completion (``extra``: more body fields) with retries on retryable upstream errors (backoff, or the
    upstream's Retry-After)."""
    body: dict[str, Any] = {"model": backend.name, "messages": messages, **(extra or {})}
    if max_tokens:
        body["max_tokens"] = max_tokens
    for attempt in range(retries + 1):
        try:
            return await backend.complete(body)
        except UpstreamError as exc:
            if exc.kind != "retry" or attempt == retries:
                raise
            await asyncio.sleep(min(exc.retry_after or 0.2 * 2**attempt, 10.0))
    raise AssertionError("unreachable")


async def _probe_one(backend: Backend, text: str, row: int, max_tokens: int | None) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    record: dict[str, Any] = {"row": int(row), "prompt_sha1": stable_hash(text), "model": backend.name}
    try:
        response = await ask(backend, messages, max_tokens, backend.config.max_retries)
    except UpstreamError as exc:
        return record | {"answer": None, "error": f"{exc.kind} {exc.status}: {exc.message}", "cost_usd": None}
    answer = answer_text(response)
    p, c, cost = price(backend, response.get("usage"), messages, answer)
    return record | {"answer": answer, "prompt_tokens": p, "completion_tokens": c, "cost_usd": cost, "error": None}


async def collect(backend: Backend, texts: list[str], rows: np.ndarray, out: Path, max_tokens: int | None = None,
                  concurrency: int = 4, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Every probe's answer record, from ``out/answers.jsonl`` or sent now (and appended there)."""
    path = out / ANSWERS_FILE
    done = read_answers(path)
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for k in range(len(rows)):
        key = stable_hash(texts[k])
        if key in done:
            records[k] = done[key]
        else:
            todo.append(k)
    spent = sum(float(r.get("cost_usd") or 0.0) for r in records.values())
    if progress:
        progress(len(records), spent)
    gate = asyncio.Semaphore(concurrency)

    async def one(k: int) -> None:
        nonlocal spent
        async with gate:
            record = await _probe_one(backend, texts[k], int(rows[k]), max_tokens)
        records[k] = record
        spent += float(record.get("cost_usd") or 0.0)
        with path.open("a") as fh:  # one line per answer as it comes: a killed run keeps what it paid for
            fh.write(json.dumps(record) + "\n")
        if progress:
            progress(len(records), spent)

    out.mkdir(parents=True, exist_ok=True)
    try:
        await asyncio.gather(*(one(k) for k in todo))
    finally:
        await backend.aclose()
    return [records[k] for k in range(len(rows))]


async def judge_scores(config: GatewayConfig, texts: list[str], answers: list[str | None],
                       concurrency: int = 4) -> np.ndarray:
    """The configured judge's absolute score of each answer (NaN: no answer, or an unparseable reply)."""
    if config.judge is None:
        raise ConfigError("grader 'judge': the config has no 'judge' section; add judge: {backend: NAME}")
    judge = config.judge
    backend = make_backend(config.backend(judge.backend))
    gate = asyncio.Semaphore(concurrency)

    async def one(question: str, answer: str | None) -> float:
        if answer is None:
            return float("nan")
        async with gate:
            try:  # as the gateway's judge asks: its temperature, within its timeout
                async with asyncio.timeout(judge.timeout_s):
                    reply = await ask(backend, judge_messages(judge, question, answer), judge.max_tokens,
                                      backend.config.max_retries, {"temperature": judge.temperature})
            except (UpstreamError, TimeoutError):
                return float("nan")
        score = parse_score(answer_text(reply), judge.scale)
        return float("nan") if score is None else score

    try:
        return np.asarray(await asyncio.gather(*(one(q, a) for q, a in zip(texts, answers, strict=True))))
    finally:
        await backend.aclose()


def grade(grader: str, router: ClusterRouter, probes: ProbeSet, model: str, rows: np.ndarray,
          answers: list[str | None], probs: np.ndarray, config: GatewayConfig | None) -> np.ndarray:
    """Scores in [0, 1] (NaN = ungraded) of ``model``'s answers on the probe ``rows``."""
    if grader == "recorded":
        return recorded_scores(probes, model, rows)
    if grader == "reference":
        return reference_scores(probes, rows, answers)
    if grader == "agreement":
        return agreement_scores(router, probes, model, rows, answers, probs, router.embedder_in_use())
    if grader == "judge":
        if config is None:
            raise ConfigError("grader 'judge' needs --config naming the judge backend")
        return asyncio.run(judge_scores(config, [probes.texts[r] for r in rows], answers))
    raise ConfigError(f"unknown grader {grader!r}; choose one of {', '.join(GRADERS)}")


def backend_for(config: GatewayConfig, name: str, source: str) -> Backend:
    known = [b.name for b in config.backends]
    if name not in known:
        raise ConfigError(f"{source}: no backend named {name!r} (backends: {', '.join(known)}); add it under "
                          "'backends:' or pass --backend NAME")
    return make_backend(config.backend(name))


@dataclass
class OnboardSpec:
    model: str
    n: int
    grader: str
    prior: str | None = None
    backend: str | None = None  # the config's backend name when it differs from the model name
    seed: int = 0
    max_tokens: int | None = None
    concurrency: int = 4


def onboard(router_dir: str | Path, probes: ProbeSet, spec: OnboardSpec, out: str | Path,
            config: GatewayConfig, config_source: str = "config", progress: Progress | None = None) -> OnboardResult:
    """Probe, grade, update the profile of ``spec.model`` and save the new artifact in ``out``."""
    if spec.grader not in GRADERS:
        raise ConfigError(f"unknown grader {spec.grader!r}; choose one of {', '.join(GRADERS)}")
    started = time.perf_counter()
    out = Path(out)
    if out.resolve() == Path(router_dir).resolve():
        raise ConfigError(f"--out {out} is the router's own directory; write the new version elsewhere")
    router = load_cluster(router_dir)
    backend = backend_for(config, spec.backend or spec.model, config_source)
    rows, probs = choose_probes(router, probes, spec.n, spec.seed)
    texts = [probes.texts[r] for r in rows]
    records = asyncio.run(collect(backend, texts, rows, out, spec.max_tokens, spec.concurrency, progress))
    answers: list[str | None] = [r.get("answer") for r in records]
    failed = sum(a is None for a in answers)
    if failed == len(answers):
        first = next((r["error"] for r in records if r.get("error")), "no answer")
        raise DataError(f"model {spec.model!r}: all {len(answers)} probes failed (first error: {first}); check "
                        f"backend {backend.name!r} in {config_source}; answers are in {out / ANSWERS_FILE}")
    scores = grade(spec.grader, router, probes, spec.model, rows, answers, probs, config)
    costs = np.asarray([np.nan if r.get("cost_usd") is None else float(r["cost_usd"]) for r in records])
    if spec.model not in router.models_:
        router.add_model(spec.model, spec.prior)
    tasks = [str(probes.dataset.tasks[r]) for r in rows] if probes.dataset is not None else None
    router.observe(spec.model, assignments(router, probs, tasks), scores, costs)
    router.save(out)
    profile = router.profile(spec.model).to_dict()
    graded, spent = int(np.isfinite(scores).sum()), float(np.nansum(costs))
    info = {"model": spec.model, "backend": backend.name, "router": str(router_dir), "probes": probes.name,
            "n": len(rows), "grader": spec.grader, "prior": spec.prior, "seed": spec.seed,
            "graded": graded, "failed": failed, "spent_usd": spent, "profile": profile}
    (out / ONBOARD_FILE).write_text(json.dumps(info, indent=1))
    return OnboardResult(out, artifact_version(out), spec.model, spec.grader, len(rows), graded, failed, spent,
                         time.perf_counter() - started, profile, list(router.group_names_))
