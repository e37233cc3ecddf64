"""Rotary position embedding on (B, T, H, D), halves convention (as in Llama):
y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin, with cos/sin of shape (T, D/2) in fp32."""

import math

import torch

from kernels.problem import Problem, randn


def make_inputs(s, gen, device, dtype):
    x = randn(gen, s["B"], s["T"], s["H"], s["D"], device=device, dtype=dtype)
    angle = torch.rand(s["T"], s["D"] // 2, generator=gen, device=device) * (2 * math.pi)
    return x, torch.cos(angle), torch.sin(angle)


def _rotate(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def reference(x, cos, sin):
    return _rotate(x.float(), cos, sin).to(x.dtype)


def baseline(x, cos, sin):
    return _rotate(x, cos.to(x.dtype), sin.to(x.dtype))


PROBLEM = Problem(
    name="rotary", title="Rotary embedding (bf16)", make_inputs=make_inputs, reference=reference, baseline=baseline,
    flops=lambda s: 3.0 * s["B"] * s["T"] * s["H"] * s["D"],
    cpu_shapes=({"B": 2, "T": 7, "H": 3, "D": 32}, {"B": 1, "T": 5, "H": 5, "D": 16}),
    gpu_shapes=({"B": 8, "T": 4096, "H": 32, "D": 128}, {"B": 1, "T": 1000, "H": 12, "D": 64},
                {"B": 2, "T": 7, "H": 3, "D": 32}),
    gpu_timed=({"B": 8, "T": 4096, "H": 32, "D": 128},),
    library_ops=(),  # PyTorch has no rotary op: the Triton-launch check does the work
)
