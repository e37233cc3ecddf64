"""Residual add + RMSNorm in one pass: each program takes 2**LOG2_ROWS rows as one
[ROWS, BLOCK] tile; h = x + r is written once and normalised from registers."""

import torch
import triton
import triton.language as tl

EPS = 1e-6
# x and r read once, h written once and normalised from registers (no re-read of h). The weight
# is loaded with x and r: stored after h, its load could not be moved above that store (the
# pointers may alias), so in the sm_90 SASS it waited for x and r. The timed call includes
# Triton's host-side launch: five pointers and the row count, everything else constexpr (the
# stride is the width: inputs made contiguous). Two rows a program (predicted: more loads in
# flight a thread before the reduction: 3 x 4 16-byte loads), 8 warps; x, r streamed
# (evict_first), the weight kept (evict_last). H200 before: 233 us
# against 191 us, bound 126 us. benchmarks/kernels_sweep.py tries rows x warps.
LOG2_ROWS = 1
LOG2_WARPS = 3


@triton.jit
def _add_rmsnorm(x_ptr, r_ptr, w_ptr, h_ptr, y_ptr, M, N: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                 EVEN: tl.constexpr, EPS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    if EVEN:
        x = tl.load(x_ptr + offs, eviction_policy="evict_first").to(tl.float32)
        r = tl.load(r_ptr + offs, eviction_policy="evict_first").to(tl.float32)
        w = tl.load(w_ptr + cols, eviction_policy="evict_last").to(tl.float32)
    else:
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        r = tl.load(r_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0, eviction_policy="evict_last").to(tl.float32)
    h = (x + r).to(h_ptr.dtype.element_ty)
    hf = h.to(tl.float32)  # normalise h as stored, like the unfused code
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=1) / N + EPS)
    y = (hf * rstd[:, None] * w[None, :]).to(y_ptr.dtype.element_ty)
    if EVEN:
        tl.store(h_ptr + offs, h)
        tl.store(y_ptr + offs, y)
    else:
        tl.store(h_ptr + offs, h, mask=mask)
        tl.store(y_ptr + offs, y, mask=mask)


def solution(x, r, w):
    x, r = x.contiguous(), r.contiguous()
    m, n = x.shape
    h, y = torch.empty_like(x), torch.empty_like(x)
    block = triton.next_power_of_2(n)
    _add_rmsnorm[((m + 2**LOG2_ROWS - 1) >> LOG2_ROWS,)](
        x, r, w, h, y, m, N=n, BLOCK=block, ROWS=2**LOG2_ROWS, EVEN=block == n and m % 2**LOG2_ROWS == 0, EPS=EPS,
        num_warps=2**LOG2_WARPS)
    return h, y
