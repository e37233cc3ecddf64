"""`threadlab bench kernels`: the shipped solutions of every problem, checked and scored.

On a GPU: a table per problem (T_k, T_b, T_SOL, S) and the mean S. On the CPU: the
TRITON_INTERPRET=1 correctness pass only, and a plain statement that timings need a GPU.
Also `python -m kernels.bench [--json PATH]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kernels import sol
from kernels.evaluate import Config, GpuGate, Report, evaluate, protect_process
from kernels.problem import problems

SOLUTIONS = Path(__file__).resolve().parent / "solutions"


def machine(mode: str) -> dict[str, Any]:
    import triton

    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "mode": mode}
    if mode == "gpu":
        info["gpu"] = torch.cuda.get_device_name()
    return info


GPU_PARALLEL = 4  # evaluations side by side on a GPU: start-up, compiles and checks overlap; timing never


def run(names: list[str] | None = None, mode: str | None = None, compile_baseline: bool = True,
        on_report=None, parallel: int | None = None) -> dict[str, Any]:
    """Evaluate every (or the named) shipped solution; returns the JSON-able summary.

    On a GPU up to `parallel` problems are evaluated at once, sharing a GpuGate: their
    worker start-up, torch.compile and correctness checks overlap, while each timing loop
    has the GPU to itself (kernels/evaluate.py). `on_report` is called as each finishes,
    one call at a time; the summary lists the problems in the order asked."""
    mode = mode or ("gpu" if torch.cuda.is_available() else "cpu")
    protect_process()
    parallel = max(1, parallel or (GPU_PARALLEL if mode == "gpu" else 1))
    cfg = Config(mode=mode, compile_baseline=compile_baseline, time_it=mode == "gpu",
                 gate=GpuGate() if parallel > 1 else None)
    summary: dict[str, Any] = {"machine": machine(mode), "problems": {}, "parallel": parallel}
    if mode == "gpu":
        cfg = replace(cfg, peaks=sol.peaks(write_cache=True))
        summary["peaks"] = cfg.peaks
    chosen = names or list(problems())
    done: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(name: str) -> None:
        t0 = time.perf_counter()
        report = evaluate(name, str(SOLUTIONS / f"{name}.py"), cfg)
        entry = {"metric": report.metric, "error": report.error, "failed": report.failed(),
                 "shapes": report.extra.get("shapes", []), "seconds": round(time.perf_counter() - t0, 1),
                 "triton_excused": report.extra.get("triton_excused", [])}
        with lock:
            done[name] = entry
            if on_report:
                on_report(name, report, entry)

    if parallel == 1:
        for name in chosen:
            one(name)
    else:
        with concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="bench") as pool:
            for future in [pool.submit(one, name) for name in chosen]:
                future.result()
    summary["problems"] = {name: done[name] for name in chosen}
    scores = [e["metric"] for e in summary["problems"].values() if e["metric"] is not None and not e["failed"]]
    summary["correct"] = sum(1 for e in summary["problems"].values() if not e["error"] and not e["failed"])
    summary["total"] = len(chosen)
    if mode == "gpu":
        summary["mean_S"] = sum(scores) / len(scores) if scores else None
    else:
        summary["note"] = ("CPU: TRITON_INTERPRET=1 correctness pass at the tiny sizes only; "
                           "T_k, T_b, T_SOL and S need a GPU (run this on one)")
    return summary


def line(name: str, report: Report, entry: dict[str, Any]) -> list[str]:
    """One table row per timed shape (or one for a correctness-only run)."""
    status = "ok" if not entry["error"] and not entry["failed"] else (
        "ERROR" if entry["error"] else "FLAGGED " + ",".join(entry["failed"]))
    rows = []
    for s in entry["shapes"] or [None]:
        if s is None:
            rows.append([name, "-", "-", "-", "-", "-", status, f"{entry['seconds']:.0f}s"])
        else:
            rows.append([name, s["shape"], f"{s['T_k_ms'] * 1e3:.1f}", f"{s['T_b_ms'] * 1e3:.1f}",
                         f"{s['T_SOL_ms'] * 1e3:.1f}", f"{s['S']:.3f}", status, f"{entry['seconds']:.0f}s"])
    return rows


HEADER = ["problem", "shape", "T_k µs", "T_b µs", "T_SOL µs", "S", "status", "took"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="*")
    ap.add_argument("--mode", choices=("cpu", "gpu"))
    ap.add_argument("--no-compile", action="store_true", help="T_b from eager PyTorch only")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--parallel", type=int, help=f"problems at once (GPU default {GPU_PARALLEL}; timing stays serial)")
    args = ap.parse_args()

    def show(name, report, entry):
        for row in line(name, report, entry):
            print("  ".join(row), flush=True)
        if entry["error"]:
            print("   " + entry["error"].splitlines()[0], flush=True)

    print("  ".join(HEADER))
    summary = run(args.problems, args.mode, compile_baseline=not args.no_compile, on_report=show,
                  parallel=args.parallel)
    print(json.dumps({k: v for k, v in summary.items() if k != "problems"}))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    sys.exit(0 if summary["correct"] == summary["total"] else 1)


if __name__ == "__main__":
    main()
