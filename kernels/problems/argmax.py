"""Row argmax of fp32 logits (greedy sampling over a vocabulary); int64 indices."""

import torch

from kernels.problem import Problem, randn


def make_inputs(s, gen, device, dtype):
    return (randn(gen, s["M"], s["N"], device=device, dtype=dtype),)


def reference(x):
    return torch.argmax(x, dim=-1)


PROBLEM = Problem(
    name="argmax", title="Row argmax (fp32 -> int64)", make_inputs=make_inputs, reference=reference,
    baseline=reference, flops=lambda s: 1.0 * s["M"] * s["N"],
    cpu_shapes=({"M": 13, "N": 300}, {"M": 3, "N": 37}),
    gpu_shapes=({"M": 1024, "N": 128256}, {"M": 64, "N": 50257}, {"M": 3, "N": 1000}),
    gpu_timed=({"M": 1024, "N": 128256},),
    gpu_dtype=torch.float32,
    library_ops=("torch.argmax", "torch.Tensor.argmax", "torch.max", "torch.Tensor.max", "torch.topk",
                 "torch.Tensor.topk", "torch.sort", "torch.Tensor.sort", "torch.argsort", "torch.Tensor.argsort",
                 "torch.amax", "torch.Tensor.amax", "torch.kthvalue"),
)
