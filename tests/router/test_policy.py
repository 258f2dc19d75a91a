"""The decision policy: knobs, constraints, monotonicity and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from thalamus.errors import ConfigError
from thalamus.router.policy import Knob, calibrate, choose, decide

MODELS = ["cheap", "mid", "best"]
Q = np.array([[0.5, 0.7, 0.9]])
C = np.array([[0.001, 0.01, 0.1]])


def test_lambda_extremes() -> None:
    assert choose(Q, C, Knob("lambda", 0.0), MODELS)[0] == 2
    assert choose(Q, C, Knob("lambda", 1.0), MODELS)[0] == 0


def test_wtp_trade_off_by_hand() -> None:
    # utility q - c / wtp: at wtp=1 -> 0.499, 0.69, 0.8 -> best; at wtp=0.1 -> 0.49, 0.6, -0.1 -> mid
    assert choose(Q, C, Knob("wtp", 1.0), MODELS)[0] == 2
    assert choose(Q, C, Knob("wtp", 0.1), MODELS)[0] == 1
    assert choose(Q, C, Knob("wtp", 0.0), MODELS)[0] == 0


def test_cost_never_decreases_toward_quality() -> None:
    rng = np.random.default_rng(0)
    q, c = rng.random((300, 5)), rng.random((300, 5)) * 0.01
    models = [f"m{i}" for i in range(5)]
    prev = np.zeros(300)
    for lam in np.linspace(1, 0, 41):
        picked = choose(q, c, Knob("lambda", float(lam)), models)
        cost = c[np.arange(300), picked]
        assert np.all(cost >= prev - 1e-15)
        prev = cost


def test_constraints() -> None:
    assert choose(Q, C, Knob("lambda", 0.0, excluded=("best",)), MODELS)[0] == 1
    assert choose(Q, C, Knob("lambda", 0.0, allowed=("cheap", "mid")), MODELS)[0] == 1
    assert choose(Q, C, Knob("lambda", 0.0, max_cost=0.02), MODELS)[0] == 1
    # everything over budget: the cheapest allowed model
    d = decide(Q[0], C[0], MODELS, Knob("lambda", 0.0, max_cost=0.0001))
    assert d.model == "cheap" and "max_cost" in d.reason
    with pytest.raises(ConfigError, match="unknown models"):
        choose(Q, C, Knob(allowed=("nope",)), MODELS)
    with pytest.raises(ConfigError, match="no model"):
        choose(Q, C, Knob(excluded=tuple(MODELS)), MODELS)


def test_threshold_two_models() -> None:
    q = np.array([[0.9, 0.2], [0.5, 0.45]])
    c = np.array([[0.1, 0.01], [0.1, 0.01]])
    knob = Knob("threshold", 0.3, strong="gpt4")
    assert choose(q, c, knob, ["gpt4", "mix"]).tolist() == [0, 1]
    with pytest.raises(ConfigError, match="exactly two"):
        choose(Q, C, knob, MODELS)


def test_threshold_on_an_allowed_pair_of_many_models() -> None:
    models = ["gpt4", "other", "mix"]  # "other" would win on quality but is not in the pair
    q = np.array([[0.9, 1.0, 0.2], [0.5, 1.0, 0.45]])
    c = np.array([[0.1, 0.0, 0.01], [0.1, 0.0, 0.01]])
    knob = Knob("threshold", 0.3, strong="gpt4", allowed=("gpt4", "mix"))
    assert choose(q, c, knob, models).tolist() == [0, 2]
    d = decide(q[1], c[1], models, knob)
    assert d.model == "mix" and d.predicted_quality == [0.5, 1.0, 0.45]
    with pytest.raises(ConfigError, match="exactly two"):
        choose(q, c, Knob("threshold", 0.3, strong="gpt4", allowed=("other", "mix")), models)


def test_decision_fields_and_fallback_order() -> None:
    d = decide(Q[0], C[0], MODELS, Knob("lambda", 0.0))
    assert (d.model, d.quality, d.cost, d.probability) == ("best", 0.9, 0.1, 1.0)
    assert d.score_order() == ["best", "mid", "cheap"]
    assert d.to_dict()["knob"]["kind"] == "lambda"


def test_bad_knobs() -> None:
    with pytest.raises(ConfigError, match="lambda"):
        Knob("lambda", 1.5)
    with pytest.raises(ConfigError, match="kind"):
        Knob("bogus", 1.0)  # type: ignore[arg-type]


def test_calibrate_strong_share_two_models() -> None:
    rng = np.random.default_rng(1)
    q = rng.random((1000, 2))
    c = np.tile([0.1, 0.01], (1000, 1))
    knob = calibrate(q, c, ["gpt4", "mix"], strong_share=0.3, strong="gpt4")
    share = np.mean(choose(q, c, knob, ["gpt4", "mix"]) == 0)
    assert share == pytest.approx(0.3, abs=0.002)


def test_calibrate_mean_cost_many_models() -> None:
    rng = np.random.default_rng(2)
    q = rng.random((500, 3))
    c = np.tile([0.001, 0.01, 0.1], (500, 1))
    knob = calibrate(q, c, MODELS, mean_cost=0.02)
    picked = choose(q, c, knob, MODELS)
    spend = c[np.arange(500), picked].mean()
    assert spend <= 0.02
    richer = choose(q, c, type(knob)("lambda", max(knob.value - 0.01, 0.0)), MODELS)
    assert c[np.arange(500), richer].mean() >= spend
