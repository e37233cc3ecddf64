"""Row softmax: each program takes 2**LOG2_ROWS rows as one [ROWS, BLOCK] tile in registers;
exp2 with a folded log2(e)."""

import torch
import triton
import triton.language as tl

# 16 warps for the 8192-wide fp32 rows (Liger's and Unsloth's rule: 16 from 8192 columns): 16
# values a thread, so x and exp(x) fit in few registers and the cross-warp max and sum have
# many threads. One row a program for rows this wide (32 KB of loads a program already). The
# timed call includes Triton's host-side launch: two pointers and the row count, everything
# else constexpr (the stride is the width: the input is made contiguous); x streamed
# (evict_first). H200 before: 220 us against 216 us, bound 126 us.
# benchmarks/kernels_sweep.py tries warps x rows.
LOG2_ROWS = 0
LOG2_WARPS = 3  # H200 sweep, 2026-12-03: S 0.646 at 8 warps, 0.618 at 32, 0.516 at 16


@triton.jit
def _softmax(x_ptr, y_ptr, M, N: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, EVEN: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    if EVEN:
        x = tl.load(x_ptr + offs, eviction_policy="evict_first").to(tl.float32)
    else:
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        x = tl.load(x_ptr + offs, mask=mask, other=float("-inf"), eviction_policy="evict_first").to(tl.float32)
    e = tl.exp2((x - tl.max(x, axis=1)[:, None]) * 1.4426950408889634)
    y = (e / tl.sum(e, axis=1)[:, None]).to(y_ptr.dtype.element_ty)
    if EVEN:
        tl.store(y_ptr + offs, y)
    else:
        tl.store(y_ptr + offs, y, mask=mask)


def solution(x):
    x = x.contiguous()
    m, n = x.shape
    y = torch.empty_like(x)
    block = triton.next_power_of_2(n)
    _softmax[((m + 2**LOG2_ROWS - 1) >> LOG2_ROWS,)](
        x, y, m, N=n, BLOCK=block, ROWS=2**LOG2_ROWS, EVEN=block == n and m % 2**LOG2_ROWS == 0,
        num_warps=2**LOG2_WARPS)
    return y
