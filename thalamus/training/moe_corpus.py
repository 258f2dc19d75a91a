"""Prompt text for training a small MoE language model, and a byte-level BPE tokenizer fitted to it.

The text is the prompts of the named datasets, read in place through the dataset registry (never copied
anywhere); a hash of each prompt's text holds a few percent out, so routing is measured on text the model
never trained on. The tokenizer is fitted here rather than reusing SmolLM2's: at width 256 a 49k-token
output layer costs about three times the rest of the model per token (measured: 3.5 s vs 1.1 s a
1024-token step on one thread), and a 20-minute CPU budget buys three times the tokens with 8k. It keeps
SmolLM2's ChatML framing (``<|im_start|>`` / ``<|im_end|>``), so the local server's chat path works as-is.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thalamus.datasets.schema import hash_fraction
from thalamus.errors import DataError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

DEFAULT_DATASETS = ("llmrouter_dcrouter", "routerdc_7model", "routerbench_subset", "routellm_mmlu",
                    "routellm_gsm8k", "alpaca_eval")
PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# ChatML as SmolLM2 renders it, minus its default system prompt (the model never saw one)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


@dataclass(frozen=True)
class Corpus:
    """Training prompts, and held-out (dataset, prompt) pairs for measuring routing."""

    train: list[str]
    held_out: list[tuple[str, str]]


def chat_text(prompt: str) -> str:
    """A prompt framed as the user turn the chat template renders."""
    return f"{BOS}user\n{prompt}{EOS}\n"


def load_corpus(datasets: Sequence[str] = DEFAULT_DATASETS, max_chars: int = 4000,
                held_out_fraction: float = 0.03, data_dir: Path | None = None) -> Corpus:
    """Distinct prompts of ``datasets`` (each cut to ``max_chars``), split by a hash of their text."""
    from thalamus.datasets.registry import load_dataset

    seen: set[str] = set()
    train: list[str] = []
    held_out: list[tuple[str, str]] = []
    for name in datasets:
        texts = load_dataset(name, data_dir=data_dir).prompts["text"]
        for text in texts:
            text = str(text)[:max_chars]
            if not text.strip() or text in seen:
                continue
            seen.add(text)
            if hash_fraction(text, seed=7) < held_out_fraction:
                held_out.append((name, text))
            else:
                train.append(text)
    if not train:
        raise DataError(f"datasets {list(datasets)} hold no prompt text to train on")
    return Corpus(train, held_out)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of ``vocab_size`` tokens fitted to ``texts``, with ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator((chat_text(t) for t in texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def token_blocks(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], seq_len: int, batch_size: int,
                 seed: int) -> Iterator[torch.Tensor]:
    """Endless (batch_size, seq_len) batches of packed chat-framed prompts, reshuffled every pass."""
    import torch

    rng = random.Random(seed)
    order = list(range(len(texts)))
    buffer: list[int] = []
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), 64):
            chunk = [chat_text(texts[i]) for i in order[start:start + 64]]
            for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
                buffer.extend(ids)
            while len(buffer) >= seq_len * batch_size:
                block, buffer = buffer[:seq_len * batch_size], buffer[seq_len * batch_size:]
                yield torch.tensor(block, dtype=torch.long).reshape(batch_size, seq_len)
