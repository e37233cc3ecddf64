"""Row softmax in fp32 (attention probabilities, sampling)."""

import torch

from kernels.problem import Problem, Tol, randn, softmax_flops


def make_inputs(s, gen, device, dtype):
    return (randn(gen, s["M"], s["N"], device=device, dtype=dtype, scale=3.0),)


def reference(x):
    return torch.softmax(x.double(), dim=-1).to(x.dtype)


def baseline(x):
    return torch.softmax(x, dim=-1)


PROBLEM = Problem(
    name="softmax", title="Row softmax (fp32)", make_inputs=make_inputs, reference=reference, baseline=baseline,
    flops=lambda s: softmax_flops(s["M"], s["N"]),
    cpu_shapes=({"M": 37, "N": 200}, {"M": 5, "N": 33}),
    gpu_shapes=({"M": 8192, "N": 8192}, {"M": 4097, "N": 1000}, {"M": 5, "N": 130}),
    gpu_timed=({"M": 8192, "N": 8192},),
    gpu_dtype=torch.float32,
    # fp32 all the way: a kernel that computes in half precision must fail
    tol={torch.float32: Tol(1e-6, 1e-5)},
    library_ops=("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax",
                 "torch.log_softmax", "torch.nn.functional.log_softmax", "torch.Tensor.log_softmax",
                 "torch._softmax"),
)
