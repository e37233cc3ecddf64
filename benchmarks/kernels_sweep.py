"""One GPU command: the shipped solutions and a few knob or variant alternatives each, scored.

    OUT=/some/dir python3 benchmarks/kernels_sweep.py [problem ...]   (or benchmarks/kernels_sweep.sh)

Every candidate goes through the evaluator's own path (`kernels.evaluate.evaluate` with the
bench's Config, as `threadlab bench kernels` and benchmarks/kernels_gpu.py score the shipped
solutions), so each S is the evaluator's: all checks, T_b measured again in the same session.
A variant is the shipped solution with some module constants replaced (`{"LOG2_WARPS": 4}`),
or another solution file (`{"file": "kernels/variants/gemm_tma.py", ...}`, knobs applied to it
too); the candidate files are written to $OUT/candidates/. Evaluations run side by side
through benchmarks/kernels_gpu.py's pool and one GpuGate: start-up, compiles and checks overlap,
timing never does. The order is round-robin (every problem's shipped solution first, then every
problem's first alternative, ...), so a run cut short by SWEEP_DEADLINE_S (default 300 s: no new
evaluation starts after it) still compares like with like.

Writes $OUT/sweep.json after every result: per problem, per variant: knobs, T_k, T_b, T_SOL, S,
correct, failed checks, error; and the best correct one. Prints a line per result.
Apply the winners: python3 benchmarks/kernels_sweep_apply.py $OUT/sweep.json.

Env: SWEEP_DEADLINE_S (300), SWEEP_PARALLEL (6), SWEEP_MODE (gpu when CUDA is there, else cpu:
the TRITON_INTERPRET=1 plumbing check at the tiny shapes), SWEEP_MAX_VARIANTS (6 a problem).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kernels_gpu import run_pool, say, write  # noqa: E402
from kernels import bench, sol  # noqa: E402
from kernels.evaluate import Config, GpuGate, evaluate, protect_process  # noqa: E402
from kernels.problem import problems  # noqa: E402

SOLUTIONS = ROOT / "kernels" / "solutions"
# the weakest problems first; per problem at most SWEEP_MAX_VARIANTS alternatives to the shipped one
VARIANTS: dict[str, list[dict]] = {
    "rmsnorm": [{"LOG2_ROWS": 0}, {"file": "kernels/variants/rmsnorm_persistent.py"}, {"LOG2_ROWS": 2},
                {"LOG2_WARPS": 4}, {"file": "kernels/variants/rmsnorm_persistent.py", "PROGRAMS_PER_SM": 2},
                {"LOG2_ROWS": 2, "LOG2_WARPS": 4}],
    "add_rmsnorm": [{"LOG2_ROWS": 0}, {"file": "kernels/variants/add_rmsnorm_persistent.py"}, {"LOG2_ROWS": 2},
                    {"LOG2_WARPS": 4}, {"file": "kernels/variants/add_rmsnorm_persistent.py", "PROGRAMS_PER_SM": 2},
                    {"LOG2_ROWS": 2, "LOG2_WARPS": 4}],
    "layernorm": [{"LOG2_ROWS": 0}, {"file": "kernels/variants/layernorm_persistent.py"}, {"LOG2_ROWS": 2},
                  {"LOG2_WARPS": 4}, {"file": "kernels/variants/layernorm_persistent.py", "PROGRAMS_PER_SM": 2},
                  {"LOG2_ROWS": 2, "LOG2_WARPS": 4}],
    # LOG2_SEGMENT 17: one program a row (128256 columns), one launch, no combine: 1024 programs of 4 warps
    # fit the 132 SMs x 8 resident at once, so the single wave has no ragged tail
    "argmax": [{"LOG2_SEGMENT": 17}, {"LOG2_SEGMENT": 14}, {"LOG2_SEGMENT": 17, "LOG2_WARPS": 3},
               {"LOG2_SEGMENT": 16}, {"LOG2_BLOCK": 11}, {"LOG2_WARPS": 3}],
    "softmax": [{"LOG2_WARPS": 3}, {"file": "kernels/variants/softmax_persistent.py"}, {"LOG2_WARPS": 5},
                {"file": "kernels/variants/softmax_persistent.py", "LOG2_WARPS": 3, "PROGRAMS_PER_SM": 4},
                {"LOG2_ROWS": 1, "LOG2_WARPS": 5}],
    "gemm": [{"NUM_STAGES": 4}, {"file": "kernels/variants/gemm_tma.py"},
             {"file": "kernels/variants/gemm_tma.py", "NUM_STAGES": 4},
             {"LOG2_BLOCK_N": 7, "NUM_STAGES": 4, "LOG2_WARPS": 2}, {"GROUP_M": 16},
             {"LOG2_BLOCK_M": 8, "LOG2_BLOCK_N": 7}],
    "gemm_bias_gelu": [{"NUM_STAGES": 4}, {"file": "kernels/variants/gemm_bias_gelu_tma.py"},
                       {"file": "kernels/variants/gemm_bias_gelu_tma.py", "NUM_STAGES": 4},
                       {"LOG2_BLOCK_N": 7, "NUM_STAGES": 4, "LOG2_WARPS": 2}, {"GROUP_M": 16}],
    "gqa_attention": [{"LOG2_BLOCK_N": 7}, {"file": "kernels/variants/gqa_attention_tma.py"}, {"NUM_STAGES": 2},
                      {"LOG2_BLOCK_N": 7, "NUM_STAGES": 2},
                      {"file": "kernels/variants/gqa_attention_tma.py", "LOG2_BLOCK_N": 7}, {"NUM_STAGES": 4}],
    "rotary": [{"LOG2_WARPS": 3}],
    "swiglu": [],
    "cross_entropy": [],
    "moe_combine": [],
}
_KNOB = r"^({name}) = (-?\d+)\b"


def with_knobs(source: str, knobs: dict[str, int]) -> str:
    """The source with each named module constant (`NAME = <int>` at the start of a line)
    set to the given value; a knob the source does not define is an error, not a no-op."""
    for name, value in knobs.items():
        source, n = re.subn(_KNOB.format(name=re.escape(name)), rf"\g<1> = {int(value)}", source, count=1,
                            flags=re.MULTILINE)
        if n != 1:
            raise KeyError(f"no module constant {name} = <int> to set")
    return source


def knobs_of(source: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^([A-Z][A-Z0-9_]*) = (-?\d+)\b", source, flags=re.MULTILINE)}


def label(variant: dict) -> str:
    parts = [f"file:{Path(variant['file']).stem}"] if "file" in variant else []
    parts += [f"{k}={v}" for k, v in variant.items() if k != "file"]
    return ",".join(parts) or "shipped"


def candidate(name: str, variant: dict, folder: Path) -> tuple[Path, dict[str, int]]:
    """Write the variant's solution file; returns its path and every knob it now has."""
    base = ROOT / variant["file"] if "file" in variant else SOLUTIONS / f"{name}.py"
    source = with_knobs(base.read_text(), {k: v for k, v in variant.items() if k != "file"})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}__{re.sub(r'[^A-Za-z0-9_]+', '_', label(variant))}.py"
    path.write_text(source)
    return path, knobs_of(source)


def jobs(names: list[str], max_variants: int) -> list[tuple[str, dict]]:
    """Round-robin: every problem's shipped solution, then every problem's first alternative..."""
    lists = {n: [{}] + VARIANTS.get(n, [])[:max_variants] for n in names}
    depth = max(len(v) for v in lists.values())
    return [(n, lists[n][i]) for i in range(depth) for n in names if i < len(lists[n])]


def best(entries: dict[str, dict]) -> str | None:
    ok = {k: e for k, e in entries.items() if e.get("correct") and e.get("S") is not None}
    return max(ok, key=lambda k: ok[k]["S"]) if ok else None


def sweep(out: Path, names: list[str], mode: str, parallel: int, deadline: float, max_variants: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    peaks = sol.peaks(write_cache=True) if mode == "gpu" else None
    if mode == "gpu":  # exactly the bench's configuration (benchmarks/kernels_gpu.py, kernels/bench.py)
        cfg = Config(mode="gpu", time_it=True, peaks=peaks, gate=GpuGate())
    else:  # the interpreter: plumbing only, few timed calls
        cfg = Config(mode="cpu", time_it=True, warmup=1, iters=4, interleave=2, gate=GpuGate())
    todo = jobs(names, max_variants)
    result: dict = {"machine": bench.machine(mode), "peaks": peaks, "parallel": parallel, "started": time.time(),
                    "problems": {n: {"variants": {}, "best": None} for n in names}, "skipped": []}
    lock = threading.Lock()
    say(f"== sweep: {len(todo)} evaluations of {len(names)} problems, {parallel} at a time ({mode}) ==")

    def one(job: tuple[str, dict], skipped: bool = False) -> None:
        name, variant = job
        tag = label(variant)
        if skipped:
            with lock:
                result["skipped"].append(f"{name}:{tag}")
            say(f"{name:15s} {tag:40s} SKIPPED (past the deadline)")
            return
        t0 = time.perf_counter()
        entry: dict = {"variant": variant}
        try:
            path, knobs = candidate(name, variant, out / "candidates")
            entry["knobs"] = knobs
            report = evaluate(name, str(path), cfg)
            shapes = report.extra.get("shapes", [])
            row = shapes[0] if shapes else {}
            entry.update(T_k_ms=row.get("T_k_ms"), T_b_ms=row.get("T_b_ms"), T_SOL_ms=row.get("T_SOL_ms"),
                         S=report.metric, shapes=shapes, failed=report.failed(), error=report.error,
                         metric_kind=report.extra.get("metric_kind"))
            entry["correct"] = not report.error and not report.failed()
        except Exception as exc:  # a variant that cannot even be written (a knob the file lacks)
            entry.update(S=None, correct=False, failed={}, error=f"{type(exc).__name__}: {exc}")
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        with lock:
            slot = result["problems"][name]
            slot["variants"][tag] = entry
            slot["best"] = best(slot["variants"])
            write(out, "sweep.json", result)

        def ms(key):
            return f"{entry[key] * 1e3:8.1f}" if entry.get(key) is not None else "       -"

        status = "ok" if entry["correct"] else ("ERROR " + entry["error"].strip().splitlines()[-1][:120]
                                                 if entry["error"] else "FLAGGED " + ",".join(entry["failed"]))
        s = f"{entry['S']:.3f}" if entry.get("S") is not None else "  -  "
        say(f"{name:15s} {tag:40s} T_k {ms('T_k_ms')}  T_b {ms('T_b_ms')}  T_SOL {ms('T_SOL_ms')} µs  "
            f"S {s}  {status} ({entry['seconds']}s)")

    run_pool(todo, one, parallel, deadline)
    result["total_s"] = round(time.time() - result["started"], 1)
    shipped = [p["variants"].get("shipped", {}).get("S") for p in result["problems"].values()]
    top = [p["variants"][p["best"]]["S"] if p["best"] else None for p in result["problems"].values()]
    result["mean_S_shipped"] = sum(shipped) / len(shipped) if shipped and None not in shipped else None
    result["mean_S_best"] = sum(top) / len(top) if top and None not in top else None
    write(out, "sweep.json", result)
    say(f"mean S: shipped {result['mean_S_shipped']}, best variants {result['mean_S_best']}"
        + (f"; skipped {len(result['skipped'])}" if result["skipped"] else ""))
    for n, p in result["problems"].items():
        if p["best"]:
            say(f"best {n:15s} {p['best']:40s} S {p['variants'][p['best']]['S']:.3f}")
    return result


def main() -> None:
    import torch

    out = Path(os.environ.get("OUT") or "kernels-sweep-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("SWEEP_MODE") or ("gpu" if torch.cuda.is_available() else "cpu")
    if mode == "gpu" and not torch.cuda.is_available():
        sys.exit("SWEEP_MODE=gpu but no CUDA device")
    protect_process()
    names = sys.argv[1:] or list(VARIANTS)
    unknown = [n for n in names if n not in problems()]
    if unknown:
        sys.exit(f"unknown problems: {', '.join(unknown)}")
    deadline = time.monotonic() + float(os.environ.get("SWEEP_DEADLINE_S", "300"))
    sweep(out, names, mode, int(os.environ.get("SWEEP_PARALLEL", "6")), deadline,
          int(os.environ.get("SWEEP_MAX_VARIANTS", "6")))


if __name__ == "__main__":
    main()
