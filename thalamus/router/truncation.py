"""Head + tail truncation of long prompts, so the question survives a long shared prefix.

An encoder keeps the first N tokens of a prompt. Benchmarks such as RouterBench's MMLU prompts
start with the same few-shot examples and put the question last, so head-only truncation embeds
the shared examples and drops what distinguishes the prompt. With ``tail=T`` a prompt longer than
the budget keeps its first ``budget - T`` tokens and its last ``T``. ``tail=0`` is head-only (the
encoder's usual behaviour).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thalamus.errors import ConfigError


def check_tail(tail: int, budget: int, owner: str) -> None:
    if not 0 <= tail <= budget:
        raise ConfigError(f"{owner}: tail must be in [0, {budget}] tokens (the budget), got {tail}")


def head_tail(ids: Sequence[int], budget: int, tail: int) -> list[int]:
    """The first ``budget - tail`` and the last ``tail`` ids of a sequence longer than ``budget``."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    head = budget - tail
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])


def head_tail_text(text: str, tokenizer: Any, budget: int, tail: int) -> str:
    """``text`` cut to about ``budget`` tokens of a Hugging Face fast tokenizer, head and tail kept.

    Cut on the tokenizer's character offsets, so the encoder re-tokenizes real text; the join may
    shift the count by a token, which the encoder's own truncation absorbs.
    """
    if tail == 0:
        return text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    offsets = enc["offset_mapping"]
    if len(offsets) <= budget:
        return text
    head = budget - tail
    start_of_tail = offsets[len(offsets) - tail][0]
    if head == 0:
        return text[start_of_tail:]
    return text[: offsets[head - 1][1]] + " " + text[start_of_tail:]
