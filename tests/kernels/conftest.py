"""Shared helpers for the kernel-suite tests.

`load_solution(path)` imports a Triton solution file afresh with TRITON_INTERPRET=1 set
at decoration time, so the interpreter runs it on the CPU in this process. The evaluator
tests start real worker processes (tiny shapes, few timed calls, to stay quick).
`GPU` is true when CUDA is present: the GPU-mode tests run only then.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

from kernels.evaluate import Config

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "kernels" / "solutions"
HACKS = Path(__file__).resolve().parent / "hacks"
GPU = torch.cuda.is_available()
_count = itertools.count()

# quick but complete: every check runs; fewer timed calls than the benchmark's 10 + 50
CPU_QUICK = Config(mode="cpu", rounds=5, warmup=1, iters=4, interleave=2)
GPU_QUICK = Config(mode="gpu", rounds=5, warmup=10, iters=50, interleave=5, compile_baseline=False)


@pytest.fixture
def load_solution(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def load(path: Path):
        spec = importlib.util.spec_from_file_location(f"_kernel_solution_{next(_count)}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
