"""The judge's score parser and prompt builder (property-based), and the ``judge`` config's errors."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from gwhelpers import synthetic_dataset
from hypothesis import given
from hypothesis import strategies as st

from thalamus.errors import ConfigError
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.judge_config import JudgeConfig
from thalamus.gateway.judge_score import judge_messages, parse_score
from thalamus.gateway.replay_judge import NO_GRADE, ReplayJudge

ten = st.floats(min_value=1, max_value=10, allow_nan=False).map(lambda x: round(x, 3))
unit = st.floats(min_value=0, max_value=1, allow_nan=False).map(lambda x: round(x, 4))
reasoning = st.text(max_size=200).filter(lambda t: "score" not in t.lower())


@given(st.text(max_size=400), st.sampled_from(["1-10", "0-1"]))
def test_any_text_gives_none_or_a_score_in_the_unit_interval(text: str, scale: str) -> None:
    score = parse_score(text, scale)
    assert score is None or (math.isfinite(score) and 0.0 <= score <= 1.0)


@given(reasoning, ten, st.sampled_from(["Score: {n}/10", "score = {n}", "SCORE: **{n}**/10", "The score is {n}."]))
def test_a_ten_point_score_after_any_reasoning_is_normalised(prefix: str, n: float, form: str) -> None:
    text = f"{prefix}\n{form.format(n=n)}"
    assert parse_score(text, "1-10") == pytest.approx((n - 1) / 9)


@given(unit)
def test_a_unit_score_is_taken_as_it_is(x: float) -> None:
    assert parse_score(f"{x:.4f}", "0-1") == pytest.approx(x)
    assert parse_score(f"Score: {x:.4f}", "0-1") == pytest.approx(x)
    assert parse_score(json.dumps({"score": x, "why": "fine"}), "0-1") == pytest.approx(x)


@given(st.floats(min_value=10.001, max_value=1e6) | st.floats(max_value=0.999, min_value=-1e6))
def test_a_number_off_the_ten_point_scale_is_refused(n: float) -> None:
    assert parse_score(f"Score: {n:.3f}", "1-10") is None


@given(st.floats(min_value=1.0001, max_value=1e6))
def test_a_number_above_one_is_refused_on_the_unit_scale(x: float) -> None:
    assert parse_score(f"Score: {x:.4f}", "0-1") is None


@pytest.mark.parametrize("text", ["", "   ", "Replay answer 3fa2b1c9 from weak.", "Score: 7/100", "75/100",
                                  "Score: NaN", '{"score": NaN}', '{"score": true}', '{"score": "7"}', "[7]",
                                  "I would give it a seven."])
def test_text_without_a_score_is_unparseable(text: str) -> None:
    assert parse_score(text, "1-10") is None and parse_score(text, "0-1") is None


def test_the_last_score_phrase_wins_and_an_explicit_denominator_sets_the_scale() -> None:
    assert parse_score("First impression: score 3/10. After checking the maths: Score: 9/10") == pytest.approx(8 / 9)
    assert parse_score("Score: 8/10", "0-1") == pytest.approx(7 / 9)
    assert parse_score("Score: 0.25/1", "1-10") == pytest.approx(0.25)
    assert parse_score("```json\n{\"score\": 10}\n```") == 1.0


@given(st.text(max_size=300), st.text(max_size=300))
def test_the_prompt_quotes_question_and_answer_and_never_fails_on_braces(question: str, answer: str) -> None:
    config = JudgeConfig(backend="judge", max_chars=1000)
    messages = judge_messages(config, question, answer)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert question in messages[1]["content"] and answer in messages[1]["content"]


def test_long_texts_are_cut_to_max_chars() -> None:
    config = JudgeConfig(backend="judge", max_chars=100, template="{answer}", system="")
    (message,) = judge_messages(config, "q", "a" * 250)
    assert message["content"] == "a" * 100 + "\n[... 150 characters cut]"


def _config(judge: dict[str, Any]) -> dict[str, Any]:
    return {"backends": [{"name": "m", "model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}], "judge": judge}


@pytest.mark.parametrize(("judge", "message"), [
    ({"backend": "nope"}, "judge.backend: unknown backend 'nope'"),
    ({"backend": "m", "sample": 1.5}, "judge.sample: Input should be less than or equal to 1"),
    ({"backend": "m", "concurrency": 0}, "judge.concurrency: Input should be greater than or equal to 1"),
    ({"backend": "m", "queue_size": 0}, "judge.queue_size: Input should be greater than or equal to 1"),
    ({"backend": "m", "timeout_s": 0}, "judge.timeout_s: Input should be greater than 0"),
    ({"backend": "m", "template": "Grade {answer} for {user}"}, "judge.template: unknown fields ['user']"),
    ({"backend": "m", "template": "Grade {question}"}, "judge.template: the template must contain {answer}"),
    ({"backend": "m", "template": "Grade {answer"}, "judge.template: not a valid format string"),
    ({"backend": "m", "scale": "1-5"}, "judge.scale: Input should be '1-10' or '0-1'"),
    ({"backend": "m", "rubrik": "x"}, "judge.rubrik: Extra inputs are not permitted"),
])
def test_judge_config_errors_name_the_key(judge: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(_config(judge), "gw.yaml")
    assert f"gw.yaml: {message}" in str(info.value)


def test_the_replay_judge_grades_a_quoted_recorded_answer_with_its_quality() -> None:
    ds = synthetic_dataset()
    judge = ReplayJudge(ds)
    assert ds.responses is not None
    for row, col in [(0, 0), (11, 1), (1, 2)]:  # looked up by the longest recorded answer the prompt quotes
        text = f"Grade this.\n<answer>\n{ds.responses[row, col]}\n</answer>"
        assert parse_score(judge.grade(text)) == pytest.approx(ds.quality[row, col])
    assert judge.grade("an answer nobody recorded") == NO_GRADE and parse_score(NO_GRADE) is None
