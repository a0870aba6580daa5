"""Tests for the summaries over seeds."""

import math

import pytest

from core import stats


def test_the_interval_is_the_student_t_one():
    # t_{0.975, 2} = 4.303; the sample std of 1, 2, 3 is 1.
    assert stats.mean_ci95([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.303 / math.sqrt(3)),
                                                             rel=1e-3)


def test_one_seed_has_no_interval_and_prints_the_mean_alone():
    mean, half = stats.mean_ci95([3.0])
    assert mean == 3.0 and math.isnan(half)
    assert stats.format_ci((3.0, half)) == "3.00"
    assert stats.format_ci((2.0, 0.125), digits=1) == "2.0 ± 0.1"
