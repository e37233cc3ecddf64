"""Linear layer with bias and exact (erf) GELU: gelu(A @ W^T + bias), bf16."""

import torch
import torch.nn.functional as F

from kernels.problem import Problem, randn
from kernels.problems.gemm import MATMUL_OPS


def make_inputs(s, gen, device, dtype):
    scale = s["K"] ** -0.5  # unit-scale pre-activations: GELU's curve matters
    return (randn(gen, s["M"], s["K"], device=device, dtype=dtype),
            randn(gen, s["N"], s["K"], device=device, dtype=dtype, scale=scale),
            randn(gen, s["N"], device=device, dtype=dtype))


def reference(a, w, bias):
    return F.gelu(a.double() @ w.double().T + bias.double()).to(a.dtype)


def baseline(a, w, bias):
    return F.gelu(F.linear(a, w, bias))


PROBLEM = Problem(
    name="gemm_bias_gelu", title="GEMM + bias + GELU (bf16)", make_inputs=make_inputs, reference=reference,
    baseline=baseline, flops=lambda s: 2.0 * s["M"] * s["N"] * s["K"] + 10.0 * s["M"] * s["N"],
    cpu_shapes=({"M": 33, "N": 45, "K": 70}, {"M": 7, "N": 17, "K": 16}),
    gpu_shapes=({"M": 8192, "N": 4096, "K": 4096}, {"M": 777, "N": 1000, "K": 512}, {"M": 5, "N": 48, "K": 64}),
    gpu_timed=({"M": 8192, "N": 4096, "K": 4096},),
    library_ops=MATMUL_OPS + ("torch.nn.functional.gelu", "torch.addmm"),
)
