"""Fused residual add + RMSNorm: h = x + r; y = rmsnorm(h) * w; returns (h, y)."""

import torch.nn.functional as F

from kernels.problem import Problem, norm_weight, randn

EPS = 1e-6


def make_inputs(s, gen, device, dtype):
    x = randn(gen, s["M"], s["N"], device=device, dtype=dtype)
    r = randn(gen, s["M"], s["N"], device=device, dtype=dtype)
    return x, r, norm_weight(gen, s["N"], device, dtype)


def reference(x, r, w):
    h = x.float() + r.float()
    # the normalised value is that of h as stored (rounded to the working dtype)
    y = F.rms_norm(h.to(x.dtype).float(), (x.shape[-1],), w.float(), EPS)
    return h.to(x.dtype), y.to(x.dtype)


def baseline(x, r, w):
    h = x + r
    return h, F.rms_norm(h, (x.shape[-1],), w, EPS)


PROBLEM = Problem(
    name="add_rmsnorm", title="Residual add + RMSNorm (bf16)", make_inputs=make_inputs, reference=reference,
    baseline=baseline, flops=lambda s: 5.0 * s["M"] * s["N"],
    cpu_shapes=({"M": 37, "N": 200}, {"M": 5, "N": 33}),
    gpu_shapes=({"M": 16384, "N": 4096}, {"M": 4097, "N": 5120}, {"M": 7, "N": 1000}),
    gpu_timed=({"M": 16384, "N": 4096},),
    library_ops=("torch.nn.functional.rms_norm", "torch.rms_norm"),
)
