"""The report's across-seed math on tiny curves with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.aggregate import band, bootstrap_mean, common_grid, curve, final_score, on_grid


def test_grid_is_the_shared_range_and_seeds_are_interpolated():
    a = curve([0, 10, 20, 30], [0.0, 1.0, 2.0, 3.0])
    b = curve([5, 15, 25], [10.0, 20.0, 30.0])
    grid = common_grid([a, b])
    # [latest first step, earliest last step] = [5, 25]; the steps either seed logged there
    assert grid.tolist() == [5, 10, 15, 20, 25]
    values = on_grid([a, b], grid)
    assert values.tolist() == [[0.5, 1.0, 1.5, 2.0, 2.5], [10.0, 15.0, 20.0, 25.0, 30.0]]
    b_ = band([a, b])
    assert b_.mean.tolist() == [5.25, 8.0, 10.75, 13.5, 16.25] and b_.seeds == 2


def test_three_seeds_on_the_same_steps_need_no_interpolation():
    curves = [curve([100, 200], [1.0, 4.0]), curve([100, 200], [2.0, 5.0]), curve([100, 200], [6.0, 6.0])]
    b = band(curves)
    assert b.grid.tolist() == [100, 200] and b.mean.tolist() == [3.0, 5.0]


def test_curve_orders_steps_and_keeps_the_last_of_a_repeated_step():
    c = curve([20, 10, 20], [2.0, 1.0, 3.0])
    assert c.x.tolist() == [10, 20] and c.y.tolist() == [1.0, 3.0]


def test_seeds_without_a_shared_step_have_no_band_and_the_grid_is_thinned():
    assert band([curve([0, 1], [0, 0]), curve([2, 3], [0, 0])]) is None
    many = curve(list(range(1000)), [0.0] * 1000)
    grid = common_grid([many], max_points=11)
    assert grid.tolist() == [0, 100, 200, 300, 400, 500, 599, 699, 799, 899, 999]


def test_bootstrap_band_contains_the_mean_is_seeded_and_shrinks_with_more_seeds():
    values = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 8.0]])
    lo, hi = bootstrap_mean(values, seed=3)
    mean = values.mean(axis=0)
    assert np.all(lo <= mean) and np.all(mean <= hi) and np.all(hi - lo > 0)
    # resampled means never leave the seeds' range
    assert np.all(lo >= values.min(axis=0)) and np.all(hi <= values.max(axis=0))
    again = bootstrap_mean(values, seed=3)
    assert np.array_equal(lo, again[0]) and np.array_equal(hi, again[1])
    # the same seeds repeated: the mean is the same, its interval narrower
    lo4, hi4 = bootstrap_mean(np.tile(values, (4, 1)), seed=3)
    assert np.all(hi4 - lo4 < hi - lo) and np.all(lo4 <= mean) and np.all(mean <= hi4)
    # identical seeds: no uncertainty at all
    lo1, hi1 = bootstrap_mean(np.ones((5, 2)))
    assert lo1.tolist() == hi1.tolist() == [1.0, 1.0]


def test_final_score_averages_each_seeds_last_rows():
    a = curve([1, 2, 3, 4], [0.0, 10.0, 2.0, 4.0])  # last 2 rows: 3.0
    b = curve([1, 2, 3], [5.0, 6.0, 8.0])  # last 2 rows: 7.0
    s = final_score([a, b], last=2)
    assert (s.mean, s.seeds) == (5.0, 2) and 3.0 <= s.lo <= 5.0 <= s.hi <= 7.0
    one = final_score([a], last=10)  # fewer rows than asked: all of them
    assert (one.mean, one.lo, one.hi) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError, match="last=0"):
        final_score([a], last=0)
