"""GEMM C = A @ B^T (A: M x K, B: N x K), bf16 in and out, fp32 accumulation."""

import torch

from kernels.problem import Problem, randn

MATMUL_OPS = ("torch.matmul", "torch.Tensor.matmul", "torch.Tensor.__matmul__", "torch.Tensor.__rmatmul__",
              "torch.mm", "torch.Tensor.mm", "torch.bmm", "torch.Tensor.bmm", "torch.addmm", "torch.Tensor.addmm",
              "torch.baddbmm", "torch.einsum", "torch.tensordot", "torch.inner", "torch.nn.functional.linear",
              "torch.chain_matmul", "torch.linalg.multi_dot", "torch.linalg.matmul", "torch._scaled_mm")


def make_inputs(s, gen, device, dtype):
    return (randn(gen, s["M"], s["K"], device=device, dtype=dtype),
            randn(gen, s["N"], s["K"], device=device, dtype=dtype))


def reference(a, b):
    return (a.double() @ b.double().T).to(a.dtype)


def baseline(a, b):
    return a @ b.T


PROBLEM = Problem(
    name="gemm", title="GEMM A @ B^T (bf16)", make_inputs=make_inputs, reference=reference, baseline=baseline,
    flops=lambda s: 2.0 * s["M"] * s["N"] * s["K"],
    cpu_shapes=({"M": 33, "N": 45, "K": 70}, {"M": 7, "N": 17, "K": 16}),
    gpu_shapes=({"M": 4096, "N": 4096, "K": 4096}, {"M": 1000, "N": 999, "K": 4000}, {"M": 7, "N": 33, "K": 64}),
    gpu_timed=({"M": 4096, "N": 4096, "K": 4096},),
    library_ops=MATMUL_OPS,
)
