"""A trusted Triton kernel the worker launches before any candidate code: it initialises
the device, the compiler and their threads, so the guards' snapshot is taken after them."""

import torch
import triton
import triton.language as tl


@triton.jit
def _copy(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n) * 2.0, mask=offs < n)


def warm(device: str) -> None:
    x = torch.arange(100, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    _copy[(2,)](x, y, 100, BLOCK=64)
    if not torch.equal(y, x * 2):
        raise RuntimeError("the warm-up Triton kernel computed a wrong result: Triton is broken here")
