"""LLM-as-judge feedback: a configured backend scores a sampled share of answers, off the request path.

``GatewayService.finish`` offers each answered request (status 200, text answer, not a cache hit) with
``offer``: a seeded draw keeps ``judge.sample`` of them, and a kept one goes into a bounded queue without
waiting: a full queue drops it (counted), so a slow or failing judge never holds a request. ``concurrency``
workers take judgements from the queue; each calls the judge backend once, bounded by ``timeout_s``,
parses the score (gateway/learning/judge_score.py) and, when there is one, stores it as feedback with source
``judge:<backend>`` through the same path as ``POST /v1/feedback`` (gateway/learning/feedback.py), so online
bandits learn from it (``judge.learn``). Every call, failed ones too, leaves a ``judge_calls`` row with
its outcome, tokens and cost. Outcomes are counted in ``/metrics`` (``thalamus_judge_total``) and in
``GET /api/judge``. Shutdown waits ``drain_s`` at most for queued judgements, then drops the rest, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter as Tally
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from thalamus.gateway.config.judge import JUDGE_SOURCE_PREFIX, JudgeConfig
from thalamus.gateway.learning.feedback import FeedbackDesk
from thalamus.gateway.learning.judge_score import judge_messages, parse_score
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.checks import UpstreamError
from thalamus.gateway.wire import protocol as p

log = logging.getLogger("thalamus.gateway.learning.judge")
OUTCOMES = ("scored", "unparseable", "failed", "timeout", "error", "dropped_full", "dropped_shutdown")
COMMENT_CHARS = 2000  # of the judge's reasoning kept as the feedback comment (with ledger.store_prompts)


@dataclass(frozen=True)
class Judgement:
    """One answer waiting to be judged (text already cut to ``max_chars`` by the prompt builder)."""

    request_id: str
    question: str
    answer: str


@dataclass
class JudgeReply:
    """What the judge backend said, or how the call failed."""

    outcome: str  # answered | failed | timeout
    text: str = ""
    usage: dict[str, Any] | None = None
    error: str | None = None


class JudgeMetrics:
    """The judge's Prometheus families, in the gateway's registry (None: multiprocess files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.total = Counter("thalamus_judge_total", "Answers the LLM judge took or dropped, by outcome",
                             ("judge", "outcome"), registry=registry)
        self.cost = Counter("thalamus_judge_cost_usd_total", "Spend on judge calls, USD", ("judge",),
                            registry=registry)
        self.tokens = Counter("thalamus_judge_tokens_total", "Judge call tokens, prompt or completion",
                              ("judge", "kind"), registry=registry)
        self.queue = Gauge("thalamus_judge_queue_depth", "Answers waiting for the judge", registry=registry,
                           multiprocess_mode="livesum")


class Judge:
    """The judge of one gateway: queue, workers, counters. Built and closed by the app's lifespan."""

    def __init__(self, config: JudgeConfig, backend: Backend, desk: FeedbackDesk,
                 registry: CollectorRegistry | None = None, store_comments: bool = False) -> None:
        self.config, self.backend, self.desk, self.ledger = config, backend, desk, desk.ledger
        self.source = f"{JUDGE_SOURCE_PREFIX}{backend.name}"
        self.store_comments = store_comments
        self.metrics = JudgeMetrics(registry)
        self.counts: Tally[str] = Tally()
        self.spend = {"cost_usd": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "learned": 0}
        self.queue: asyncio.Queue[Judgement] = asyncio.Queue(maxsize=config.queue_size)
        self.in_flight = 0
        self.closing = False
        self._rng = random.Random(config.seed)
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"judge-{i}") for i in range(self.config.concurrency)]

    # -- the request path's side: never waits, never raises ---------------------------------
    def offer(self, request_id: str, question: str, answer: str) -> bool:
        """Queue an answered request (its routing text and answer) for judging when the draw keeps it; True
        if queued."""
        self.counts["offered"] += 1
        share = self.config.sample
        if share <= 0 or (share < 1 and self._rng.random() >= share):
            return False
        self.counts["sampled"] += 1
        if self.closing:
            self._count("dropped_shutdown")
            return False
        try:
            self.queue.put_nowait(Judgement(request_id, question, answer))
        except asyncio.QueueFull:
            self._count("dropped_full")
            return False
        except Exception:  # the request was answered: a judging bug must never turn it into an error
            log.exception("judge: could not queue request %s", request_id)
            self._count("error")
            return False
        self.metrics.queue.set(self.queue.qsize())
        return True

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.metrics.total.labels(self.backend.name, outcome).inc()

    # -- workers -----------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            item = await self.queue.get()
            self.in_flight += 1
            self.metrics.queue.set(self.queue.qsize())
            try:
                self._count(await self._judge(item))
            except Exception:  # the gateway's own failure (ledger, learning): logged, counted, worker lives on
                log.exception("judging request %s failed", item.request_id)
                self._count("error")
            finally:
                self.in_flight -= 1
                self.queue.task_done()

    async def _judge(self, item: Judgement) -> str:
        """Call the judge, store its score and the call; the outcome to count."""
        messages = judge_messages(self.config, item.question, item.answer)
        started = time.perf_counter()
        reply = await self._call(messages)
        latency_ms = (time.perf_counter() - started) * 1000
        score = parse_score(reply.text, self.config.scale) if reply.outcome == "answered" else None
        outcome = reply.outcome if reply.outcome != "answered" else ("scored" if score is not None else "unparseable")
        tokens = self._tokens(reply, messages)
        found, _ = await self.desk.request_owner(item.request_id)
        if not found:  # the writer could not store the request's row (database down): nothing to attach to
            log.warning("judge: request %s has no ledger row; its judgement (%s) is dropped", item.request_id,
                        outcome)
            return "error"
        feedback_id = await self._store(item.request_id, score, reply.text)
        cost = self._cost(tokens)
        await asyncio.to_thread(self.ledger.add_judge_call, {
            "request_id": item.request_id, "judge": self.backend.name, "outcome": outcome, "score": score,
            "feedback_id": feedback_id, "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
            "cost_usd": cost, "latency_ms": latency_ms, "error": reply.error})
        self._account(tokens, cost)
        return outcome

    async def _call(self, messages: list[dict[str, str]]) -> JudgeReply:
        body = {"model": self.backend.name, "messages": messages, "max_tokens": self.config.max_tokens,
                "temperature": self.config.temperature}
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await self.backend.complete(body)
        except TimeoutError:
            return JudgeReply("timeout", error=f"no answer within judge.timeout_s={self.config.timeout_s:g}")
        except UpstreamError as exc:
            timeout = (exc.code or "").endswith("timeout")
            return JudgeReply("timeout" if timeout else "failed", error=exc.code)
        text = p.answer_text(response)
        usage = response.get("usage")
        return JudgeReply("answered", text, usage if isinstance(usage, dict) else None)

    async def _store(self, request_id: str, score: float | None, text: str) -> int | None:
        if score is None:
            return None
        comment = text[:COMMENT_CHARS] if self.store_comments else None  # reasoning may quote the prompt
        fid, learned = await self.desk.store(request_id, score, None, self.source, comment, None)
        self.spend["learned"] += int(learned)
        return fid

    def _tokens(self, reply: JudgeReply, messages: list[dict[str, str]]) -> tuple[int | None, int | None]:
        if reply.outcome != "answered":
            return None, None  # a failed call's tokens are unknown (an upstream may still bill a timeout)
        prompt = p.token_count(reply.usage, "prompt_tokens")
        if prompt is None:
            return p.estimate_prompt_tokens(messages), p.estimate_tokens(reply.text)
        return prompt, p.token_count(reply.usage, "completion_tokens") or 0

    def _cost(self, tokens: tuple[int | None, int | None]) -> float | None:
        if tokens[0] is None:
            return None
        return self.backend.config.cost(tokens[0] or 0, tokens[1] or 0)

    def _account(self, tokens: tuple[int | None, int | None], cost: float | None) -> None:
        name = self.backend.name
        for kind, value in zip(("prompt", "completion"), tokens, strict=True):
            if value:
                self.spend[f"{kind}_tokens"] += value
                self.metrics.tokens.labels(name, kind).inc(value)
        if cost:
            self.spend["cost_usd"] += cost
            self.metrics.cost.labels(name).inc(cost)

    # -- stats and shutdown ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        counts = {k: self.counts.get(k, 0) for k in ("offered", "sampled", *OUTCOMES)}
        return {"enabled": True, "judge": self.backend.name, "source": self.source, "sample": self.config.sample,
                "queue_size": self.config.queue_size, "queued": self.queue.qsize(), "in_flight": self.in_flight,
                "counts": counts, **self.spend}

    async def close(self) -> int:
        """Stop taking answers; wait up to ``drain_s`` for the queue, then drop what is left (counted).
        Returns how many were dropped."""
        self.closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), self.config.drain_s)
        dropped = self.queue.qsize() + self.in_flight
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for _ in range(dropped):
            self._count("dropped_shutdown")
        if dropped:
            log.warning("judge: %d judgements dropped at shutdown (judge.drain_s=%g)", dropped, self.config.drain_s)
        self.metrics.queue.set(0)
        return dropped


def start_judge(config: JudgeConfig | None, backends: dict[str, Backend], desk: FeedbackDesk,
                registry: CollectorRegistry | None, store_comments: bool) -> Judge | None:
    """The configured judge, its workers started (None when ``judge`` is not configured)."""
    if config is None:
        return None
    judge = Judge(config, backends[config.backend], desk, registry, store_comments=store_comments)
    judge.start()
    return judge
