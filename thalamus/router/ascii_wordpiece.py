"""A fast path for BERT WordPiece tokenization of plain-ASCII prompts, exact to the tokenizer's ids.

The ``static`` embedder's whole cost at query time is its tokenizer: on a 470-token RouterBench
prompt the Rust tokenizer takes ~0.8 ms (normalizer, pre-tokenizer and WordPiece, each building
offsets and per-token strings), the table lookup 0.07 ms. For text made only of printable ASCII
(plus tab, newline, carriage return), BERT's uncased pipeline reduces to: lowercase, split into
runs of letters and digits and single punctuation characters, WordPiece each word. Words repeat
heavily across prompts, so each word's ids are computed once by the tokenizer's own WordPiece model
and kept in a bounded dict; a prompt then costs one regex pass and dict lookups.

Exactness: BertNormalizer (lowercase, clean_text) and BertPreTokenizer act per character and
split at whitespace and punctuation, so a word's ids do not depend on its neighbours. Any text
outside that subset (non-ASCII, control characters, an added token such as ``[UNK]`` written in
the prompt) returns None and the caller uses the tokenizer. ``AsciiWordPiece.applies`` accepts
only tokenizers configured exactly as the MiniLM distillation's (checked from the tokenizer's own
JSON), and tests compare both paths on dataset prompts and on generated text.
"""

from __future__ import annotations

import json
import re
from typing import Any

# letters/digits runs, or one ASCII punctuation character (Rust's is_ascii_punctuation: the 32 of !-/ :-@ [-` {-~)
WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
PLAIN = re.compile(r"[\t\n\r -~]*")  # printable ASCII plus the whitespace controls BERT maps to a space
MAX_WORDS = 200_000  # distinct words kept (~20 MB); past it, new words are tokenized but not kept


class AsciiWordPiece:
    """Per-word cached WordPiece ids for plain-ASCII text; ``ids`` is None where it does not apply."""

    def __init__(self, tokenizer: Any) -> None:
        self._model = tokenizer.model  # WordPiece alone: words arrive normalised and pre-tokenized
        config = json.loads(tokenizer.to_str())
        self._added = tuple(str(t["content"]).lower() for t in config.get("added_tokens") or [])
        self._words: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def applies(tokenizer: Any) -> bool:
        """True for an uncased BERT WordPiece tokenizer with nothing else in its pipeline."""
        config = json.loads(tokenizer.to_str())
        norm, pre, model = config.get("normalizer") or {}, config.get("pre_tokenizer") or {}, config.get("model") or {}
        return (norm.get("type") == "BertNormalizer" and norm.get("lowercase") is True
                and norm.get("clean_text") is True and pre.get("type") == "BertPreTokenizer"
                and model.get("type") == "WordPiece" and model.get("continuing_subword_prefix") == "##"
                and config.get("post_processor") is None)

    def ids(self, text: str) -> list[int] | None:
        """The tokenizer's ids for ``text`` (no special tokens), or None when the text is not plain ASCII."""
        if not text.isascii() or PLAIN.fullmatch(text) is None:
            return None
        lowered = text.lower()
        if any(token in lowered for token in self._added):  # the tokenizer matches these before normalizing
            return None
        tokens = WORDS.findall(lowered)
        words = self._words
        missing = {w for w in tokens if w not in words}
        found = self._learn(missing) if missing else words
        out: list[int] = []
        for word in tokens:
            out.extend(found[word])
        return out

    def _learn(self, missing: set[str]) -> dict[str, tuple[int, ...]]:
        """The ids of words not seen before, kept while the dict has room. Each word is already
        normalised and pre-tokenized, so only the WordPiece model runs (~2 us a word; a tokenizer
        call per prompt costs ~100 us in its own overhead)."""
        model = self._model
        fresh = {w: tuple(t.id for t in model.tokenize(w)) for w in missing}
        if len(self._words) < MAX_WORDS:  # dict.update from a dict holds the GIL: readers see old or new
            self._words.update(fresh)
            return self._words
        return {**self._words, **fresh}
