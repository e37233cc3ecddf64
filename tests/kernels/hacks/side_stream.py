"""Hack: work on a side stream: the kernel runs on a stream of its own, so a timer that
records its end event on the calling stream sees almost nothing. GPU only.
Caught by: runtime.side_stream (its launch is made while the side stream is current),
timing.side_stream (the device-wide end event times it in full), and static.side_stream."""

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


_side = None


def solution(x, w):
    global _side
    _side = _side or torch.cuda.Stream()
    _side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(_side):
        y = rmsnorm(x, w)
    return y
