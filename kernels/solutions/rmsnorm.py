"""RMSNorm: each program normalises 2**LOG2_ROWS rows held as one [ROWS, BLOCK] tile in
registers: one read of x, one write of y, the weight from L2."""

import torch
import triton
import triton.language as tl

EPS = 1e-6
# The timed call includes Triton's host-side launch (kernels/timing.py records the start event
# before the Python call), so the launch passes three pointers and the row count: the stride is
# the row width (the input is made contiguous), eps and the widths are constexpr, and the grid
# is a shift. Two rows a program (predicted: fewer, longer programs; each thread has 32 values,
# four 16-byte loads, in flight before the reduction instead of two), 8 warps; x is streamed
# (evict_first), the weight kept (evict_last). The first H100 run (one row a program, 8 warps):
# 177 us against eager's 144 us, bound 89 us; H200: 143 us against 106 us, bound 63 us.
# benchmarks/kernels_sweep.py tries rows x warps.
LOG2_ROWS = 1  # rows a program = 2**LOG2_ROWS
LOG2_WARPS = 3  # num_warps = 2**LOG2_WARPS


@triton.jit
def _rmsnorm(x_ptr, w_ptr, y_ptr, M, N: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
             EVEN: tl.constexpr, EPS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    if EVEN:  # every row and column in range: no masks
        x = tl.load(x_ptr + offs, eviction_policy="evict_first").to(tl.float32)
        w = tl.load(w_ptr + cols, eviction_policy="evict_last").to(tl.float32)
    else:
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0, eviction_policy="evict_last").to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / N + EPS)
    y = (x * rstd[:, None] * w[None, :]).to(y_ptr.dtype.element_ty)
    if EVEN:
        tl.store(y_ptr + offs, y)
    else:
        tl.store(y_ptr + offs, y, mask=mask)


def solution(x, w):
    x = x.contiguous()
    m, n = x.shape
    y = torch.empty_like(x)
    block = triton.next_power_of_2(n)
    _rmsnorm[((m + 2**LOG2_ROWS - 1) >> LOG2_ROWS,)](
        x, w, y, m, N=n, BLOCK=block, ROWS=2**LOG2_ROWS, EVEN=block == n and m % 2**LOG2_ROWS == 0, EPS=EPS,
        num_warps=2**LOG2_WARPS)
    return y
