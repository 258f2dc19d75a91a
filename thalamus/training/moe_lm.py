"""Train a small Mixtral-style MoE language model on prompt text on CPU, for a bounded time.

Random-weight MoE models route almost uniformly, so every expert-cache policy looks alike on them; a model
trained on real text routes with the locality that expert offloading relies on. This trains one in
minutes: a transformers ``MixtralConfig`` (so the local server loads the folder as-is with ``path:``),
the causal-LM loss plus Mixtral's own load-balancing auxiliary loss, AdamW with warmup and a cosine decay
over the *time* budget (the step count is unknown in advance). Every ``checkpoint_seconds`` the folder is
rewritten (weights, tokenizer, optimizer state), file by file with atomic renames, so an interrupted run
(Ctrl-C, SIGTERM, a crash) leaves a loadable model and resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from thalamus.training.moe_corpus import (
    BOS,
    DEFAULT_DATASETS,
    EOS,
    PAD,
    load_corpus,
    token_blocks,
    train_tokenizer,
)

STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "training.json"


@dataclass
class MoeTrainOptions:
    """What to train and for how long; the defaults are the issue's 4 layers, 8 experts, top-2, width 256."""

    out: Path
    minutes: float = 20.0
    max_steps: int | None = None  # tests stop on steps; real runs on time
    layers: int = 4
    experts: int = 8
    top_k: int = 2
    hidden: int = 256
    intermediate: int = 512
    heads: int = 4
    kv_heads: int = 2
    vocab_size: int = 8192
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 30
    aux_loss_coef: float = 0.01
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    max_prompts: int | None = None  # per run, after the split; small values keep tests fast
    seed: int = 0
    threads: int = 1
    checkpoint_seconds: float = 120.0
    data_dir: Path | None = None


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0  # training time over all runs into this folder
    losses: list[tuple[int, float, float]] = field(default_factory=list)  # (step, lm loss, aux loss)


def model_config(opts: MoeTrainOptions, tokenizer: Any) -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=opts.hidden, intermediate_size=opts.intermediate,
        num_hidden_layers=opts.layers, num_attention_heads=opts.heads, num_key_value_heads=opts.kv_heads,
        num_local_experts=opts.experts, num_experts_per_tok=opts.top_k, max_position_embeddings=2048,
        tie_word_embeddings=True, router_aux_loss_coef=opts.aux_loss_coef,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS), pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
    )


def _lr_factor(opts: MoeTrainOptions, state: TrainState) -> float:
    warm = min(1.0, (state.step + 1) / max(1, opts.warmup_steps))
    done = state.seconds / (opts.minutes * 60)
    if opts.max_steps is not None:
        done = max(done, state.step / opts.max_steps)
    return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done))))


def _build(opts: MoeTrainOptions) -> tuple[Any, Any, Any, TrainState, list[str]]:
    """Model, tokenizer, optimizer and state: resumed from ``opts.out`` when it holds a run, else fresh."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    corpus = load_corpus(opts.datasets, data_dir=opts.data_dir)
    texts = corpus.train[:opts.max_prompts] if opts.max_prompts else corpus.train
    state_path = opts.out / STATE_FILE
    if state_path.is_file():
        tokenizer = AutoTokenizer.from_pretrained(opts.out)
        model = AutoModelForCausalLM.from_pretrained(opts.out, dtype=torch.float32)
        saved = torch.load(state_path, weights_only=True)  # tensors and numbers only
        state = TrainState(saved["step"], saved["seconds"], [tuple(x) for x in saved["losses"]])
    else:
        tokenizer = train_tokenizer(texts, opts.vocab_size)
        torch.manual_seed(opts.seed)
        model = AutoModelForCausalLM.from_config(model_config(opts, tokenizer))
        c = model.config
        model.generation_config = GenerationConfig(eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
                                                   bos_token_id=c.bos_token_id)
        saved, state = None, TrainState()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.1, betas=(0.9, 0.95))
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
    return model, tokenizer, optimizer, state, texts


def _save(opts: MoeTrainOptions, model: Any, tokenizer: Any, optimizer: Any, state: TrainState) -> None:
    """Rewrite the folder file by file with atomic renames: it stays loadable if this is interrupted."""
    import torch

    scratch = opts.out / ".partial"
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    torch.save({"step": state.step, "seconds": state.seconds, "losses": state.losses,
                "optimizer": optimizer.state_dict()}, scratch / STATE_FILE)
    (scratch / SUMMARY_FILE).write_text(json.dumps(summary(opts, state), indent=1))
    for item in sorted(scratch.iterdir(), key=lambda p: p.name == STATE_FILE):
        os.replace(item, opts.out / item.name)  # the state last: weights are never older than it says
    scratch.rmdir()


def summary(opts: MoeTrainOptions, state: TrainState) -> dict[str, Any]:
    """The run's numbers for reports: steps, tokens, minutes, loss at the start and the end."""
    def mean_loss(rows: list[tuple[int, float, float]]) -> float | None:
        return sum(r[1] for r in rows) / len(rows) if rows else None

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    return {"steps": state.step, "tokens": state.step * opts.seq_len * opts.batch_size,
            "minutes": round(state.seconds / 60, 2), "loss_first10": mean_loss(state.losses[:10]),
            "loss_last10": mean_loss(state.losses[-10:]), "losses": state.losses, "options": options}


class _StopFlag:
    """SIGTERM sets a flag the loop checks, so ``kill`` ends a run with a checkpoint instead of a loss."""

    def __init__(self) -> None:
        self.stop = False
        self.previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C and step limits still work
            self.previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _finished(opts: MoeTrainOptions, state: TrainState) -> bool:
    if opts.max_steps is not None and state.step >= opts.max_steps:
        return True
    return state.seconds >= opts.minutes * 60


def _step(model: Any, optimizer: Any, batch: Any, factor: float, opts: MoeTrainOptions) -> tuple[float, float]:
    import torch

    for group in optimizer.param_groups:
        group["lr"] = opts.lr * factor
    out = model(input_ids=batch, labels=batch, output_router_logits=True)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    aux = float(out.aux_loss.detach())
    return float(out.loss.detach()) - opts.aux_loss_coef * aux, aux


def _loop(opts: MoeTrainOptions, parts: tuple[Any, Any, Any, TrainState], batches: Iterator[Any],
          bar: Any, flag: _StopFlag) -> None:
    model, tokenizer, optimizer, state = parts
    last_save = time.monotonic()
    while not _finished(opts, state) and not flag.stop:
        started = time.monotonic()
        lm, aux = _step(model, optimizer, next(batches), _lr_factor(opts, state), opts)
        state.step += 1
        state.seconds += time.monotonic() - started
        state.losses.append((state.step, round(lm, 4), round(aux, 4)))
        bar.n = min(bar.total, state.seconds)
        bar.set_postfix(step=state.step, loss=f"{lm:.3f}", aux=f"{aux:.3f}", refresh=False)
        bar.refresh()
        if time.monotonic() - last_save >= opts.checkpoint_seconds:
            _save(opts, model, tokenizer, optimizer, state)
            last_save = time.monotonic()


def train_moe(opts: MoeTrainOptions, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) into ``opts.out`` until the time or step budget is spent; return the summary."""
    import torch
    from tqdm import tqdm

    torch.set_num_threads(opts.threads)
    opts.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, optimizer, state, texts = _build(opts)
    model.train()
    batches = token_blocks(tokenizer, texts, opts.seq_len, opts.batch_size, seed=opts.seed + state.step)
    with tqdm(total=opts.minutes * 60, initial=min(state.seconds, opts.minutes * 60), unit="s",
              desc=f"train-moe {opts.out.name}", disable=not progress,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]") as bar, \
            _StopFlag() as flag:
        try:
            _loop(opts, (model, tokenizer, optimizer, state), batches, bar, flag)
        finally:  # Ctrl-C or an error mid-run: keep what was learned so far
            model.eval()
            _save(opts, model, tokenizer, optimizer, state)
    return summary(opts, state)
