"""The replay upstream as an LLM judge: grades an answer with the dataset's recorded quality.

A request to a judge model (``judge`` unless the replay app is told other names) is a grading prompt
that quotes a question and an answer (learning/judge_score.py's template: ``<question>`` and ``<answer>``
tags). The replay finds the dataset prompt the question is (by its text, as the replay found it when it
answered) and, among that prompt's recorded responses, the model(s) whose answer is the quoted one, and
answers ``Score: N/10`` with N = 1 + 9 * quality of that (prompt, model) cell, so a gateway's judge (scale
``1-10``) stores exactly the dataset's quality as feedback. Short answers ("A", "42") repeat across
prompts with different grades; they are graded for the prompt they answered, never by another prompt's
row. Models that gave one prompt the same answer share its grade (their mean quality, should they differ).

Without tags (a custom template) the question is the longest dataset prompt quoted, and the answer the
longest of its recorded responses quoted outside the question. A prompt quoting no question is graded by
the answer alone only when the dataset recorded that answer text for a single prompt. Anything else gets
a reply without a score, which a judge must count as unparseable. Deterministic: tests and benchmarks can
check every number.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from thalamus.datasets.schema import RoutingDataset, stable_hash

DEFAULT_JUDGES = ("judge",)
NO_GRADE = "The replay judge found no recorded answer to grade in this prompt."
_QUESTION = re.compile(r"<question>\n(.*?)\n</question>", re.DOTALL)
_ANSWER = re.compile(r"<answer>\n(.*)\n</answer>", re.DOTALL)


class ReplayJudge:
    """Recorded responses of a dataset, looked up by (prompt, answer text) inside a grading prompt."""

    def __init__(self, dataset: RoutingDataset | None) -> None:
        self.texts: list[str] = dataset.texts if dataset is not None else []
        self.rows: dict[str, int] = {}
        for i, text in enumerate(self.texts):
            self.rows.setdefault(stable_hash(text), i)
        self.quality = dataset.quality if dataset is not None else np.zeros((0, 0))
        # per prompt row: answer text -> the columns (models) that recorded it
        self.answers: list[dict[str, list[int]]] = [defaultdict(list) for _ in self.texts]
        self.owners: dict[str, set[int]] = defaultdict(set)  # answer text -> the rows that recorded it
        responses = dataset.responses if dataset is not None else None
        if responses is None:
            return
        for (row, col), text in np.ndenumerate(responses):
            if isinstance(text, str) and text.strip():
                self.answers[int(row)][text].append(int(col))
                self.owners[text].add(int(row))

    def grade(self, prompt: str) -> str:
        """``Score: N/10`` for the recorded answer quoted in ``prompt`` to the question it quotes; NO_GRADE
        when the question is no dataset prompt or the answer is none of that prompt's recorded answers."""
        row = self._row(prompt)
        cols = self._columns(row, prompt) if row is not None else []
        if row is None or not cols:
            return NO_GRADE
        quality = float(np.mean(self.quality[row, cols]))
        if not np.isfinite(quality):
            return NO_GRADE
        return f"The recorded quality of this answer is {quality:.6g}.\nScore: {1 + 9 * quality:.6g}/10"

    def _row(self, prompt: str) -> int | None:
        tagged = _QUESTION.search(prompt)
        if tagged is not None:
            return self.rows.get(stable_hash(tagged.group(1)))
        quoted = [i for i, text in enumerate(self.texts) if text and text in prompt]
        if quoted:
            return max(quoted, key=lambda i: len(self.texts[i]))
        return self._sole_owner(prompt)

    def _sole_owner(self, prompt: str) -> int | None:
        """The row of the answer quoted without its question, when only one prompt recorded that text."""
        quoted = [text for text in self.owners if text in prompt]
        if not quoted:
            return None
        owners = self.owners[max(quoted, key=len)]
        return next(iter(owners)) if len(owners) == 1 else None

    def _columns(self, row: int, prompt: str) -> list[int]:
        recorded = self.answers[row]
        tagged = _ANSWER.search(prompt)
        if tagged is not None:
            answer = tagged.group(1)
            if answer in recorded:
                return recorded[answer]
            stripped = [cols for text, cols in recorded.items() if text.strip() == answer.strip()]
            return sorted({c for cols in stripped for c in cols})
        rest = prompt.replace(self.texts[row], "")  # the question may quote answers too ("Answer: A")
        quoted = [text for text in recorded if text in rest]
        return recorded[max(quoted, key=len)] if quoted else []
