"""Incremental detokenization with stop strings, so a stream never shows text a stop string later removes.

Each new token re-decodes the request's generated ids (a few hundred at most) because byte-level BPE
tokens may end inside a UTF-8 character; text ending in U+FFFD waits for the next token. Any tail of the
text that could still grow into a stop string is held back until it cannot.
"""

from __future__ import annotations

from typing import Any


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextTracker:
    """Turns a request's tokens into text deltas and notices its stop strings."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (new text safe to show, whether a stop string was reached)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return "", False
        self.text = text
        hits = [i for i in (text.find(s, max(0, self.emitted - len(s))) for s in self.stops) if i != -1]
        if hits:
            end = min(hits)
            return self._take(end), True
        return self._take(len(text) - _held_back(text, self.stops)), False

    def flush(self) -> str:
        """The text still held back, once the request ends without a stop string."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        delta = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta
