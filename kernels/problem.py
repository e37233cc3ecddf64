"""What a kernel problem is: a PyTorch reference, inputs, shapes, tolerances, FLOP/byte counts.

A problem module in kernels/problems/ defines one `PROBLEM = Problem(...)`. Shapes are
dicts of named sizes. Three sets: `cpu` (tiny, for TRITON_INTERPRET=1; fp32, since the
interpreter has no bf16 arithmetic), `gpu` (realistic H100 sizes plus odd and tail sizes,
checked for correctness) and `gpu_timed` (the ones timed for the score). Inputs are drawn
from a seeded generator on the target device, so the trusted evaluator and the worker
that runs the candidate make bit-identical inputs from one seed.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Shape = dict[str, int]
Inputs = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Tol:
    """|out - ref| <= atol + rtol * |ref| on at least `match` of the elements, and never
    more than `cap` times that bound on any element (one wild value fails)."""

    atol: float
    rtol: float
    match: float = 0.99
    cap: float = 20.0


EXACT = Tol(0.0, 0.0, match=1.0, cap=1.0)  # integer outputs


@dataclass(frozen=True)
class Problem:
    name: str
    title: str
    # (shape, generator, device, dtype) -> inputs; dtype is the working float dtype
    make_inputs: Callable[[Shape, torch.Generator, str, torch.dtype], Inputs]
    reference: Callable[..., Any]  # the truth: fp32 math, output in the working dtype
    baseline: Callable[..., Any]  # what people write in PyTorch; timed eager and compiled
    flops: Callable[[Shape], float]
    cpu_shapes: tuple[Shape, ...]
    gpu_shapes: tuple[Shape, ...]
    gpu_timed: tuple[Shape, ...]
    gpu_dtype: torch.dtype = torch.bfloat16
    # tolerances per working dtype; integer outputs are always compared exactly
    tol: dict[torch.dtype, Tol] = field(default_factory=lambda: {
        torch.float32: Tol(1e-4, 1e-4), torch.bfloat16: Tol(1e-2, 1e-2)})
    # the library ops that do the work: calling one of them is not a kernel
    library_ops: tuple[str, ...] = ()
    # bytes moved at the speed of light; default: every input read once, every output written once
    min_bytes: Callable[[Shape, Inputs, Any], float] | None = None

    def shapes(self, mode: str) -> tuple[Shape, ...]:
        return self.cpu_shapes if mode == "cpu" else self.gpu_shapes

    def timed_shapes(self, mode: str) -> tuple[Shape, ...]:
        return self.cpu_shapes[:1] if mode == "cpu" else self.gpu_timed

    def dtype(self, mode: str) -> torch.dtype:
        return torch.float32 if mode == "cpu" else self.gpu_dtype

    def tolerance(self, out_dtype: torch.dtype, mode: str) -> Tol:
        if not out_dtype.is_floating_point:
            return EXACT
        return self.tol.get(out_dtype) or self.tol[self.dtype(mode)]

    def bytes(self, shape: Shape, inputs: Inputs, outputs: Any) -> float:
        if self.min_bytes is not None:
            return float(self.min_bytes(shape, inputs, outputs))
        return float(sum(t.numel() * t.element_size() for t in (*inputs, *as_tuple(outputs))))


def as_tuple(out: Any) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def generator(seed: int, device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def randn(gen: torch.Generator, *size: int, device: str, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    x = torch.randn(*size, generator=gen, device=device, dtype=torch.float32)
    return (x * scale).to(dtype) if scale != 1.0 else x.to(dtype)


def norm_weight(gen: torch.Generator, n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    # random, not ones: a kernel that ignores the weight must fail (FIELD-NOTES)
    return (1.0 + 0.5 * torch.randn(n, generator=gen, device=device)).to(dtype)


def label(shape: Shape) -> str:
    return "x".join(f"{k}{v}" for k, v in shape.items())


_REGISTRY: dict[str, Problem] = {}
_LOCK = threading.Lock()  # several evaluations may run in threads (benchmarks/kernels_gpu.py)


def problems() -> dict[str, Problem]:
    """Every problem of the suite, by name (kernels/problems/*.py)."""
    with _LOCK:
        if not _REGISTRY:
            from kernels import problems as pkg

            found = {}
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
                prob = importlib.import_module(f"kernels.problems.{info.name}").PROBLEM
                found[prob.name] = prob
            _REGISTRY.update(found)
        return dict(_REGISTRY)


def get(name: str) -> Problem:
    found = problems()
    if name not in found:
        raise KeyError(f"no kernel problem {name!r}; known: {', '.join(sorted(found))}")
    return found[name]


def softmax_flops(rows: int, cols: int) -> float:
    return 5.0 * rows * cols  # max, sub, exp, sum, div


SQRT1_2 = 1 / math.sqrt(2)
