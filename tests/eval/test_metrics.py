"""Metrics of DESIGN.md section 8 against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from thalamus.eval import metrics as M

# 4 prompts x 3 models; the comments give the hand-computed answers used below
Q = np.array([[1.0, 1.0, 0.0],   # tie m0/m1 at 1 -> oracle takes the cheaper m1 (0.1)
              [0.0, 0.5, 1.0],   # m2 (0.4)
              [0.0, 0.0, 0.0],   # all tied at 0 -> the cheapest, m1 (0.05)
              [0.2, 0.8, 0.8]])  # tie m1/m2 at 0.8 -> the cheaper m2 (0.2)
C = np.array([[0.3, 0.1, 0.05],
              [0.1, 0.2, 0.4],
              [0.1, 0.05, 0.2],
              [0.1, 0.3, 0.2]])


def test_operating_point_is_mean_of_chosen_entries() -> None:
    p = M.operating_point(Q, C, np.array([0, 1, 2, 1]))
    assert p.quality == pytest.approx((1 + 0.5 + 0 + 0.8) / 4)
    assert p.cost == pytest.approx((0.3 + 0.2 + 0.2 + 0.3) / 4)


def test_per_query_oracle_on_four_prompts() -> None:
    choice = M.per_query_oracle(Q, C)
    assert choice.tolist() == [1, 2, 1, 2]
    p = M.operating_point(Q, C, choice)
    assert p.quality == pytest.approx(0.7)
    assert p.cost == pytest.approx(0.1875)


def test_best_single_random_and_dataset_oracle() -> None:
    assert M.best_single(Q, C) == 1  # mean quality 0.3, 0.575, 0.45
    r = M.random_point(Q, C)
    assert r.quality == pytest.approx((0.3 + 0.575 + 0.45) / 3)
    assert r.cost == pytest.approx((0.15 + 0.1625 + 0.2125) / 3)
    # tasks a = rows 0, 2 (m0 and m1 tie at 0.5, m1 cheaper); b = rows 1, 3 (m2 best, 0.9)
    choice, per_task = M.dataset_oracle(Q, C, np.array(["a", "b", "a", "b"], dtype=object))
    assert per_task == {"a": 1, "b": 2}
    assert choice.tolist() == [1, 2, 1, 2]
    # tasks a = rows 0, 1; b = rows 2, 3 (m1 and m2 tie at 0.4, m1 cheaper): the best single model
    choice, per_task = M.dataset_oracle(Q, C, np.array(["a", "a", "b", "b"], dtype=object))
    assert per_task == {"a": 1, "b": 1}
    # no task labels: the best single model
    assert M.dataset_oracle(Q, C, np.array([""] * 4, dtype=object))[0].tolist() == [1] * 4


def test_best_single_prefers_cheaper_on_ties() -> None:
    q = np.array([[1.0, 1.0], [0.0, 0.0]])
    c = np.array([[2.0, 1.0], [2.0, 1.0]])
    assert M.best_single(q, c) == 1


def test_gap_closed() -> None:
    assert M.gap_closed(0.6375, 0.575, 0.7) == pytest.approx(0.5)
    assert M.gap_closed(0.7, 0.575, 0.7) == pytest.approx(1.0)
    assert M.gap_closed(0.5, 0.5, 0.5) is None


def test_hull_drops_dominated_collinear_and_post_max_points() -> None:
    cost = np.array([1.0, 2.0, 3.0, 4.0, 3.0, 5.0, 0.5, 2.0])
    qual = np.array([0.5, 0.55, 0.8, 0.7, 0.6, 0.8, 0.2, 0.65])
    # (2, 0.55) lies under the chord (1, .5)-(3, .8); (2, .65) lies on it; (4, .7) and (5, .8)
    # cost more than the cheapest best point; (3, .6) shares a cost with a better point
    hull = M.upper_hull(cost, qual)
    assert hull.cost.tolist() == [0.5, 1.0, 3.0]
    assert hull.quality.tolist() == [0.2, 0.5, 0.8]


def test_hull_is_non_decreasing_concave_and_above_every_point() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        cost, qual = rng.uniform(0.001, 1, 30), rng.uniform(0, 1, 30)
        hull = M.upper_hull(cost, qual)
        assert np.all(np.diff(hull.cost) > 0) and np.all(np.diff(hull.quality) > 0)
        slopes = np.diff(hull.quality) / np.diff(hull.cost)
        assert np.all(np.diff(slopes) < 1e-12)  # concave
        assert np.all(hull(cost) >= qual - 1e-12)
        assert hull.max_quality == qual.max()


def test_hull_of_one_point_and_non_finite_points() -> None:
    hull = M.upper_hull(np.array([0.2, np.nan]), np.array([0.4, 0.9]))
    assert hull.cost.tolist() == [0.2] and hull.quality.tolist() == [0.4]
    assert M.aiq(hull, (0.1, 1.0)) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        M.upper_hull(np.array([np.nan]), np.array([1.0]))


def test_aiq_and_quality_at_budget_of_a_known_hull() -> None:
    hull = M.Hull(np.array([1.0, 3.0]), np.array([0.5, 0.8]))
    # [0, 1] held at 0.5; [1, 3] trapezoid 1.3; [3, 4] held at 0.8 -> 2.6 / 4
    assert M.aiq(hull, (0.0, 4.0)) == pytest.approx(0.65)
    # [2, 3]: (0.65 + 0.8) / 2; [3, 4]: 0.8 -> 1.525 / 2
    assert M.aiq(hull, (2.0, 4.0)) == pytest.approx(0.7625)
    assert M.aiq(hull, (2.0, 2.0)) == pytest.approx(0.65)
    assert M.quality_at_budget(hull, 2.0) == pytest.approx(0.65)
    assert M.quality_at_budget(hull, 0.1) == pytest.approx(0.5)
    assert M.quality_at_budget(hull, 10.0) == pytest.approx(0.8)


def test_zero_router_is_hull_of_single_models() -> None:
    # model points: m0 (0.15, 0.3), m1 (0.1625, 0.575), m2 (0.2125, 0.45) -> m2 is dominated
    zero = M.zero_router(Q, C)
    np.testing.assert_allclose(zero.cost, [0.15, 0.1625])
    np.testing.assert_allclose(zero.quality, [0.3, 0.575])
    lo, hi = M.cost_range_of(C.mean(axis=0))
    assert (lo, hi) == pytest.approx((0.15, 0.2125))
    # [0.15, 0.1625]: mean 0.4375 over 0.0125; [0.1625, 0.2125]: 0.575 over 0.05
    assert M.aiq(zero, (lo, hi)) == pytest.approx((0.4375 * 0.0125 + 0.575 * 0.05) / 0.0625)


def test_cost_saving_and_cost_to_reach() -> None:
    hull = M.Hull(np.array([1.0, 3.0]), np.array([0.5, 0.8]))
    assert M.cost_to_reach(hull, 0.65) == pytest.approx(2.0)
    assert M.cost_saving(hull, 0.65, 4.0) == pytest.approx(0.5)
    assert M.cost_saving(hull, 0.4, 4.0) == pytest.approx(0.75)  # reached at the first vertex
    assert M.cost_saving(hull, 0.8, 2.0) == pytest.approx(-0.5)  # needs more than the reference
    assert M.cost_saving(hull, 0.9, 4.0) is None
    assert M.cost_saving(hull, 0.6, 0.0) is None


def test_random_two_model_router_has_apgr_one_half() -> None:
    weak_strong_q = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    cost = np.tile([1.0, 10.0], (4, 1))
    curve = M.two_model_curve(weak_strong_q, cost, np.zeros(4), strong=1)  # no information: one tie
    np.testing.assert_allclose(curve.call_share, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve.pgr, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve.cost, 1 + 9 * curve.call_share)
    assert M.apgr(curve.call_share, curve.pgr) == pytest.approx(0.5, abs=1e-15)
    assert M.cpt(curve.call_share, curve.pgr, 0.5) == 0.5
    share = np.linspace(0, 1, 101)
    assert M.apgr(share, share) == pytest.approx(0.5, abs=1e-15)


def test_two_model_curve_by_margin_by_hand() -> None:
    q = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # weak 0.5, strong 0.75
    cost = np.tile([1.0, 10.0], (4, 1))
    # order by margin: rows 1 (+1), 2 (+1), 3 (-1), 0 (0)
    curve = M.two_model_curve(q, cost, np.array([0.1, 0.9, 0.5, 0.3]), strong=1)
    np.testing.assert_allclose(curve.quality, [0.5, 0.75, 1.0, 0.75, 0.75])
    np.testing.assert_allclose(curve.pgr, [0, 1, 2, 1, 1])
    assert M.apgr(curve.call_share, curve.pgr) == pytest.approx(1.125)
    assert M.cpt(curve.call_share, curve.pgr, 0.5) == 0.25
    assert M.cpt(curve.call_share, curve.pgr, 1.5) == 0.5


def test_tied_margins_are_sent_together_whatever_the_row_order() -> None:
    q = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    cost = np.tile([1.0, 10.0], (4, 1))
    margin = np.array([0.9, 0.9, 0.1, 0.1])  # groups {0, 1}: gain 1; {2, 3}: gain 0
    curve = M.two_model_curve(q, cost, margin, strong=1)
    np.testing.assert_allclose(curve.pgr, [0, 0.5, 1, 1, 1])
    perm = np.array([1, 0, 3, 2])
    again = M.two_model_curve(q[perm], cost[perm], margin[perm], strong=1)
    np.testing.assert_allclose(again.quality, curve.quality)


def test_strong_weak_and_undefined_pgr() -> None:
    q = np.array([[1.0, 0.0], [1.0, 1.0]])
    c = np.array([[5.0, 1.0], [5.0, 1.0]])
    assert M.strong_weak(q, c) == (0, 1)
    curve = M.two_model_curve(np.ones((2, 2)), c, np.zeros(2), strong=0)
    assert np.isnan(curve.pgr).all()
    assert M.cpt(curve.call_share, curve.pgr, 0.5) is None


def test_cpt_on_a_step_curve_uses_the_running_max() -> None:
    share = np.linspace(0, 1, 6)
    pgr = np.array([0, 0.2, 0.1, 0.6, 0.9, 1.0])
    assert M.cpt(share, pgr, 0.5) == pytest.approx(0.6)
    assert M.cpt(share, pgr, 0.8) == pytest.approx(0.8)
    assert M.cpt(share, pgr, 1.1) is None
    dip = np.array([0, 0.6, 0.3, 0.4, 0.7, 1.0])  # running max 0, .6, .6, .6, .7, 1
    assert M.cpt(share, dip, 0.5) == pytest.approx(0.2)
    assert M.cpt(share, dip, 0.65) == pytest.approx(0.8)
