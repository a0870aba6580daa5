"""Δm% in both conventions (reference §2.2's worked case) and mean rank."""

import pytest

from core.errors import ConfigError
from mtl import metrics

BASE = {"A": {"m0": 96.0, "m1": 98.0}, "B": {"m0": 0.2}}
NEW = {"A": {"m0": 93.0, "m1": 99.0}, "B": {"m0": 0.5}}
HIGHER = {"A": {"m0": True, "m1": False}, "B": {"m0": True}}


def test_maninis_delta_m_of_the_reference_case():
    assert metrics.delta_m(NEW, BASE, HIGHER) == pytest.approx(-48.62, abs=5e-3)


def test_libmtl_delta_p_of_the_reference_case():
    assert metrics.delta_p(NEW, BASE, HIGHER) == pytest.approx(73.96, abs=5e-3)


def test_the_baseline_against_itself_is_zero():
    assert metrics.delta_m(BASE, BASE, HIGHER) == 0.0
    assert metrics.delta_p(BASE, BASE, HIGHER) == 0.0


def test_mean_rank_averages_ties_and_returns_the_method_set():
    results = {"ew": NEW, "stl": BASE, "tie": NEW}
    out = metrics.mean_rank(results, HIGHER)
    assert out["methods"] == ["ew", "stl", "tie"]
    # A/m0: stl 1, ew/tie 2.5; A/m1 (lower better): stl 1, ew/tie 2.5; B/m0: ew/tie 1.5, stl 3.
    assert out["mean_rank"]["stl"] == pytest.approx((1 + 1 + 3) / 3)
    assert out["mean_rank"]["ew"] == pytest.approx((2.5 + 2.5 + 1.5) / 3)


@pytest.mark.parametrize("result, message", [({"A": NEW["A"]}, "task 'B' has a baseline"),
                                             ({"A": {"m0": 1.0}, "B": NEW["B"]}, "A/m1")])
def test_missing_results_are_named(result, message):
    with pytest.raises(ConfigError, match=message):
        metrics.delta_m(result, BASE, HIGHER)
