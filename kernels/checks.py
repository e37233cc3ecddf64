"""Comparing a candidate's output with the reference, the evaluator's own way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kernels.problem import Tol


@dataclass
class Finding:
    check: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


def compare(out: torch.Tensor, ref: torch.Tensor, tol: Tol, where: str, check: str | None = None) -> list[Finding]:
    """Findings for one output (same shape and dtype as ref); none when it passes.

    `check` renames the closeness failures (the replay probe and the timed-output recheck
    report under their own names)."""
    found: list[Finding] = []
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all() and torch.isfinite(r).all():
        bad = int((~torch.isfinite(o)).sum())
        found.append(Finding(check or "correct.finite", f"{where}: {bad} of {o.numel()} values are NaN or inf",
                             {"nonfinite": bad}))
    if o.numel() and not o.any() and r.any():
        found.append(Finding(check or "correct.nonzero", f"{where}: the output is all zeros; the reference is not"))
    if not ref.is_floating_point():
        wrong = int((out != ref).sum())
        if wrong:
            found.append(Finding(check or "correct.match", f"{where}: {wrong} of {out.numel()} values differ "
                                 "(integer output: exact match required)", {"mismatched": wrong}))
        return found
    bound = tol.atol + tol.rtol * r.abs()
    err = (o - r).abs()
    err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
    ratio = float((err <= bound).double().mean()) if err.numel() else 1.0
    worst = float((err / bound.clamp_min(1e-30)).max()) if err.numel() else 0.0
    evidence = {"matched": round(ratio, 6), "required": tol.match, "worst_over_bound": worst,
                "max_abs_error": float(err.max()) if err.numel() else 0.0}
    if ratio < tol.match:
        found.append(Finding(check or "correct.match", f"{where}: {ratio:.2%} of values within atol={tol.atol:g}, "
                             f"rtol={tol.rtol:g}; {tol.match:.2%} required", evidence))
    if worst > tol.cap:
        found.append(Finding(check or "correct.max_error", f"{where}: an error {worst:.3g}x the tolerance "
                             f"(cap {tol.cap:g}x)", evidence))
    return found


def unchanged(after: torch.Tensor, before: torch.Tensor) -> bool:
    """Bit-for-bit equal (NaN-safe): inputs must come back exactly as they went in."""
    if after.shape != before.shape or after.dtype != before.dtype:
        return False
    a = after.contiguous().reshape(-1).view(torch.uint8)
    b = before.contiguous().reshape(-1).view(torch.uint8)
    return bool(torch.equal(a, b))


def changed(new_ref: torch.Tensor, old_ref: torch.Tensor, tol: Tol) -> torch.Tensor:
    """Where two references differ by more than the tolerance (a mask)."""
    if not new_ref.is_floating_point():
        return new_ref != old_ref
    n, o = new_ref.double(), old_ref.double()
    return (n - o).abs() > 2 * (tol.atol + tol.rtol * n.abs())
