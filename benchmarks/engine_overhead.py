"""How much of the slots' time the engine wastes.

A no-op task (each run sleeps about 0.5 s, then a tiny evaluator scores it) runs on N CPU
slots for a fixed time. Reported: the busy fraction of the slots, the gap between one
run ending and the next starting on the same slot, and the engine's own CPU time per run.
Targets (issue 2): busy fraction >= 0.95, median gap <= 50 ms.

    python benchmarks/engine_overhead.py [--seconds 60] [--slots 2] [--work 0.5]

Prints a table, then one JSON line with the figures and the machine they ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from engine.config import SessionConfig
from engine.executor import LocalExecutor, detect_slots
from engine.loop import Engine
from engine.sandbox import bwrap_path
from engine.store import Store

NOOP_TASK = Path(__file__).parent / "tasks" / "noop"


async def measure(seconds: float, slots: int, work_s: float, executor_name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp) / "noop"
        shutil.copytree(NOOP_TASK, task)
        solution = task / "solution.py"
        solution.write_text(solution.read_text().replace("WORK_S = 0.5", f"WORK_S = {work_s}"))
        db = Path(tmp) / "state.db"
        config = SessionConfig(task=str(task), profile="default", threads=slots, budget_s=seconds,
                               cpu_slots=slots, patience=10_000, executor=executor_name)
        executor = LocalExecutor(detect_slots(slots, "cpu"))
        async with await Store.open(db, writer=True, create=True) as store:
            await store.save_session(config.to_dict(), None, reset_elapsed=True)
            cpu0, wall0 = time.process_time(), time.monotonic()
            await Engine(store, config, Path(tmp) / "state.run", executor).run()
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            runs = [r for r in await store.runs() if r.started_at and r.ended_at and r.status != "interrupted"]
    by_slot: dict[str, list] = {}
    for r in runs:
        by_slot.setdefault(r.slot, []).append(r)
    start = min(r.started_at for r in runs)
    end = max(r.ended_at for r in runs)
    busy = sum(r.ended_at - r.started_at for r in runs)
    gaps = []
    for slot_runs in by_slot.values():
        slot_runs.sort(key=lambda r: r.started_at)
        gaps += [b.started_at - a.ended_at for a, b in zip(slot_runs, slot_runs[1:])]
    durations = [r.ended_at - r.started_at for r in runs]
    return {
        "executor": executor_name,
        "slots": slots,
        "work_s": work_s,
        "window_s": round(end - start, 3),
        "runs": len(runs),
        "busy_fraction": round(busy / (slots * (end - start)), 4),
        # the share of slot time spent in the task's own work (the rest: sandbox, interpreters, evaluator)
        "useful_fraction": round(len(runs) * work_s / (slots * (end - start)), 4),
        "gap_median_ms": round(1000 * statistics.median(gaps), 2) if gaps else None,
        "gap_p90_ms": round(1000 * statistics.quantiles(gaps, n=10)[-1], 2) if len(gaps) > 10 else None,
        "run_median_s": round(statistics.median(durations), 4),
        "run_overhead_median_ms": round(1000 * (statistics.median(durations) - work_s), 1),
        "engine_cpu_per_run_ms": round(1000 * cpu / max(1, len(runs)), 2),
        "engine_wall_s": round(wall, 2),
    }


def machine() -> dict:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sandbox": "bwrap" if bwrap_path() else "none",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--work", type=float, default=0.5, help="seconds each run sleeps")
    parser.add_argument("--executor", choices=["local"], default="local")
    args = parser.parse_args()
    result = asyncio.run(measure(args.seconds, args.slots, args.work, args.executor))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps({"benchmark": "engine_overhead", "result": result, "machine": machine()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
