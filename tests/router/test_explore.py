"""Exploration's distributions: eligibility under the knob, epsilon mixing, softmax, recorded probability."""

from __future__ import annotations

import numpy as np
import pytest

from thalamus.errors import ConfigError
from thalamus.router.explore import Explorer
from thalamus.router.policy import Knob, decide

MODELS = ["a", "b", "c", "d"]
QUALITY = [0.9, 0.7, 0.5, 0.3]
COST = [1.0, 0.1, 0.01, 0.001]


def test_epsilon_spreads_only_over_eligible_models() -> None:
    d = decide(QUALITY, COST, MODELS, Knob("lambda", 0.0, max_cost=0.5, excluded=("d",)))
    assert d.model == "b"  # a is over budget, d is excluded
    p = Explorer("epsilon", 0.3, seed=0).distribution(d)
    assert p.tolist() == pytest.approx([0.0, 0.7 + 0.15, 0.15, 0.0])  # 0.3 over the two eligible


def test_softmax_is_proportional_to_exp_utility() -> None:
    d = decide(QUALITY, COST, MODELS, Knob("lambda", 0.0))
    p = Explorer("softmax", 0.1).distribution(d)
    expected = np.exp(np.array(QUALITY) / 0.1)
    assert p.tolist() == pytest.approx((expected / expected.sum()).tolist())


def test_explored_decisions_carry_their_probability_and_the_empirical_rate_matches() -> None:
    explorer = Explorer("epsilon", 0.4, seed=3)
    d = decide(QUALITY, COST, MODELS, Knob("lambda", 0.0))
    picks = [explorer.explore(d) for _ in range(4000)]
    for model, p in zip(MODELS, explorer.distribution(d), strict=True):
        hits = [x for x in picks if x.model == model]
        assert all(x.probability == pytest.approx(p) for x in hits)
        assert abs(len(hits) / len(picks) - p) < 0.03  # 4000 draws: 3 points is > 4 standard errors
    assert sum(x.model != "a" for x in picks) > 0 and picks[0].probabilities is not None


def test_a_stochastic_base_router_keeps_its_own_probability_under_epsilon() -> None:
    d = decide(QUALITY, COST, MODELS, Knob("lambda", 0.0))
    d.probability = 0.6  # e.g. Thompson's estimate for its choice
    p = Explorer("epsilon", 0.2).distribution(d)
    assert p[0] == pytest.approx(0.8 * 0.6 + 0.05) and p[1] == pytest.approx(0.05)


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"explore\.value: epsilon"):
        Explorer("epsilon", 1.5)
    with pytest.raises(ConfigError, match="softmax temperature"):
        Explorer("softmax", 0.0)
