"""The replay upstream as an LLM judge: grades an answer with the dataset's recorded quality.

A request to a judge model (``judge`` unless the replay app is told other names) is a grading prompt
that quotes an answer. The replay finds the longest recorded response of its RoutingDataset quoted in
the prompt and answers ``Score: N/10`` with N = 1 + 9 * quality of that (prompt, model) cell, so a
gateway's judge (gateway/learning/judge.py, scale ``1-10``) stores exactly the dataset's quality as feedback.
A prompt quoting no recorded answer (or one whose quality is missing) gets a reply without a score,
which a judge must count as unparseable. Deterministic: tests and benchmarks can check every number.
"""

from __future__ import annotations

import numpy as np

from thalamus.datasets.schema import RoutingDataset

DEFAULT_JUDGES = ("judge",)
NO_GRADE = "The replay judge found no recorded answer to grade in this prompt."


class ReplayJudge:
    """Recorded responses of a dataset, looked up by their text inside a grading prompt."""

    def __init__(self, dataset: RoutingDataset | None) -> None:
        self.cells: dict[str, tuple[int, int]] = {}
        self.quality = dataset.quality if dataset is not None else np.zeros((0, 0))
        responses = dataset.responses if dataset is not None else None
        if responses is None:
            return
        for (row, col), text in np.ndenumerate(responses):
            if isinstance(text, str) and text.strip():
                self.cells.setdefault(text, (int(row), int(col)))

    def grade(self, prompt: str) -> str:
        """``Score: N/10`` for the recorded answer quoted in ``prompt``; NO_GRADE when there is none."""
        quoted = [text for text in self.cells if text in prompt]
        if not quoted:
            return NO_GRADE
        row, col = self.cells[max(quoted, key=len)]
        quality = float(self.quality[row, col])
        if not np.isfinite(quality):
            return NO_GRADE
        return f"The recorded quality of this answer is {quality:.6g}.\nScore: {1 + 9 * quality:.6g}/10"
