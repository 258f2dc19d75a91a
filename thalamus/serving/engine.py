"""The batched decode loop: left-padded prefill, then one token per step for every live request.

A hand-written loop over ``past_key_values`` (rather than ``model.generate``) lets each request keep its own
stop strings, token budget and sampling settings, stream every token as it arrives, leave the batch as
soon as it is done (its rows are dropped from the KV cache), and report expert load for MoE models.
The loop is split in two calls, :meth:`Engine.prefill` (prompts in, first tokens out) and
:meth:`Engine.step` (one token for every row), so a scheduler can merge a newly prefilled batch into a
running one between steps (continuous batching, :mod:`thalamus.serving.scheduler`) or run one batch to
the end (window batching, :meth:`Engine.run`). Position ids are computed from the attention mask, so a
left-padded row sees the same positions as it would alone; greedy outputs of a batch equal those of
sequential requests. A row whose sampling fails (non-finite probabilities) fails alone and leaves the
batch; a failing forward pass fails the whole call, and the caller isolates the request at fault.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from thalamus.serving.kvbatch import Batch, joinable
from thalamus.serving.moe import MoeInfo, RouterTap, count_experts, expert_load_payload
from thalamus.serving.offload import offload_of
from thalamus.serving.text import TextTracker

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass
class Finished:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_s: float
    expert_load: dict[str, Any] | None = None


class Sink(Protocol):
    """Receives a request's events; called from the generation thread."""

    def delta(self, text: str) -> None: ...
    def finish(self, result: Finished) -> None: ...
    def fail(self, exc: BaseException) -> None: ...


@dataclass
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    enqueued_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    done: bool = False
    started: bool = False  # a token was generated: re-running the job would repeat streamed text


@dataclass
class _Row:
    job: Job
    text: TextTracker
    generator: Any
    generated: int = 0
    first_token_at: float = 0.0
    routed_tokens: int = 0
    experts: Any = None
    offload: Any = None  # OffloadStats of the passes this row took part in (offloaded MoE models)


class Engine:
    """Generates for a batch of jobs on one loaded model (one thread at a time)."""

    def __init__(self, model: Any, tokenizer: Any, context_length: int, moe: MoeInfo | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.moe = moe
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        self.tap = RouterTap(model) if moe is not None else None
        self.offload = offload_of(model)

    def close(self) -> None:
        """Remove the router hooks (the model is being unloaded)."""
        if self.tap is not None:
            self.tap.close()

    def run(self, jobs: list[Job]) -> None:
        """Generate ``jobs`` together until every one has finished (window batching)."""
        batch = self.prefill(jobs)
        while batch.rows:
            self.step(batch)

    def prefill(self, jobs: list[Job]) -> Batch:
        """Run the prompts of ``jobs`` (left-padded together), sample each one's first token.

        The returned batch holds the jobs still generating, ready for :meth:`step` or to be merged into a
        running batch (:meth:`Batch.merge`).
        """
        import torch
        from transformers import DynamicCache

        rows = [self._row(job) for job in jobs]
        with torch.inference_mode():
            ids, mask = self._left_pad([job.prompt_ids for job in jobs])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(ids, mask, pos, cache, rows)
            batch = Batch(rows, cache, mask, pos[:, -1:] + 1, [])
            self._take(batch, logits)
        return batch

    def step(self, batch: Batch) -> None:
        """Feed every row its pending token; sample the next; finished rows leave the batch."""
        import torch

        with torch.inference_mode():
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
            logits = self._forward(torch.tensor(batch.tokens).unsqueeze(1), batch.mask, batch.next_pos,
                                   batch.cache, batch.rows)
            batch.next_pos = batch.next_pos + 1
            self._take(batch, logits)

    def can_join(self) -> bool:
        """Whether requests can join this model's running batch (its KV cache can be padded and stacked)."""
        from transformers import DynamicCache

        return joinable(DynamicCache(config=self.model.config))

    def _take(self, batch: Batch, logits: torch.Tensor) -> None:
        tokens = self._sample(logits, batch.rows)
        batch.tokens = [tok if tok is not None else 0 for tok in tokens]
        batch.select([i for i, (row, tok) in enumerate(zip(batch.rows, tokens, strict=True))
                      if tok is not None and not self._advance(row, tok)])

    def _row(self, job: Job) -> _Row:
        import torch

        seed = job.params.seed if job.params.seed is not None else random.getrandbits(63)
        return _Row(job, TextTracker(self.tokenizer, list(job.params.stop)),
                    torch.Generator().manual_seed(seed))

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        return ids, mask

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any,
                 rows: list[_Row]) -> torch.Tensor:
        if self.tap is not None:
            self.tap.take()  # drop anything left by a failed pass
        if self.offload is not None:
            self.offload.take()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        if self.tap is not None:
            self._record_experts(self.tap.take(), mask[:, -ids.shape[1]:], rows)
        if self.offload is not None:  # a batched pass's expert reads serve, and are charged to, every row
            step = self.offload.take()
            for row in rows:
                row.offload = step if row.offload is None else row.offload.add(step)
        return out.logits[:, -1, :].float()

    def _record_experts(self, router_logits: Any, step_mask: torch.Tensor, rows: list[_Row]) -> None:
        assert self.moe is not None
        counts = count_experts(tuple(router_logits), step_mask, self.moe)
        real = step_mask.sum(dim=1).tolist()
        for i, row in enumerate(rows):
            row.experts = counts[i] if row.experts is None else row.experts + counts[i]
            row.routed_tokens += int(real[i])

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int | None]:
        """One token per row; None for a row whose sampling failed (that job has been failed)."""
        greedy: list[int] = logits.argmax(dim=-1).tolist()
        tokens: list[int | None] = []
        for i, row in enumerate(rows):
            if row.job.params.temperature == 0:
                tokens.append(greedy[i])
                continue
            try:
                tokens.append(_sample_one(logits[i], row))
            except (RuntimeError, ValueError) as exc:  # torch.multinomial refuses NaN/inf probabilities
                row.job.done = True
                row.job.sink.fail(exc)
                tokens.append(None)
        return tokens

    def _advance(self, row: _Row, token: int) -> bool:
        """Feed one new token to a request; True when the request is finished."""
        job, params = row.job, row.job.params
        if row.generated == 0:
            row.first_token_at = time.perf_counter()
            job.started = True
        row.generated += 1
        if job.cancelled:
            return self._finish(row, "cancelled")
        if token in self.eos_ids and not params.ignore_eos:
            return self._finish(row, "stop", row.text.flush())
        delta, stopped = row.text.push(token)
        if stopped:
            return self._finish(row, "stop", delta)
        if row.generated >= params.max_tokens or len(job.prompt_ids) + row.generated >= self.context_length:
            return self._finish(row, "length", delta + row.text.flush())
        if delta:
            job.sink.delta(delta)
        return False

    def _finish(self, row: _Row, reason: str, delta: str = "") -> bool:
        job = row.job
        if delta:
            job.sink.delta(delta)
        load = None
        if self.moe is not None and row.experts is not None:
            load = expert_load_payload(row.experts, row.routed_tokens, self.moe)
            if row.offload is not None:
                load["offload"] = row.offload.payload(row.routed_tokens)
        now = time.perf_counter()
        job.done = True
        job.sink.finish(Finished(reason, len(job.prompt_ids), row.generated,
                                 ttft_s=row.first_token_at - job.enqueued_at,
                                 decode_s=now - row.first_token_at, expert_load=load))
        return True


def _sample_one(logits: torch.Tensor, row: _Row) -> int:
    import torch

    params = row.job.params
    # shifting by the maximum first keeps logits / temperature finite for any temperature the request
    # schema accepts (>= float32's smallest normal); unshifted, a 1e-37 temperature already overflows
    probs = torch.softmax((logits - logits.max()) / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
        sorted_probs[outside] = 0.0
        choice = torch.multinomial(sorted_probs, 1, generator=row.generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=row.generator))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
