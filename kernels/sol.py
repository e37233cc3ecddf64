"""The speed-of-light model and SOL-ExecBench's score.

T_SOL = max(FLOPs / peak FLOP rate, bytes / peak bandwidth), with both peaks measured on
the GPU itself (a large device-to-device copy, a large bf16 matmul) and cached per GPU
model. The score S = (T_b - T_SOL) / (T_b + T_k - 2 T_SOL) is 0.5 at the baseline's
time and 1 at the bound; it is clamped to [0, 1], and a T_k below T_SOL is audited.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

PEAKS_FILE = "peaks.json"


def sol_ms(flops: float, nbytes: float, peaks: dict) -> float:
    return max(flops / peaks["flops"], nbytes / peaks["bandwidth"]) * 1e3


def score(t_k: float, t_b: float, t_sol: float) -> float:
    """SOL score in [0, 1]; 0.5 when the candidate is as fast as the baseline."""
    if t_k <= 0 or t_b <= 0:
        raise ValueError(f"times must be positive, got T_k={t_k} T_b={t_b}")
    denom = t_b + t_k - 2 * t_sol
    if denom <= 0:  # both at or below the bound: the bound is wrong, not the kernel
        return 0.5 if t_k >= t_b else 1.0
    return min(1.0, max(0.0, (t_b - t_sol) / denom))


def cache_path() -> Path:
    root = os.environ.get("THREADLAB_DATA_DIR") or Path.home() / ".cache" / "threadlab"
    return Path(root).expanduser() / "kernels" / PEAKS_FILE


def measure_peaks(repeats: int = 10) -> dict:
    """Measured peak bandwidth (bytes/s) and bf16 matmul rate (FLOP/s) of the current GPU."""
    dev = torch.device("cuda")
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return min(times)

    bandwidth = 2 * src.numel() / best(lambda: dst.copy_(src))
    flops = 2 * n**3 / best(lambda: a @ b)
    return {"gpu": torch.cuda.get_device_name(), "bandwidth": bandwidth, "flops": flops}


def peaks(write_cache: bool = True) -> dict:
    """This GPU's peaks: from the cache, else measured now (and cached when allowed)."""
    name = torch.cuda.get_device_name()
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(name), dict):
        return {**cached[name], "source": str(path)}
    found = measure_peaks()
    if write_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**cached, name: found}, indent=1))
        except OSError:
            pass  # a read-only data dir (the sandbox): measured again next time
    return {**found, "source": "measured"}
