"""Figures of a finished (or running) research session, read from its state.db.

    python benchmarks/session_report.py STATE_DB [--nvidia-smi CSV] [--out JSON]

Busy fraction: the union of the runs' [started_at, ended_at] intervals per slot over the
session's window (first run start to last run end), averaged over slots. GPU busy from the
runs (timed_busy_from_runs): the union of their timed parts (extra.timed_at for run_s seconds: training, not
set-up or evaluation) per GPU (slots gpu0 and gpu0.1 share gpu0), over the window. With
--nvidia-smi (a CSV whose first two columns are `timestamp,utilization.gpu`, as
`nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000`
writes) the share of samples in the same window with the GPU above 0% utilisation is
reported beside it, as a cross-check.
"""

import argparse
import datetime
import json
import sqlite3
import statistics
from collections import Counter, defaultdict
from pathlib import Path


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def gpu_samples(path: Path, start: float, end: float) -> dict:
    busy = n = 0
    utils = []
    for line in path.read_text().splitlines():
        try:
            stamp, util = (part.strip() for part in line.split(",")[:2])
            t = datetime.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            value = float(util)
        except ValueError:
            continue
        if start <= t <= end:
            n += 1
            busy += value > 0
            utils.append(value)
    return {"samples": n, "busy_fraction": round(busy / n, 4) if n else None,
            "mean_utilization_pct": round(statistics.fmean(utils), 1) if utils else None}


def report(db_path: Path, smi: Path | None) -> dict:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    task = db.execute("SELECT * FROM tasks").fetchone()
    runs = db.execute("SELECT * FROM runs WHERE started_at IS NOT NULL AND ended_at IS NOT NULL").fetchall()
    by_slot = defaultdict(list)
    for r in runs:
        by_slot[r["slot"]].append((r["started_at"], r["ended_at"]))
    start = min(r["started_at"] for r in runs)
    end = max(r["ended_at"] for r in runs)
    window = end - start
    busy = statistics.fmean(union_seconds(v) / window for v in by_slot.values())
    timed = defaultdict(list)  # GPU -> the runs' timed parts
    for r in runs:
        extra = json.loads(r["extra"] or "{}")
        if extra.get("timed_at") and extra.get("run_s"):
            timed[r["slot"].split(".")[0]].append((extra["timed_at"], extra["timed_at"] + extra["run_s"]))
    root = db.execute("SELECT * FROM nodes WHERE id = ?", (task["root_node_id"],)).fetchone()
    baseline_runs = [r["metric"] for r in runs if r["node_id"] == root["id"] and r["metric"] is not None]
    accepted = db.execute("SELECT * FROM nodes WHERE status = 'accepted' ORDER BY id").fetchall()
    alerts = db.execute("SELECT guard, message, node_id, run_id FROM alerts ORDER BY id").fetchall()
    done = [r for r in runs if r["status"] == "done"]
    out = {
        "task": f"{task['name']} ({task['profile']})",
        "metric": f"{task['metric_name']} ({task['direction']})",
        "window_s": round(window, 1),
        "runs": dict(Counter(r["status"] for r in runs)),
        "runs_per_hour": round(len(runs) / window * 3600, 1),
        "slots": len(by_slot),
        "slot_busy_fraction": round(busy, 4),
        "timed_busy_from_runs": {gpu: round(union_seconds(v) / window, 4) for gpu, v in sorted(timed.items())},
        "run_s_median": round(statistics.median(r["ended_at"] - r["started_at"] for r in done), 1) if done else None,
        "baseline": {"metric": root["metric"], "seeds": baseline_runs},
        "accepted": [{"id": n["id"], "title": n["title"], "metric": n["metric"], "std": n["metric_std"],
                      "p_value": n["p_value"], "parent": n["parent_id"]} for n in accepted],
        "nodes": dict(Counter(r[0] for r in db.execute("SELECT status FROM nodes"))),
        "alerts": [dict(a) for a in alerts],
        # why runs failed: the session's record, which the figures alone do not give
        "failed_runs": [{"run": r["id"], "node": r["node_id"], "status": r["status"], "error": (r["error"] or "")[:300]}
                        for r in runs if r["status"] not in ("done", "cancelled")],
    }
    extras = [json.loads(r["extra"] or "{}") for r in done]
    epochs = [e["epochs"] for e in extras if isinstance(e.get("epochs"), (int, float))]
    if epochs:  # passes over the train split (a training task's data-repetition figure)
        out["epochs_per_run"] = {"min": min(epochs), "median": statistics.median(epochs), "max": max(epochs)}
    evals = [e["eval_s"] for e in extras if isinstance(e.get("eval_s"), (int, float))]
    if evals:
        out["eval_s_median"] = round(statistics.median(evals), 1)
    if smi is not None and smi.exists():
        out["nvidia_smi"] = gpu_samples(smi, start, end)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path)
    parser.add_argument("--nvidia-smi", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = json.dumps(report(args.db, args.nvidia_smi), indent=1, default=str)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()
