"""Acceptance by a one-sided Welch t-test over seeds."""

import pytest

from engine.models import Direction
from engine.stats import compare


def test_clearly_better_candidate_is_accepted_when_minimizing():
    r = compare([1.0, 1.1, 0.9, 1.05, 0.95], [2.0, 2.1, 1.9, 2.05, 1.95], Direction.MINIMIZE, 0.95)
    assert r.accepted and r.p_value < 0.001 and r.improvement == pytest.approx(1.0)


def test_direction_matters():
    cand, par = [1.0, 1.1, 0.9], [2.0, 2.1, 1.9]
    assert not compare(cand, par, Direction.MAXIMIZE, 0.95).accepted
    assert compare(par, cand, Direction.MAXIMIZE, 0.95).accepted


def test_noise_is_not_an_improvement():
    r = compare([1.00, 1.20, 0.80, 1.10], [1.02, 1.18, 0.85, 1.12], Direction.MINIMIZE, 0.95)
    assert not r.accepted and "p =" in r.reason


def test_noise_floor_blocks_tiny_gains():
    r = compare([0.999, 0.998, 0.999], [1.0, 1.0, 1.0], Direction.MINIMIZE, 0.95, noise_floor=0.01)
    assert not r.accepted and "noise floor" in r.reason


def test_deterministic_metrics_compare_by_value():
    assert compare([1.0, 1.0], [2.0, 2.0], Direction.MINIMIZE, 0.95).accepted
    assert not compare([2.0, 2.0], [2.0, 2.0], Direction.MINIMIZE, 0.95).accepted


def test_one_seed_is_not_enough():
    with pytest.raises(ValueError):
        compare([1.0], [2.0, 2.0], Direction.MINIMIZE, 0.95)
