"""Per-row cross-entropy of bf16 logits against integer targets; fp32 losses (no reduction)."""

import torch
import torch.nn.functional as F

from kernels.problem import Problem, Tol, randn


def make_inputs(s, gen, device, dtype):
    logits = randn(gen, s["M"], s["V"], device=device, dtype=dtype, scale=2.0)
    targets = torch.randint(0, s["V"], (s["M"],), generator=gen, device=device)
    return logits, targets


def reference(logits, targets):
    return F.cross_entropy(logits.float(), targets, reduction="none")


PROBLEM = Problem(
    name="cross_entropy", title="Per-row cross-entropy (bf16 logits, fp32 loss)", make_inputs=make_inputs,
    reference=reference, baseline=reference,  # upcasting is what people write
    flops=lambda s: 4.0 * s["M"] * s["V"],
    cpu_shapes=({"M": 13, "V": 300}, {"M": 3, "V": 37}),
    gpu_shapes=({"M": 4096, "V": 128256}, {"M": 257, "V": 32000}, {"M": 3, "V": 1000}),
    gpu_timed=({"M": 4096, "V": 128256},),
    tol={torch.float32: Tol(1e-4, 1e-4)},
    library_ops=("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss", "torch.nn.functional.log_softmax",
                 "torch.log_softmax", "torch.Tensor.log_softmax", "torch.logsumexp", "torch.Tensor.logsumexp",
                 "torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax"),
)
