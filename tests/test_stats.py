"""distill.report.stats against hand-computed values (t quantiles from printed t tables)."""

from __future__ import annotations

import math

import pytest

from distill.report.stats import mean_sd, paired_difference, t_quantile

# two-sided 95% critical values t_{0.975, df}, as printed in any t table
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 30: 2.0423, 120: 1.9799}


@pytest.mark.parametrize("df, expected", sorted(T975.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_other_levels_symmetry_and_normal_limit():
    assert t_quantile(0.95, 1) == pytest.approx(6.3138, abs=1e-4)  # one-sided 95%, df 1
    assert t_quantile(0.995, 4) == pytest.approx(4.6041, abs=1e-4)
    assert t_quantile(0.025, 3) == pytest.approx(-t_quantile(0.975, 3))
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)  # the normal quantile
    assert t_quantile(0.75, 1) == pytest.approx(1.0, abs=1e-9)  # Cauchy: tan(pi/4)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))  # sum of squares 5, n - 1 = 3
    mean, sd = mean_sd([60.59])
    assert mean == 60.59 and math.isnan(sd)  # one seed has no spread to report
    with pytest.raises(ValueError):
        mean_sd([])


def test_paired_difference_three_seeds():
    # differences 1, 2, 3: mean 2, sd 1, half-width 4.3027 / sqrt(3) = 2.4841
    mean, sd, lo, hi, n = paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert (mean, sd, n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    assert lo == pytest.approx(2.0 - 2.48414, abs=1e-4) and hi == pytest.approx(2.0 + 2.48414, abs=1e-4)


def test_paired_difference_five_seeds():
    # differences 0.5, 0.3, 0.1, 0.7, 0.4: mean 0.4, squares 0.2 / 4 -> sd sqrt(0.05) = 0.22361,
    # half-width 2.7764 * 0.22361 / sqrt(5) = 0.27764
    mean, sd, lo, hi, n = paired_difference([1.5, 1.3, 1.1, 1.7, 1.4], [1.0] * 5)
    assert mean == pytest.approx(0.4) and sd == pytest.approx(0.223607, abs=1e-6) and n == 5
    assert (lo, hi) == (pytest.approx(0.12236, abs=1e-4), pytest.approx(0.67764, abs=1e-4))


def test_paired_difference_two_seeds_kd_against_scratch():
    # cifar10_kd.md: kd 63.62, 60.26 vs scratch 60.59, 61.00 -> differences 3.03, -0.74; mean 1.145,
    # sd 3.77 / sqrt(2) = 2.6658, half-width 12.7062 * 2.6658 / sqrt(2) = 23.951: an interval that spans zero
    mean, sd, lo, hi, n = paired_difference([63.62, 60.26], [60.59, 61.00])
    assert mean == pytest.approx(1.145) and sd == pytest.approx(2.66579, abs=1e-4) and n == 2
    assert lo == pytest.approx(1.145 - 23.9517, abs=1e-3) and hi == pytest.approx(1.145 + 23.9517, abs=1e-3)
    assert lo < 0 < hi


def test_paired_difference_is_paired_not_pooled():
    # a constant shift: the pairs agree exactly, so the interval collapses though each arm's spread is large
    mean, sd, lo, hi, n = paired_difference([50.0, 60.0, 70.0], [49.0, 59.0, 69.0])
    assert (mean, sd, lo, hi, n) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12),
                                     pytest.approx(1.0), pytest.approx(1.0), 3)


def test_paired_difference_edge_cases():
    mean, sd, lo, hi, n = paired_difference([63.62], [60.59])
    assert mean == pytest.approx(3.03) and n == 1 and all(math.isnan(v) for v in (sd, lo, hi))
    with pytest.raises(ValueError, match="pair the runs by seed"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_difference([], [])
