"""Mixture-of-experts combine, a weighted index_add: out[t] = sum_k w[t, k] * y[src[t, k]].

y (T*K, H) holds the experts' outputs in expert-sorted order; src (T, K) says which row of
y holds token t's k-th choice (a permutation of all rows); w (T, K) are the gate weights
(fp32). The reference is written as PyTorch's index_add over rows, as MoE code does."""

import torch

from kernels.problem import Problem, randn


def make_inputs(s, gen, device, dtype):
    t, k, h = s["T"], s["K"], s["H"]
    y = randn(gen, t * k, h, device=device, dtype=dtype)
    src = torch.randperm(t * k, generator=gen, device=device).view(t, k)
    w = torch.softmax(torch.randn(t, k, generator=gen, device=device), dim=-1)
    return y, src, w


def _rows(src, w):
    """For each row of y: the token it belongs to and its weight."""
    t, k = src.shape
    token = torch.empty(t * k, dtype=torch.long, device=src.device)
    token[src.flatten()] = torch.arange(t, device=src.device).repeat_interleave(k)
    weight = torch.empty(t * k, dtype=w.dtype, device=w.device)
    weight[src.flatten()] = w.flatten()
    return token, weight


def reference(y, src, w):
    token, weight = _rows(src, w)
    out = torch.zeros(src.shape[0], y.shape[1], dtype=torch.float64, device=y.device)
    return out.index_add_(0, token, y.double() * weight.double()[:, None]).to(y.dtype)


def baseline(y, src, w):
    token, weight = _rows(src, w)
    out = torch.zeros(src.shape[0], y.shape[1], dtype=y.dtype, device=y.device)
    return out.index_add_(0, token, y * weight[:, None].to(y.dtype))


PROBLEM = Problem(
    name="moe_combine", title="MoE combine: weighted index_add (bf16)", make_inputs=make_inputs,
    reference=reference, baseline=baseline, flops=lambda s: 2.0 * s["T"] * s["K"] * s["H"],
    cpu_shapes=({"T": 11, "K": 2, "H": 40}, {"T": 5, "K": 3, "H": 16}),
    gpu_shapes=({"T": 8192, "K": 4, "H": 4096}, {"T": 1000, "K": 2, "H": 1000}, {"T": 5, "K": 3, "H": 64}),
    gpu_timed=({"T": 8192, "K": 4, "H": 4096},),
    library_ops=("torch.Tensor.index_add_", "torch.Tensor.index_add", "torch.index_add", "torch.Tensor.scatter_add_",
                 "torch.Tensor.scatter_add", "torch.scatter_add", "torch.Tensor.index_put_", "torch.index_put",
                 "torch.Tensor.index_reduce_", "torch.Tensor.scatter_reduce_", "torch.bmm", "torch.einsum",
                 "torch.matmul", "torch.Tensor.__matmul__"),
)
