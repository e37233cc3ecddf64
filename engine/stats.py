"""The statistics behind acceptance: a one-sided Welch t-test over seeds, and a one-sided
one-sample t-test against a fixed target (a task's [accept] constraint)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from engine.models import Direction


@dataclass(frozen=True)
class Comparison:
    candidate_mean: float
    parent_mean: float
    improvement: float  # in metric units, positive when the candidate is better
    p_value: float  # one-sided: H1 "the candidate is better"
    accepted: bool
    reason: str


def compare(
    candidate: Sequence[float],
    parent: Sequence[float],
    direction: Direction,
    confidence: float,
    noise_floor: float = 0.0,
) -> Comparison:
    """Accept the candidate only if Welch's one-sided t-test says it beats the parent.

    With zero variance on both sides the t statistic is undefined; then the metric is
    deterministic, and a difference larger than the noise floor is taken as certain.
    """
    cand, par = np.asarray(candidate, float), np.asarray(parent, float)
    if len(cand) < 2 or len(par) < 2:
        raise ValueError("a t-test needs at least two seeds on each side")
    improvement = float(par.mean() - cand.mean()) if direction is Direction.MINIMIZE else float(cand.mean() - par.mean())
    alternative = "less" if direction is Direction.MINIMIZE else "greater"
    if cand.std() == 0 and par.std() == 0:
        p = 0.0 if improvement > 0 else 1.0
    else:
        p = float(stats.ttest_ind(cand, par, equal_var=False, alternative=alternative).pvalue)
        if math.isnan(p):
            p = 1.0
    alpha = 1.0 - confidence
    if improvement <= noise_floor:
        ok, why = False, f"improvement {improvement:.4g} is not above the noise floor {noise_floor:.4g}"
    elif p >= alpha:
        ok, why = False, f"p = {p:.3g} is not below {alpha:.3g} (Welch one-sided, {len(cand)} vs {len(par)} seeds)"
    else:
        ok, why = True, f"p = {p:.3g} < {alpha:.3g} (Welch one-sided, {len(cand)} vs {len(par)} seeds)"
    return Comparison(float(cand.mean()), float(par.mean()), improvement, p, ok, why)


@dataclass(frozen=True)
class TargetTest:
    mean: float
    target: float
    p_value: float  # one-sided: H1 "the mean is beyond the target on the wanted side"
    passed: bool
    reason: str


def beyond_target(values: Sequence[float], target: float, below: bool, alpha: float, name: str) -> TargetTest:
    """Pass only if a one-sided one-sample t-test says the mean of values is below (or
    above) target at p < alpha: the NanoGPT speedrun's rule for its loss target.

    With zero variance the values are taken as exact: p is 0 on the wanted side, else 1.
    """
    x = np.asarray(values, float)
    if len(x) < 2:
        raise ValueError("a t-test needs at least two seeds")
    mean = float(x.mean())
    wanted = mean < target if below else mean > target
    if x.std() == 0:
        p = 0.0 if wanted else 1.0
    else:
        p = float(stats.ttest_1samp(x, target, alternative="less" if below else "greater").pvalue)
        if math.isnan(p):
            p = 1.0
    passed = p < alpha
    side = "below" if below else "above"
    verdict = "<" if passed else "is not below"
    reason = (f"mean {name} {mean:.6g} over {len(x)} seeds {'is' if passed else 'is not'} {side} the target "
              f"{target:.6g} (p = {p:.3g} {verdict} {alpha:.3g}, one-sample t-test)")
    return TargetTest(mean, float(target), p, passed, reason)
