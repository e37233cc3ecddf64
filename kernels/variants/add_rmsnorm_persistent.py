"""Residual add + RMSNorm, persistent and software-pipelined: PROGRAMS_PER_SM programs an SM
each walk rows pid, pid + P, ... and issue the next row's loads of x and r before reducing
the current row, so every program has a row in flight while it reduces and stores. An
alternative solution file for benchmarks/kernels_sweep.py; the weight is loaded once a
program; h is normalised as stored, like the unfused code."""

import torch
import triton
import triton.language as tl

EPS = 1e-6
LOG2_WARPS = 3
PROGRAMS_PER_SM = 4


@triton.jit
def _add_rmsnorm_persistent(x_ptr, r_ptr, w_ptr, h_ptr, y_ptr, M: tl.constexpr, N: tl.constexpr,
                            BLOCK: tl.constexpr, ITERS: tl.constexpr, EPS: tl.constexpr):
    row = tl.program_id(0)
    step = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    cmask = cols < N
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    offs = row.to(tl.int64) * N + cols
    x = tl.load(x_ptr + offs, mask=cmask & (row < M), other=0.0)
    r = tl.load(r_ptr + offs, mask=cmask & (row < M), other=0.0)
    for _ in range(ITERS):
        nxt = row + step
        noffs = nxt.to(tl.int64) * N + cols
        x_next = tl.load(x_ptr + noffs, mask=cmask & (nxt < M), other=0.0, eviction_policy="evict_first")
        r_next = tl.load(r_ptr + noffs, mask=cmask & (nxt < M), other=0.0, eviction_policy="evict_first")
        h = (x.to(tl.float32) + r.to(tl.float32)).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + offs, h, mask=cmask & (row < M))
        hf = h.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / N + EPS)
        tl.store(y_ptr + offs, (hf * rstd * w).to(y_ptr.dtype.element_ty), mask=cmask & (row < M))
        x, r, row, offs = x_next, r_next, nxt, noffs


def solution(x, r, w):
    x, r = x.contiguous(), r.contiguous()
    m, n = x.shape
    h, y = torch.empty_like(x), torch.empty_like(x)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2
    programs = min(m, sms * PROGRAMS_PER_SM)
    _add_rmsnorm_persistent[(programs,)](x, r, w, h, y, M=m, N=n, BLOCK=triton.next_power_of_2(n),
                                         ITERS=(m + programs - 1) // programs, EPS=EPS, num_warps=2**LOG2_WARPS)
    return h, y
