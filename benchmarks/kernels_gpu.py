"""The GPU run of the kernel suite: the full bench, then the whole hack corpus.

    OUT=/some/dir python3 benchmarks/kernels_gpu.py [bench] [hacks] [bench-launched]
                                                            (or benchmarks/kernels_gpu.sh)

Needs the repo, Python >= 3.11, torch and triton with CUDA; no network, and threadlab
need not be installed (the repo root goes on sys.path, and the evaluator hands it to its
workers). Writes into $OUT (default ./kernels-gpu-out): bench.json (per problem: T_k, T_b,
T_SOL, S, failed checks, what Triton was excused for; mean S; the machine and the measured
peaks), hacks.json (per hack: the checks that failed, and whether the expected one did),
and summary.json; `bench-launched` (not in the default run) benches again without the
timer's launch-hiding spin (kernels/timing.py), into bench-launched.json, to show what
the launch overhead did to the scores. Each file is rewritten after every problem or hack, so a run cut short
still leaves what it measured. Prints a line when each one starts and ends.

Speed: evaluations run side by side (KERNELS_PARALLEL, default 4 for the bench and 6 for
the corpus), sharing a GpuGate: worker start-up, torch.compile and the correctness checks
overlap; every timing loop has the GPU to itself, so parallelism does not touch T_k or T_b.
The corpus runs after the bench (a hack's worker may keep the GPU busy in the background),
and only the hacks whose catch is a timing check are timed. KERNELS_DEADLINE_S (default
420) stops starting new evaluations after that many seconds, so a bounded GPU session
still gets its JSON; what was skipped is listed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kernels import bench, sol  # noqa: E402
from kernels.evaluate import Config, GpuGate, evaluate, protect_process  # noqa: E402
from kernels.problem import problems  # noqa: E402
from tests.kernels.corpus import CORPUS, STATIC  # noqa: E402

HACKS = ROOT / "tests" / "kernels" / "hacks"
# the corpus is checked with the full correctness protocol; eager baseline only, and timed only
# where the catch is a timing check (torch.compile and T_b are the bench's business)
HACK_CFG = Config(mode="gpu", rounds=5, warmup=10, iters=50, interleave=5, compile_baseline=False)
TIMED_CHECKS = ("timing.", "sol.", "correct.timed_outputs")
T0 = time.monotonic()
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def write(out: Path, name: str, data) -> None:
    with _print_lock:
        tmp = out / f".{name}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(out / name)


def run_pool(jobs: list, fn, parallel: int, deadline: float) -> None:
    """fn(job) for each job, `parallel` at a time; a job whose turn comes after the deadline is
    handed to fn as skipped (fn(job, skipped=True))."""
    def guarded(job):
        if time.monotonic() > deadline:
            return fn(job, skipped=True)
        return fn(job)

    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        for future in [pool.submit(guarded, job) for job in jobs]:
            future.result()


def run_bench(out: Path, parallel: int, deadline: float, hide_launch: bool = True) -> dict:
    name = "bench.json" if hide_launch else "bench-launched.json"
    say(f"== bench: {len(problems())} shipped solutions, {parallel} at a time, timing one at a time"
        f"{'' if hide_launch else ', launch overhead timed too'} ==")
    peaks = sol.peaks(write_cache=True)
    cfg = Config(mode="gpu", time_it=True, peaks=peaks, gate=GpuGate(), hide_launch=hide_launch)
    summary: dict = {"machine": bench.machine("gpu"), "peaks": peaks, "parallel": parallel, "problems": {},
                     "skipped": [], "hide_launch": hide_launch}
    lock = threading.Lock()

    def one(name: str, skipped: bool = False) -> None:
        if skipped:
            with lock:
                summary["skipped"].append(name)
            say(f"bench {name}: SKIPPED (past the deadline)")
            return
        say(f"bench {name}: started")
        t0 = time.perf_counter()
        report = evaluate(name, str(bench.SOLUTIONS / f"{name}.py"), cfg)
        entry = {"metric": report.metric, "error": report.error, "failed": report.failed(),
                 "shapes": report.extra.get("shapes", []), "seconds": round(time.perf_counter() - t0, 1),
                 "triton_excused": report.extra.get("triton_excused", [])}
        with lock:
            summary["problems"][name] = entry
            done = [e for e in summary["problems"].values()]
            scores = [e["metric"] for e in done if e["metric"] is not None and not e["failed"] and not e["error"]]
            summary["correct"] = sum(1 for e in done if not e["error"] and not e["failed"])
            summary["mean_S"] = sum(scores) / len(scores) if scores else None
            write(out, name, summary)
        for row in bench.line(name, report, entry):
            say("  ".join(row))
        if entry["error"]:
            say("   " + entry["error"].splitlines()[0])

    say("  ".join(bench.HEADER))
    run_pool(list(problems()), one, parallel, deadline)
    summary["total"] = len(problems())
    summary["correct"] = summary.get("correct", 0)
    summary["problems"] = {n: summary["problems"][n] for n in problems() if n in summary["problems"]}
    write(out, name, summary)
    say(f"mean S over {summary['correct']}/{summary['total']} correct problems: {summary.get('mean_S')}"
        + (f"; skipped: {', '.join(summary['skipped'])}" if summary["skipped"] else ""))
    return summary


def check_hack(hack: str, gate: GpuGate) -> dict:
    problem, caught_by, gpu_only = CORPUS[hack]
    timed = any(c.startswith(TIMED_CHECKS) for c in caught_by)
    t0 = time.perf_counter()
    report = evaluate(problem, str(HACKS / f"{hack}.py"), replace(HACK_CFG, time_it=timed, gate=gate))
    failed = report.failed()
    caught = bool(caught_by & set(failed)) and (hack not in STATIC or STATIC[hack] in failed)
    return {"hack": hack, "problem": problem, "expected": sorted(caught_by), "caught": caught, "timed": timed,
            "failed": failed, "error": report.error.splitlines()[0] if report.error else "",
            "metric": report.metric, "shapes": report.extra.get("shapes", []),
            "seconds": round(time.perf_counter() - t0, 1)}


def run_hacks(out: Path, parallel: int, deadline: float) -> list[dict]:
    say(f"== hack corpus: {len(CORPUS)} hacks, {parallel} at a time; each must be caught by the named check ==")
    results: list[dict] = []
    lock = threading.Lock()
    gate = GpuGate()

    def one(hack: str, skipped: bool = False) -> None:
        if skipped:
            r = {"hack": hack, "problem": CORPUS[hack][0], "expected": sorted(CORPUS[hack][1]), "caught": False,
                 "skipped": True, "failed": {}, "error": "skipped: past the deadline", "seconds": 0.0}
        else:
            say(f"hack {hack}: started")
            r = check_hack(hack, gate)
        with lock:
            results.append(r)
            write(out, "hacks.json", results)
        mark = "SKIPPED" if r.get("skipped") else "caught" if r["caught"] else "ESCAPED"
        say(f"hack {r['hack']:20s} {mark:8s} by {', '.join(sorted(r['failed'])) or '-'} ({r['seconds']}s)"
            + (f"  [{r['error'][:100]}]" if r["error"] else ""))

    run_pool(list(CORPUS), one, parallel, deadline)
    return results


def main() -> None:
    out = Path(os.environ.get("OUT") or "kernels-gpu-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is for the GPU machine (on the CPU: threadlab bench kernels)")
    protect_process()
    deadline = T0 + float(os.environ.get("KERNELS_DEADLINE_S", "420"))
    parallel = os.environ.get("KERNELS_PARALLEL")
    only = sys.argv[1:]  # "bench", "hacks" or "bench-launched": the parts to run
    summary: dict = {"started": time.time()}
    if not only or "bench" in only:
        b = run_bench(out, int(parallel or 4), deadline)
        summary.update(mean_S=b.get("mean_S"), correct=b["correct"], total=b["total"], machine=b["machine"],
                       peaks=b.get("peaks"), bench_skipped=b["skipped"], bench_s=round(time.monotonic() - T0, 1))
        write(out, "summary.json", summary)
    if "bench-launched" in only:
        b = run_bench(out, int(parallel or 4), deadline, hide_launch=False)
        summary.update(mean_S_launched=b.get("mean_S"), correct_launched=b["correct"])
        write(out, "summary.json", summary)
    if not only or "hacks" in only:
        t1 = time.monotonic()
        hacks = run_hacks(out, int(parallel or 6), deadline)
        summary.update(hacks_caught=sum(r["caught"] for r in hacks), hacks_total=len(hacks),
                       hacks_skipped=[r["hack"] for r in hacks if r.get("skipped")],
                       hacks_s=round(time.monotonic() - t1, 1))
    summary["total_s"] = round(time.monotonic() - T0, 1)
    write(out, "summary.json", summary)
    print(json.dumps(summary), flush=True)
    ok = summary.get("correct", 0) == summary.get("total", 0) and summary.get("hacks_caught") == summary.get(
        "hacks_total")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
