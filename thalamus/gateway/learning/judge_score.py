"""What the judge sends and how its answer becomes a score in [0, 1]: pure functions, no I/O.

Judges phrase scores in many ways; the parser accepts the few forms a prompt can ask for and refuses
the rest (None: counted as unparseable by the judge, never stored, never an exception):

- a JSON object with a numeric ``score``: ``{"score": 7}``
- ``Score: 7``, ``score = 0.8``, ``Score: 7/10`` (the last such phrase wins: reasoning may come first)
- a bare number, optionally with ``/10``: ``7``, ``8/10``, ``0.75``

``scale`` says how a number without a denominator is read: ``1-10`` (normalised as (N - 1) / 9) or
``0-1``. An explicit ``/10`` reads as the 1-10 scale whatever ``scale`` says. A number outside its
scale, NaN or infinity is refused, so a score is always in [0, 1].
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from thalamus.gateway.config.judge import JudgeConfig

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
# a number not followed by more digits, an optional /10 or /1 denominator, and no other denominator
_SCORED = rf"({_NUMBER})(?!\.?\d)\**(?:\s*/\s*(10|1)(?!\.?\d))?(?!\s*/)"
_SCORE_PHRASE = re.compile(rf"\bscore\b\s*(?:is|of)?\s*[:=]?\s*\**\s*{_SCORED}", re.IGNORECASE)
_BARE = re.compile(rf"^\s*{_SCORED}\s*\.?\s*$")


def normalise(value: float, scale: str) -> float | None:
    """``value`` on ``scale`` as a score in [0, 1]; None when it is not on that scale."""
    if not math.isfinite(value):
        return None
    if scale == "1-10":
        return (value - 1.0) / 9.0 if 1.0 <= value <= 10.0 else None
    return value if 0.0 <= value <= 1.0 else None


def _from_json(text: str) -> float | bool | None:
    """The ``score`` of a JSON object answer; False when the text is not such an object."""
    stripped = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    if not stripped.startswith("{"):
        return False
    try:
        obj: Any = json.loads(stripped)
    except ValueError:
        return False
    score = obj.get("score") if isinstance(obj, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    return float(score)


def parse_score(text: str, scale: str = "1-10") -> float | None:
    """The judge's answer as a score in [0, 1], or None when it holds no score on ``scale``."""
    if not isinstance(text, str) or not text.strip():
        return None
    found = _from_json(text)
    if found is not False:
        return None if found is None else normalise(float(found), scale)
    matches = list(_SCORE_PHRASE.finditer(text)) or list(filter(None, [_BARE.match(text)]))
    if not matches:
        return None
    number, denominator = matches[-1].group(1), matches[-1].group(2)
    effective = {"10": "1-10", "1": "0-1"}.get(denominator or "", scale)
    return normalise(float(number), effective)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} characters cut]"


def judge_messages(config: JudgeConfig, question: str, answer: str) -> list[dict[str, str]]:
    """The chat messages of one judgement: the configured system prompt and the filled-in template."""
    user = config.template.format_map({"question": _cut(question, config.max_chars),
                                       "answer": _cut(answer, config.max_chars), "rubric": config.rubric})
    messages = [{"role": "system", "content": config.system}] if config.system else []
    return [*messages, {"role": "user", "content": user}]
