"""RMSNorm over the last dim: y = x / sqrt(mean(x^2) + eps) * w."""

import torch.nn.functional as F

from kernels.problem import Problem, norm_weight, randn

EPS = 1e-6


def make_inputs(s, gen, device, dtype):
    return randn(gen, s["M"], s["N"], device=device, dtype=dtype), norm_weight(gen, s["N"], device, dtype)


def reference(x, w):
    return F.rms_norm(x.float(), (x.shape[-1],), w.float(), EPS).to(x.dtype)


def baseline(x, w):
    return F.rms_norm(x, (x.shape[-1],), w, EPS)


PROBLEM = Problem(
    name="rmsnorm", title="RMSNorm (bf16)", make_inputs=make_inputs, reference=reference, baseline=baseline,
    flops=lambda s: 4.0 * s["M"] * s["N"],
    cpu_shapes=({"M": 37, "N": 200}, {"M": 5, "N": 33}),
    gpu_shapes=({"M": 16384, "N": 4096}, {"M": 4097, "N": 5120}, {"M": 7, "N": 1000}),
    gpu_timed=({"M": 16384, "N": 4096},),
    library_ops=("torch.nn.functional.rms_norm", "torch.rms_norm"),
)
