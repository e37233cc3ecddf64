"""LayerNorm, persistent and software-pipelined: PROGRAMS_PER_SM programs an SM each walk
rows pid, pid + P, ... and issue the next row's load before reducing the current one, so
every program has a row in flight while it reduces and stores. Mean and variance from one
two-value reduction of shifted sums (d = x - x[0]), as in the shipped solution. An
alternative solution file for benchmarks/kernels_sweep.py; w and b are loaded once a
program."""

import torch
import triton
import triton.language as tl

EPS = 1e-5
LOG2_WARPS = 3
PROGRAMS_PER_SM = 4


@triton.jit
def _add2(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.jit
def _layernorm_persistent(x_ptr, w_ptr, b_ptr, y_ptr, M: tl.constexpr, N: tl.constexpr, BLOCK: tl.constexpr,
                          ITERS: tl.constexpr, EPS: tl.constexpr):
    row = tl.program_id(0)
    step = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    cmask = cols < N
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row.to(tl.int64) * N + cols, mask=cmask & (row < M), other=0.0)
    for _ in range(ITERS):
        nxt = row + step
        x_next = tl.load(x_ptr + nxt.to(tl.int64) * N + cols, mask=cmask & (nxt < M), other=0.0,
                         eviction_policy="evict_first")
        xf = x.to(tl.float32)
        shift = tl.load(x_ptr + row.to(tl.int64) * N, mask=row < M, other=0.0).to(tl.float32)  # x[0]: cached
        d = tl.where(cmask, xf - shift, 0.0)
        s1, s2 = tl.reduce((d, d * d), 0, _add2)
        dmean = s1 / N
        rstd = tl.rsqrt(tl.maximum(s2 / N - dmean * dmean, 0.0) + EPS)
        y = (xf - (shift + dmean)) * rstd * w + b
        tl.store(y_ptr + row.to(tl.int64) * N + cols, y.to(y_ptr.dtype.element_ty), mask=cmask & (row < M))
        x = x_next
        row = nxt


def solution(x, w, b):
    x = x.contiguous()
    m, n = x.shape
    y = torch.empty_like(x)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2
    programs = min(m, sms * PROGRAMS_PER_SM)
    _layernorm_persistent[(programs,)](x, w, b, y, M=m, N=n, BLOCK=triton.next_power_of_2(n),
                                       ITERS=(m + programs - 1) // programs, EPS=EPS, num_warps=2**LOG2_WARPS)
    return y
