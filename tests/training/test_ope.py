"""Off-policy estimators on hand-computed logs, support detection, and agreement with the truth on a
synthetic full-information problem."""

from __future__ import annotations

import numpy as np
import pytest

from thalamus.errors import DataError
from thalamus.training.ope import LoggedBandit, evaluate, logged_value, one_hot, support


def _four_rows(logging_p: np.ndarray | None = None) -> LoggedBandit:
    # models A, B; rows: (action, propensity, reward) = (A .5 1), (B .25 0), (A .8 0), (B .5 1)
    action = np.array([0, 1, 0, 1])
    mu = np.array([0.5, 0.25, 0.8, 0.5])
    p = np.stack([np.where(action == 0, mu, 1 - mu), np.where(action == 1, mu, 1 - mu)], axis=1)
    return LoggedBandit(["A", "B"], action, mu, np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.1, 0.2, 0.1, 0.2]),
                        pred_quality=np.array([[0.6, 0.5]] * 4), pred_cost=np.array([[0.1, 0.2]] * 4),
                        logging_p=p if logging_p is None else logging_p)


def quality(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    return q


def test_ips_snips_dr_of_always_b_on_a_four_row_log() -> None:
    log = _four_rows()
    result = evaluate(log, one_hot(np.ones(4, dtype=int), 2), quality, n_boot=200)
    est = result.estimates["quality"]
    # weights pi/mu = [0, 4, 0, 2]: IPS = (4*0 + 2*1) / 4; SNIPS = 2 / 6
    assert est["ips"].value == pytest.approx(0.5)
    assert est["snips"].value == pytest.approx(1 / 3)
    # rhat_B = 0.5 + mean residual on B's rows ((0-.5)+(1-.5))/2 = 0.5; DR = 0.5 + (4*(-.5) + 2*(.5)) / 4
    assert est["dr"].value == pytest.approx(0.25)
    assert result.ess == pytest.approx(36 / 20)
    assert result.supported and result.support.unsupported_rows == 0
    for iv in est.values():
        assert iv.lo <= iv.value <= iv.hi
    # cost: IPS = (4*0.2 + 2*0.2) / 4 = 0.3, SNIPS = 1.2 / 6 = 0.2 (B always costs 0.2)
    assert result.estimates["cost"]["ips"].value == pytest.approx(0.3)
    assert result.estimates["cost"]["snips"].value == pytest.approx(0.2)
    assert result.estimates["cost"]["dr"].value == pytest.approx(0.2)


def test_the_logging_policy_itself_is_estimated_at_its_on_policy_mean() -> None:
    log = _four_rows()
    pi = log.logging_p.copy()  # the logging distribution as the candidate: every weight is 1
    result = evaluate(log, pi, quality, n_boot=100)
    assert result.estimates["quality"]["ips"].value == pytest.approx(0.5)
    assert result.estimates["quality"]["snips"].value == pytest.approx(0.5)
    assert logged_value(log, quality, n_boot=100)["quality"].value == pytest.approx(0.5)


def test_a_candidate_outside_the_logged_support_gets_no_number() -> None:
    lp = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # deterministic logging: B never on rows 0, 2
    log = LoggedBandit(["A", "B"], np.array([0, 1, 0, 1]), np.ones(4), np.array([1.0, 0, 0, 1]), np.zeros(4),
                       np.full((4, 2), 0.5), np.zeros((4, 2)), lp)
    pi = one_hot(np.ones(4, dtype=int), 2)
    sup = support(log, pi)
    assert (sup.unsupported_rows, sup.by_model) == (2, {"B": 2})
    result = evaluate(log, pi, quality)
    assert not result.supported and result.estimates == {} and result.ess is None
    assert evaluate(log, pi, quality, max_unsupported=0.5).supported  # the operator may accept some


def test_propensities_outside_zero_one_are_refused() -> None:
    with pytest.raises(DataError, match="row 1: propensity"):
        LoggedBandit(["A"], np.array([0, 0]), np.array([1.0, 0.0]), np.zeros(2), np.zeros(2), np.zeros((2, 1)),
                     np.zeros((2, 1)), np.ones((2, 1)))


def test_dr_is_close_to_the_truth_on_a_full_information_problem() -> None:
    rng = np.random.default_rng(3)
    n, m = 4000, 3
    truth = rng.random((n, m)) * np.array([0.9, 0.6, 0.3])  # expected reward of each model on each row
    greedy = truth.argmax(axis=1)
    eps = 0.2
    p = np.full((n, m), eps / m)
    p[np.arange(n), greedy] += 1 - eps
    action = np.array([rng.choice(m, p=row) for row in p])
    reward = (rng.random(n) < truth[np.arange(n), action]).astype(float)
    noisy = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1)  # an imperfect reward model
    log = LoggedBandit(["a", "b", "c"], action, p[np.arange(n), action], reward, np.zeros(n), noisy,
                       np.zeros((n, m)), p)
    target = one_hot(np.full(n, 1), m)  # always model b: rarely chosen by the logging policy
    true_value = truth[:, 1].mean()
    est = evaluate(log, target, quality, n_boot=300).estimates["quality"]
    assert abs(est["dr"].value - true_value) < 0.02
    assert est["dr"].lo <= true_value <= est["dr"].hi
    assert est["dr"].hi - est["dr"].lo < est["ips"].hi - est["ips"].lo  # the reward model narrows it
