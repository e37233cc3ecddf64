"""LayerNorm: one program per row, the row read once into registers; mean and variance in
one fused reduction of shifted sums."""

import torch
import triton
import triton.language as tl

EPS = 1e-5
# One program per row, the row read once into registers, 8 warps for 4096 columns (16 values a
# thread, two 16-byte loads). The H100 bench (kernels_bench-h100.json): 209 us against eager's
# 166 us (rmsnorm, the same bytes and layout: 147 us). Its sm_90 SASS (ptxas, no GPU needed)
# showed why: the mean's reduction, then the variance's (it needs the mean: five barriers in
# all), and only then the loads of w and b, which the barriers kept the compiler from hoisting:
# a row's latency chain was DRAM + two cross-warp reductions + an L1/L2 round trip. Now
# (predicted: close to rmsnorm, ~150 us on the H100):
# - w and b are no longer behind the reductions: ptxas now issues their loads before the first
#   barrier, so their latency overlaps the cross-warp part of the one reduction left;
# - mean and variance come from one two-value reduction (two barriers) of the sums of d and d*d,
#   d = x - x[0] (shifted data: no cancellation unless the row's spread is tiny against
#   |x[0] - mean|, unlike E[x^2] - mean^2; fp32 throughout);
# - at most 40 registers while a thread holds <= 16 values (ptxas: 40, no spills; 48 without the
#   cap), so 6 programs of 8 warps stay resident per SM, as before the change.
LOG2_WARPS = 3


@triton.jit
def _add2(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.jit
def _layernorm(x_ptr, w_ptr, b_ptr, y_ptr, stride, eps, N: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(x_ptr + row * stride).to(tl.float32)  # the row's first value (same cache line as x)
    d = tl.where(mask, x - shift, 0.0)
    s1, s2 = tl.reduce((d, d * d), 0, _add2)
    dmean = s1 / N
    rstd = tl.rsqrt(tl.maximum(s2 / N - dmean * dmean, 0.0) + eps)
    xc = x - (shift + dmean)
    tl.store(y_ptr + row * stride + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)


def _maxnreg(block, warps):
    return 40 if block // (32 * warps) <= 16 else None


def solution(x, w, b):
    x = x.contiguous()
    m, n = x.shape
    y = torch.empty_like(x)
    block = triton.next_power_of_2(n)
    _layernorm[(m,)](x, w, b, y, x.stride(0), EPS, N=n, BLOCK=block, maxnreg=_maxnreg(block, 2**LOG2_WARPS),
                     num_warps=2**LOG2_WARPS)
    return y
