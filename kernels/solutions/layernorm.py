"""LayerNorm: each program normalises 2**LOG2_ROWS rows held as one [ROWS, BLOCK] tile in
registers; mean and variance in one fused reduction of shifted sums."""

import torch
import triton
import triton.language as tl

EPS = 1e-5
# The row read once into registers; w and b loaded with x, before the reduction (so their
# latency overlaps it); mean and variance from one two-value reduction of the sums of d and
# d*d, d = x - x[0] (shifted data: no cancellation unless the row's spread is tiny against
# |x[0] - mean|; fp32 throughout). The timed call includes Triton's host-side launch: four
# pointers and the row count, everything else constexpr (the stride is the width: the input is
# made contiguous). Two rows a program (predicted: twice the loads in flight a thread before the
# reduction), 8 warps; x streamed (evict_first), w and b kept (evict_last). Registers are capped
# at 40 while a thread holds <= 16 values (6 programs of 8 warps an SM, no spills in the SASS).
# H200 before (one row a program): 159 us against eager's 141 us, bound 63 us.
LOG2_ROWS = 1
LOG2_WARPS = 3


@triton.jit
def _add2(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.jit
def _layernorm(x_ptr, w_ptr, b_ptr, y_ptr, M, N: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
               EVEN: tl.constexpr, EPS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_offs = rows.to(tl.int64) * N
    offs = row_offs[:, None] + cols[None, :]
    if EVEN:
        x = tl.load(x_ptr + offs, eviction_policy="evict_first").to(tl.float32)
        w = tl.load(w_ptr + cols, eviction_policy="evict_last").to(tl.float32)
        b = tl.load(b_ptr + cols, eviction_policy="evict_last").to(tl.float32)
        shift = tl.load(x_ptr + row_offs).to(tl.float32)  # each row's first value (same cache line as x)
        d = x - shift[:, None]
    else:
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0, eviction_policy="evict_last").to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cols < N, other=0.0, eviction_policy="evict_last").to(tl.float32)
        shift = tl.load(x_ptr + row_offs, mask=rows < M, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[:, None], 0.0)
    s1, s2 = tl.reduce((d, d * d), 1, _add2)
    dmean = s1 / N
    rstd = tl.rsqrt(tl.maximum(s2 / N - dmean * dmean, 0.0) + EPS)
    xc = x - (shift + dmean)[:, None]
    y = (xc * rstd[:, None] * w[None, :] + b[None, :]).to(y_ptr.dtype.element_ty)
    if EVEN:
        tl.store(y_ptr + offs, y)
    else:
        tl.store(y_ptr + offs, y, mask=mask)


def solution(x, w, b):
    x = x.contiguous()
    m, n = x.shape
    y = torch.empty_like(x)
    block = triton.next_power_of_2(n)
    rows = 2**LOG2_ROWS
    _layernorm[((m + rows - 1) >> LOG2_ROWS,)](
        x, w, b, y, m, N=n, BLOCK=block, ROWS=rows, EVEN=block == n and m % rows == 0, EPS=EPS,
        maxnreg=40 if rows * block <= 16 * 32 * 2**LOG2_WARPS else None, num_warps=2**LOG2_WARPS)
    return y
