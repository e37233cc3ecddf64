"""RMSNorm: one program per row, the whole row in registers."""

import torch
import triton
import triton.language as tl

EPS = 1e-6
# One program per row with the whole row in registers: one read of x, one write of y, the
# weight from L2. 8 warps for 4096 columns (16 values a thread, two 128-bit loads), the
# usual rule (Liger, Unsloth: 8 warps from 2048 to 8191 columns). The first H100 run: 177 us
# against eager's 144 us, bound 89 us; the time includes Triton's host-side launch, which
# eager PyTorch does not pay. Left as it is for want of a measurement that says otherwise;
# the search tunes LOG2_WARPS (2..16 warps) and tries the warps_by_width variant.
LOG2_WARPS = 3  # num_warps = 2**LOG2_WARPS


@triton.jit
def _rmsnorm(x_ptr, w_ptr, y_ptr, stride, eps, N: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(y_ptr + row * stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def solution(x, w):
    x = x.contiguous()
    m, n = x.shape
    y = torch.empty_like(x)
    _rmsnorm[(m,)](x, w, y, x.stride(0), EPS, N=n, BLOCK=triton.next_power_of_2(n), num_warps=2**LOG2_WARPS)
    return y
