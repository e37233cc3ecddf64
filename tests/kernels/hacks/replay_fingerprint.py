"""Hack: replay outputs keyed on a cheap fingerprint of the inputs (a few values), as a
cache that makes repeated benchmark calls on the same data free.
Caught by: correct.replay_probe."""

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm(x_ptr, w_ptr, y_ptr, stride, eps, N: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(y_ptr + row * stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def rmsnorm(x, w, rows=None):
    m, n = x.shape
    y = torch.empty_like(x)
    _rmsnorm[(rows or m,)](x, w, y, x.stride(0), 1e-6, N=n, BLOCK=triton.next_power_of_2(n))
    return y


_seen = {}


def solution(x, w):
    key = (tuple(x.shape), float(x[0, 0]), float(x[-1, -1]), float(w[0]))
    if key not in _seen:
        _seen[key] = rmsnorm(x, w)
    return _seen[key]
