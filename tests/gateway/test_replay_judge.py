"""The replay judge grades the answer it is given for the prompt it was asked about: on routerbench_subset
the letters "A" / "B" / ... are recorded answers of thousands of prompts, right on some and wrong on
others, and each (prompt, model) gets its own recorded quality."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.config.judge import JudgeConfig
from thalamus.gateway.learning.judge_score import judge_messages, parse_score
from thalamus.gateway.replay.judge import NO_GRADE, ReplayJudge


@pytest.fixture(scope="module")
def routerbench() -> RoutingDataset:
    return load_dataset("routerbench_subset")


def _prompt(question: str, answer: str, template: str | None = None) -> str:
    config = JudgeConfig(backend="judge") if template is None else JudgeConfig(backend="judge", template=template)
    return "\n".join(m["content"] for m in judge_messages(config, question, answer))


def _repeated_short_answers(ds: RoutingDataset, n: int = 40) -> list[tuple[int, int, str]]:
    """(row, column, answer) cells whose answer text (at most 3 characters) is recorded for other prompts
    too with another quality: the cases a grade by answer text alone gets wrong."""
    assert ds.responses is not None
    qualities: dict[str, set[float]] = defaultdict(set)
    cells: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (i, j), text in np.ndenumerate(ds.responses):
        if isinstance(text, str) and text.strip() and len(text) <= 3:
            qualities[text].add(float(ds.quality[i, j]))
            cells[text].append((i, j))
    ambiguous = sorted(t for t, q in qualities.items() if len(q) > 1)
    picked = []
    for text in ambiguous[:4]:
        ones = [c for c in cells[text] if ds.quality[c] == 1.0][: n // 8]
        zeros = [c for c in cells[text] if ds.quality[c] == 0.0][: n // 8]
        picked += [(i, j, text) for i, j in ones + zeros]
    return picked


def test_short_answers_repeated_across_prompts_get_their_own_prompts_quality(routerbench: RoutingDataset) -> None:
    judge = ReplayJudge(routerbench)
    cells = _repeated_short_answers(routerbench)
    assert len(cells) >= 20 and {routerbench.quality[i, j] for i, j, _ in cells} == {0.0, 1.0}
    for i, j, answer in cells:
        score = parse_score(judge.grade(_prompt(routerbench.texts[i], answer)))
        assert score == pytest.approx(routerbench.quality[i, j]), (i, routerbench.models[j], answer)


def test_a_custom_template_without_tags_is_graded_by_the_quoted_prompt(routerbench: RoutingDataset) -> None:
    judge = ReplayJudge(routerbench)
    template = "Question: {question}\nReply: {answer}\nGive 'Score: N/10'."
    for i, j, answer in _repeated_short_answers(routerbench, 16):
        score = parse_score(judge.grade(_prompt(routerbench.texts[i], answer, template)))
        assert score == pytest.approx(routerbench.quality[i, j])


def test_an_answer_the_prompt_never_recorded_or_an_unknown_prompt_is_not_graded(routerbench: RoutingDataset) -> None:
    judge = ReplayJudge(routerbench)
    assert routerbench.responses is not None
    stripped = [{str(t).strip() for t in row} for row in routerbench.responses]
    i = next(r for r, answers in enumerate(stripped) if "D" not in answers)
    assert sum("D" in answers for answers in stripped) > 100  # recorded for other prompts, not this one
    assert judge.grade(_prompt(routerbench.texts[i], "D")) == NO_GRADE
    assert judge.grade(_prompt("a prompt nobody recorded", str(routerbench.responses[i, 0]))) == NO_GRADE
    # quoted without its question, "A" belongs to thousands of prompts: no grade rather than a wrong one
    assert judge.grade("Grade this.\n<answer>\nA\n</answer>") == NO_GRADE
