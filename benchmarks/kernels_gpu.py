"""The GPU run of the kernel suite: the full bench, then the whole hack corpus.

    OUT=/some/dir python3 benchmarks/kernels_gpu.py      (or benchmarks/kernels_gpu.sh)

Needs the repo, Python >= 3.11, torch and triton with CUDA; no network, and threadlab
need not be installed (the repo root goes on sys.path). Writes into $OUT (default
./kernels-gpu-out): bench.json (per problem: T_k, T_b, T_SOL, S, failed checks; mean S;
the machine and the measured peaks), hacks.json (per hack: the checks that failed, and
whether the expected one did), and summary.json. Each file is rewritten after every
problem or hack, so a run cut short still leaves what it measured. Prints a table.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kernels import bench  # noqa: E402
from kernels.evaluate import Config, evaluate, protect_process  # noqa: E402
from tests.kernels.corpus import CORPUS, STATIC  # noqa: E402

HACKS = ROOT / "tests" / "kernels" / "hacks"
# the corpus is checked with the full protocol; eager baseline only (torch.compile is the bench's)
HACK_CFG = Config(mode="gpu", rounds=5, warmup=10, iters=50, interleave=5, compile_baseline=False)


def write(out: Path, name: str, data) -> None:
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out / name)


def run_bench(out: Path) -> dict:
    print("== bench: shipped solutions, T_k / T_b / T_SOL in microseconds ==", flush=True)
    print("  ".join(bench.HEADER), flush=True)
    partial: dict = {"problems": {}}

    def show(name, report, entry):
        for row in bench.line(name, report, entry):
            print("  ".join(row), flush=True)
        if entry["error"]:
            print("   " + entry["error"].splitlines()[0], flush=True)
        partial["problems"][name] = entry
        write(out, "bench.json", partial)

    summary = bench.run(mode="gpu", on_report=show)
    write(out, "bench.json", summary)
    print(f"mean S over {summary['correct']}/{summary['total']} correct problems: {summary['mean_S']}", flush=True)
    return summary


def check_hack(hack: str) -> dict:
    problem, caught_by, gpu_only = CORPUS[hack]
    t0 = time.perf_counter()
    report = evaluate(problem, str(HACKS / f"{hack}.py"), HACK_CFG)
    failed = report.failed()
    caught = bool(caught_by & set(failed)) and (hack not in STATIC or STATIC[hack] in failed)
    return {"hack": hack, "problem": problem, "expected": sorted(caught_by), "caught": caught,
            "failed": failed, "error": report.error.splitlines()[0] if report.error else "",
            "metric": report.metric, "shapes": report.extra.get("shapes", []),
            "seconds": round(time.perf_counter() - t0, 1)}


def run_hacks(out: Path) -> list[dict]:
    print("== hack corpus (each must be caught by the named check) ==", flush=True)
    results: list[dict] = []

    def record(r: dict) -> None:
        results.append(r)
        write(out, "hacks.json", results)
        mark = "caught" if r["caught"] else "ESCAPED"
        print(f"{r['hack']:20s} {mark:8s} by {', '.join(sorted(r['failed'])) or '-'} ({r['seconds']}s)"
              + (f"  [{r['error'][:100]}]" if r["error"] else ""), flush=True)

    # hacks whose catch does not depend on timing run four at a time; side_stream alone after
    parallel = [h for h in CORPUS if h != "side_stream"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for r in pool.map(check_hack, parallel):
            record(r)
    record(check_hack("side_stream"))
    return results


def main() -> None:
    out = Path(os.environ.get("OUT") or "kernels-gpu-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is for the GPU machine (on the CPU: threadlab bench kernels)")
    protect_process()
    t0 = time.perf_counter()
    only = sys.argv[1:]  # "bench" or "hacks" to run one part
    summary = {"started": time.time()}
    if not only or "bench" in only:
        b = run_bench(out)
        summary.update(mean_S=b.get("mean_S"), correct=b["correct"], total=b["total"], machine=b["machine"],
                       peaks=b.get("peaks"), bench_s=round(time.perf_counter() - t0, 1))
        write(out, "summary.json", summary)
    if not only or "hacks" in only:
        t1 = time.perf_counter()
        hacks = run_hacks(out)
        summary.update(hacks_caught=sum(r["caught"] for r in hacks), hacks_total=len(hacks),
                       hacks_s=round(time.perf_counter() - t1, 1))
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    write(out, "summary.json", summary)
    print(json.dumps(summary), flush=True)
    ok = summary.get("correct", 0) == summary.get("total", 0) and summary.get("hacks_caught") == summary.get(
        "hacks_total")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
