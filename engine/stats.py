"""The statistics behind acceptance: a one-sided Welch t-test over seeds."""

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
