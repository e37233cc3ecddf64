"""Rotary embedding: one program per (batch, position) rotates every head of it, so cos
and sin are loaded once per position."""

import torch
import triton
import triton.language as tl

# One program per position rotates all its heads, so cos and sin are read once per position.
LOG2_WARPS = 2


@triton.jit
def _rotary(x_ptr, cos_ptr, sin_ptr, y_ptr, T, H: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    bt = tl.program_id(0).to(tl.int64)
    t = bt % T
    heads = tl.arange(0, BLOCK_H)[:, None]
    cols = tl.arange(0, HALF)[None, :]
    mask = heads < H
    offs = bt * H * 2 * HALF + heads * 2 * HALF + cols
    x1 = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + offs + HALF, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + t * HALF + cols)
    s = tl.load(sin_ptr + t * HALF + cols)
    tl.store(y_ptr + offs, (x1 * c - x2 * s).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + offs + HALF, (x2 * c + x1 * s).to(y_ptr.dtype.element_ty), mask=mask)


def solution(x, cos, sin):
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    b, t, h, d = x.shape
    y = torch.empty_like(x)
    _rotary[(b * t,)](x, cos, sin, y, t, H=h, HALF=d // 2, BLOCK_H=triton.next_power_of_2(h),
                      num_warps=2**LOG2_WARPS)
    return y
