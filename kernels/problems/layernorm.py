"""LayerNorm over the last dim with weight and bias."""

import torch.nn.functional as F

from kernels.problem import Problem, norm_weight, randn

EPS = 1e-5


def make_inputs(s, gen, device, dtype):
    x = randn(gen, s["M"], s["N"], device=device, dtype=dtype, scale=2.0)
    x = (x.float() + 0.5).to(dtype)  # a non-zero mean: a kernel that skips centring fails
    return x, norm_weight(gen, s["N"], device, dtype), randn(gen, s["N"], device=device, dtype=dtype)


def reference(x, w, b):
    return F.layer_norm(x.float(), (x.shape[-1],), w.float(), b.float(), EPS).to(x.dtype)


def baseline(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, EPS)


PROBLEM = Problem(
    name="layernorm", title="LayerNorm (bf16)", make_inputs=make_inputs, reference=reference, baseline=baseline,
    flops=lambda s: 7.0 * s["M"] * s["N"],
    cpu_shapes=({"M": 37, "N": 200}, {"M": 5, "N": 33}),
    gpu_shapes=({"M": 16384, "N": 4096}, {"M": 2049, "N": 1536}, {"M": 3, "N": 700}),
    gpu_timed=({"M": 16384, "N": 4096},),
    library_ops=("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.native_layer_norm"),
)
