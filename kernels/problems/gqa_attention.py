"""Causal grouped-query attention forward: q (B, Hq, T, D), k and v (B, Hkv, T, D)."""

import torch
import torch.nn.functional as F

from kernels.problem import Problem, Tol, randn
from kernels.problems.gemm import MATMUL_OPS


def make_inputs(s, gen, device, dtype):
    q = randn(gen, s["B"], s["Hq"], s["T"], s["D"], device=device, dtype=dtype)
    k = randn(gen, s["B"], s["Hkv"], s["T"], s["D"], device=device, dtype=dtype)
    v = randn(gen, s["B"], s["Hkv"], s["T"], s["D"], device=device, dtype=dtype)
    return q, k, v


def reference(q, k, v):
    group = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(group, 1), v.float().repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(q.float(), k, v, is_causal=True).to(q.dtype)


def baseline(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def flops(s):
    # two matmuls of 2*T*T*D each per head, half of them under the causal mask
    return 2.0 * s["B"] * s["Hq"] * s["T"] * s["T"] * s["D"]


PROBLEM = Problem(
    name="gqa_attention", title="Causal GQA attention forward (bf16)", make_inputs=make_inputs,
    reference=reference, baseline=baseline, flops=flops,
    cpu_shapes=({"B": 1, "Hq": 4, "Hkv": 2, "T": 37, "D": 16}, {"B": 2, "Hq": 2, "Hkv": 1, "T": 9, "D": 32}),
    gpu_shapes=({"B": 4, "Hq": 32, "Hkv": 8, "T": 4096, "D": 128}, {"B": 1, "Hq": 8, "Hkv": 2, "T": 1000, "D": 64},
                {"B": 1, "Hq": 4, "Hkv": 1, "T": 77, "D": 128}),
    gpu_timed=({"B": 4, "Hq": 32, "Hkv": 8, "T": 4096, "D": 128},),
    tol={torch.float32: Tol(1e-4, 1e-4), torch.bfloat16: Tol(2e-2, 2e-2)},
    library_ops=("torch.nn.functional.scaled_dot_product_attention", "torch._scaled_dot_product_flash_attention",
                 "torch._scaled_dot_product_efficient_attention", "torch._scaled_dot_product_cudnn_attention",
                 "torch.nn.functional.multi_head_attention_forward") + MATMUL_OPS,
)
