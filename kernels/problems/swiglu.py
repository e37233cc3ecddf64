"""SwiGLU activation: silu(gate) * up."""

import torch.nn.functional as F

from kernels.problem import Problem, randn


def make_inputs(s, gen, device, dtype):
    return (randn(gen, s["M"], s["H"], device=device, dtype=dtype, scale=2.0),
            randn(gen, s["M"], s["H"], device=device, dtype=dtype))


def reference(gate, up):
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def baseline(gate, up):
    return F.silu(gate) * up


PROBLEM = Problem(
    name="swiglu", title="SwiGLU (bf16)", make_inputs=make_inputs, reference=reference, baseline=baseline,
    flops=lambda s: 5.0 * s["M"] * s["H"],
    cpu_shapes=({"M": 37, "H": 200}, {"M": 3, "H": 33}),
    gpu_shapes=({"M": 8192, "H": 14336}, {"M": 1001, "H": 3000}, {"M": 3, "H": 100}),
    gpu_timed=({"M": 8192, "H": 14336},),
    library_ops=("torch.nn.functional.silu", "torch.nn.functional.swiglu", "torch.sigmoid", "torch.Tensor.sigmoid",
                 "torch.nn.functional.sigmoid"),
)
