"""Residual add + RMSNorm in one pass: h = x + r is written once and normalised from registers."""

import torch
import triton
import triton.language as tl

EPS = 1e-6
# One program per row: x and r read once, h written once and normalised from registers
# (no re-read of h), 8 warps for 4096 columns. The first H100 run was already ahead of
# eager PyTorch (270 us against 283 us); the last, 284 us against 279 us.
# The weight is loaded with x and r (predicted: a few percent): written after the store of h,
# its load could not be moved above that store (the pointers may alias), so in the sm_90 SASS
# it was issued only once x and r had arrived, and its latency was covered only by the
# reduction's shuffles; now all six 16-byte loads of a thread go out together, before the first
# wait (ptxas: still 40 registers, so the same 6 programs an SM).
LOG2_WARPS = 3


@triton.jit
def _add_rmsnorm(x_ptr, r_ptr, w_ptr, h_ptr, y_ptr, stride, eps, N: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    offs = row * stride + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    h = (x + r).to(h_ptr.dtype.element_ty)
    tl.store(h_ptr + offs, h, mask=mask)
    hf = h.to(tl.float32)  # normalise h as stored, like the unfused code
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / N + eps)
    tl.store(y_ptr + offs, (hf * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def solution(x, r, w):
    x, r = x.contiguous(), r.contiguous()
    m, n = x.shape
    h, y = torch.empty_like(x), torch.empty_like(x)
    _add_rmsnorm[(m,)](x, r, w, h, y, x.stride(0), EPS, N=n, BLOCK=triton.next_power_of_2(n),
                       num_warps=2**LOG2_WARPS)
    return h, y
