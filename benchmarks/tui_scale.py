"""Whether the TUI keeps up with a big session (issue 4).

A state.db with 100 threads x 100 nodes, their runs (~15,000) and 1,000,000 samples is
built on the real schema (engine.store migrations, then plain sqlite3 executemany in one
transaction, in a child process). ThreadlabApp opens it headless (Textual's run_test,
160x48, watchfiles on as in `threadlab tui`) in this process, while an "engine" child
process writes to it through its own sqlite3 connection. Reported:

- first paint: from constructing the app to the first frame (the screen update Textual
  hands its driver) that shows the threads;
- change to screen: an engine commit -> the tree shows it (checked after every Snapshot
  the app applies) -> the first frame that contains it; 20 changes, alternating a metric
  change of the selected node and a new node in its thread; median and p90;
- memory: this process's RSS (/proc/self/status VmRSS) during a stream of 2,000 engine
  commits over 60 s (sample batches for the selected run, new nodes, status changes,
  heartbeats, events, alerts): at the start, the end, and its slope over the last half.

Where the time goes is reported too: the app's own calls (source.load and its parts,
_apply, the tree's sync, ...) are timed by wrapping them on the app instance; tui/ is not
changed. About 1.5 minutes on 2 CPUs with the defaults.

Targets: first paint <= 1 s, change to screen <= 250 ms, memory <= 300 MB and not growing.

    python benchmarks/tui_scale.py [--threads 100] [--nodes 100] [--samples 1000000]
        [--changes 20] [--stream-seconds 60] [--stream-commits 2000]
        [--stream-new-node-every 8] [--no-watch] [--details] [--runs N] [--out FILE]

Prints a table, then one JSON line with the figures and the machine they ran on. With
--runs N it measures N times, each in a fresh interpreter (imports and caches cold, as
in `threadlab tui`), and reports each figure's median over the runs; --out writes the
JSON line to a file (benchmarks/results/tui_scale-cpu2.json for 2 CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from engine.store import Store

SIZE = (160, 48)
SLOTS = 8
SAMPLE_NAMES = ("train_loss", "lr")
TITLES = [
    "Muon for the hidden matrices", "cosine warmdown", "larger batch, scaled LR", "RMSNorm without weight",
    "tied embeddings", "QK-norm", "ReLU^2 MLP", "rotary base 50k", "value embeddings", "z-loss 1e-4",
    "knobs: LR=0.0031, WD=0.12", "drop the bias terms", "logit soft-cap 30", "warmup 2%", "EMA of weights",
    "gradient clip 0.8", "smaller init std", "untie the head", "sliding window attention", "fp8 matmuls",
]
FAILURE = "Traceback (most recent call last):\n  ...\nRuntimeError: shapes (64, 128) and (96, 128) not aligned"


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def p90(xs: list[float]) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=10, method="inclusive")[-1]


def rss_mb() -> float:
    """This process's resident set now (not the peak: getrusage's max RSS never falls)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else None


# ---- the database (child process) ------------------------------------------------------------


def build_db(db_path: str, n_threads: int, n_nodes: int, n_samples: int, lock_pid: int, seed: int) -> dict:
    """state.db with the real schema, filled with sqlite3 executemany in one transaction."""
    t_start = time.monotonic()

    async def migrate() -> None:
        store = await Store.open(db_path, writer=True, create=True)  # schema, WAL, user_version
        await store.close()

    asyncio.run(migrate())
    rng = random.Random(seed)
    now = time.time()
    t0 = now - 3 * 86400  # a three-day session
    workdir = Path(db_path).parent
    run_root = workdir / "state.run" / "runs"

    nodes: list[tuple] = []
    runs: list[tuple] = []
    verdicts: list[tuple] = []
    alerts: list[tuple] = []
    events: list[tuple] = [(t0, "info", "engine",
                            f"engine started on task scale (profile default) with {SLOTS} slot(s): "
                            + ", ".join(f"gpu{i}" for i in range(SLOTS)),
                            json.dumps({"slots": [f"gpu{i}" for i in range(SLOTS)]}))]
    total = 1 + n_threads * n_nodes

    def at(i: int) -> float:
        return t0 + (now - t0 - 600) * i / total

    def add_run(node_id: int, seed_: int, purpose: str, status: str, metric: float | None, when: float) -> int:
        run_id = len(runs) + 1
        started = status not in ("queued", "cancelled")
        ended = status in ("done", "failed")
        runs.append((run_id, node_id, seed_, purpose, status, f"gpu{run_id % SLOTS}" if started else None,
                     metric if status == "done" else None, (0 if status == "done" else 1) if ended else None,
                     FAILURE if status == "failed" else "", str(run_root / str(run_id)) if started else None,
                     1, "{}", when, when + 5 if started else None, when + 305 if ended else None))
        return run_id

    # the baseline
    base_metric = 3.0
    nodes.append((1, 1, None, None, None, None, "baseline", "the task's seed code", "{}", "baseline",
                  base_metric, 0.004, 5, None, "", t0, t0))
    for s in range(5):
        add_run(1, s, "baseline", "done", base_metric + rng.gauss(0, 0.004), t0)

    statuses = ["running", "running", "running", "running", "running", "running", "running",
                "paused", "pruned", "done"]
    threads = [dict(id=i + 1, status=statuses[i % 10], head=1, head_metric=base_metric, stale=0,
                    rng=random.Random(seed * 1000 + i)) for i in range(n_threads)]
    running_nodes = 0
    live_node = live_run = None
    node_id = 1
    # node ids interleave over the threads, as the engine's proposals do
    for j in range(n_nodes):
        last = j == n_nodes - 1
        for th in threads:
            node_id += 1
            r = th["rng"]
            when = at(node_id)
            parent, parent2 = th["head"], None
            title = f"{r.choice(TITLES)} ({j})"
            hm = th["head_metric"]
            metric = std = p = None
            n_runs = 1
            error = ""
            if th["status"] == "running" and last:
                if th["id"] == 1:
                    status = "validating"
                elif running_nodes < SLOTS - 2:
                    status = "running"
                    running_nodes += 1
                else:
                    status = "queued"
            elif th["status"] == "pruned" and j >= n_nodes - 3:
                status, error = "cancelled", "pruned"
            else:
                x = r.random()
                status = ("accepted" if x < 0.10 else "rejected" if x < 0.80 else "failed" if x < 0.92
                          else "flagged")
            if status == "accepted":
                metric, std, p, n_runs = hm * (1 - r.uniform(0.002, 0.02)), r.uniform(0.003, 0.01), \
                    r.uniform(0.0005, 0.04), 5
            elif status == "rejected":
                metric, p = hm * (1 + r.uniform(-0.002, 0.03)), r.uniform(0.05, 0.9)
            elif status == "flagged":
                metric, error = hm * (1 - r.uniform(0.05, 0.2)), "a guard raised an alert"
            elif status == "failed":
                error = "its runs crashed"
            elif status == "validating":
                metric, std, n_runs = hm * 0.995, 0.006, 3
                title = "live: lr warmup"
            elif status in ("queued", "running", "cancelled"):
                n_runs = 0
            if r.random() < 0.02 and j > 0:
                other = threads[r.randrange(n_threads)]
                parent2 = other["head"]
                title = f"merge #{parent2} into #{parent}"
            nodes.append((node_id, 1, th["id"], parent, parent2, None, title, f"hypothesis of #{node_id}", "{}",
                          status, metric, std, n_runs, p, error, when, when + 300))
            # its runs
            if status == "accepted":
                for s in range(5):
                    add_run(node_id, s, "explore" if s == 0 else "validate", "done",
                            metric + r.gauss(0, std), when)
            elif status in ("rejected", "flagged"):
                add_run(node_id, 0, "explore", "done", metric, when)
            elif status == "failed":
                add_run(node_id, 0, "explore", "failed", None, when)
            elif status == "cancelled":
                add_run(node_id, 0, "explore", "cancelled", None, when)
            elif status == "queued":
                add_run(node_id, 0, "explore", "queued", None, when)
            elif status == "running":
                add_run(node_id, 0, "explore", "running", None, when)
            elif status == "validating":
                for s, st in enumerate(["done", "done", "done", "running", "queued"]):
                    rid = add_run(node_id, s, "explore" if s == 0 else "validate", st,
                                  metric + r.gauss(0, 0.006), when)
                    if st == "running":
                        live_node, live_run = node_id, rid
            if status in ("accepted", "rejected", "flagged"):
                summary = {"accepted": f"better than #{parent} on 5 seeds (p = {p:.3g} < 0.05)" if p else "",
                           "rejected": f"worse than #{parent} on the exploration seed",
                           "flagged": "a guard raised an alert"}[status]
                verdicts.append((node_id, int(status == "accepted"), summary, json.dumps({"status": status}),
                                 when + 300))
            if status == "flagged":
                alerts.append((node_id, None, "budget_steps", "the candidate ran fewer steps than the budget allows",
                               '{"steps": 20, "expected": 40}', 1, when + 300))
            if status == "accepted":
                th["head"], th["head_metric"], th["stale"] = node_id, metric, 0
                events.append((when + 300, "info", "accepted",
                               f"thread t{th['id']:03d}: #{node_id} {title} accepted", "{}"))
            elif status in ("rejected", "flagged", "failed"):
                th["stale"] += 1
    if alerts:  # the newest few are not acknowledged yet
        alerts[-3:] = [a[:5] + (0,) + a[6:] for a in alerts[-3:]]

    # samples: the live run's curve is long; the rest spread over every run that started
    started = [r[0] for r in runs if r[4] in ("done", "failed", "running") and r[0] != live_run]
    live_n = min(4000, n_samples // 10)
    per, extra = divmod(n_samples - live_n, len(started))
    counts = {rid: per + (1 if i < extra else 0) for i, rid in enumerate(started)}
    counts[live_run] = live_n
    run_start = {r[0]: (r[13] or t0) for r in runs}

    def sample_rows():
        for rid in sorted(counts):
            base = run_start[rid]
            for k in range(counts[rid]):
                step = k // 2
                name = SAMPLE_NAMES[k % 2]
                value = 3.5 * (1 + step) ** -0.15 if k % 2 == 0 else 0.003 * min(1.0, (step + 1) / 50)
                yield rid, step, name, value, base + step

    threads_rows = [
        (th["id"], 1, f"t{th['id']:03d}", f"threadlab/t{th['id']:03d}", th["head"],
         "search" if th["id"] % 3 else "llm", th["status"], int(th["id"] == 1), th["stale"],
         {"paused": "paused by the user", "pruned": "pruned", "done": "retired after 8 attempts"}.get(th["status"], ""),
         t0, now - 60)
        for th in threads
    ]
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO tasks (id, name, path, profile, metric_name, direction, unit, repo_path, "
                   "root_node_id, created_at) VALUES (1, 'scale', '/tasks/scale', 'default', 'val_loss', "
                   "'minimize', '', ?, 1, ?)", (str(workdir / "repo.git"), t0))
        db.execute("INSERT INTO session (id, task_id, config, elapsed_s, updated_at) VALUES (1, 1, ?, ?, ?)",
                   (json.dumps({"task": "/tasks/scale", "profile": "default", "threads": n_threads,
                                "cpu_slots": SLOTS, "budget_s": None}), now - t0, now))
        db.execute("INSERT INTO engine_lock (id, pid, host, started_at, heartbeat_at) VALUES (1, ?, ?, ?, ?)",
                   (lock_pid, socket.gethostname(), t0, now))
        db.executemany("INSERT INTO threads (id, task_id, name, branch, head_node_id, proposer, status, pinned, "
                       "stale_attempts, note, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", threads_rows)
        db.executemany("INSERT INTO nodes (id, task_id, thread_id, parent_id, parent2_id, commit_sha, title, "
                       "hypothesis, origin, status, metric, metric_std, n_runs, p_value, error, created_at, "
                       "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", nodes)
        db.executemany("INSERT INTO runs (id, node_id, seed, purpose, status, slot, metric, exit_code, error, "
                       "run_dir, attempt, extra, queued_at, started_at, ended_at) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        db.executemany("INSERT INTO samples (run_id, step, name, value, t) VALUES (?,?,?,?,?)", sample_rows())
        db.executemany("INSERT INTO verdicts (node_id, accepted, summary, details, created_at) "
                       "VALUES (?,?,?,?,?)", verdicts)
        db.executemany("INSERT INTO alerts (node_id, run_id, guard, message, evidence, acknowledged, created_at) "
                       "VALUES (?,?,?,?,?,?,?)", alerts)
        db.executemany("INSERT INTO events (t, level, kind, message, data) VALUES (?,?,?,?,?)", events)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        n_sample_rows = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    finally:
        db.close()
    live_dir = run_root / str(live_run)
    live_dir.mkdir(parents=True, exist_ok=True)
    (live_dir / "stdout.log").write_text("".join(f"step {s} train_loss {3.5 * (1 + s) ** -0.15:.4f}\n"
                                                 for s in range(live_n // 2)))
    (live_dir / "stderr.log").write_text("")
    return {
        "build_s": round(time.monotonic() - t_start, 2),
        "db_mb": round(os.path.getsize(db_path) / 2**20, 1),
        "nodes": len(nodes), "runs": len(runs), "samples": n_sample_rows, "verdicts": len(verdicts),
        "alerts": len(alerts), "events": len(events),
        "live_node": live_node, "live_run": live_run, "live_steps": live_n // 2, "live_dir": str(live_dir),
        "first_thread": "t001",
        "running_threads": [th["id"] for th in threads if th["status"] == "running"],
        "heads": {th["id"]: th["head"] for th in threads},
        "head_metrics": {th["id"]: th["head_metric"] for th in threads},
        "next_run_id": len(runs) + 1,
    }


# ---- the engine's writes (child process) -----------------------------------------------------


class EngineWrites:
    """What an engine commits, through its own sqlite3 connection, each a BEGIN IMMEDIATE."""

    def __init__(self, db_path: str, info: dict) -> None:
        self.db = sqlite3.connect(db_path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.info = info
        self.heads = {int(k): v for k, v in info["heads"].items()}
        self.head_metrics = {int(k): v for k, v in info["head_metrics"].items()}
        self.live_node, self.live_run = info["live_node"], info["live_run"]
        self.step = info["live_steps"]
        self.log = open(Path(info["live_dir"]) / "stdout.log", "a")  # noqa: SIM115 - closed in close()
        self.rng = random.Random(7)
        self.last_heartbeat = 0.0

    def close(self) -> None:
        self.log.close()
        self.db.close()

    def _commit(self, work: Callable[[sqlite3.Connection, float], None], heartbeat: bool = True) -> float:
        now = time.time()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            work(db, now)
            if heartbeat or now - self.last_heartbeat >= 1.0:
                db.execute("UPDATE engine_lock SET heartbeat_at = ? WHERE id = 1", (now,))
                db.execute("UPDATE session SET elapsed_s = elapsed_s + ?, updated_at = ? WHERE id = 1",
                           (now - self.last_heartbeat if self.last_heartbeat else 0.0, now))
                self.last_heartbeat = now
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return time.monotonic()

    def _add_node(self, db: sqlite3.Connection, now: float, thread_id: int, title: str) -> tuple[int, int]:
        cur = db.execute(
            "INSERT INTO nodes (task_id, thread_id, parent_id, title, hypothesis, origin, status, created_at, "
            "updated_at) VALUES (1, ?, ?, ?, '', '{}', 'queued', ?, ?)",
            (thread_id, self.heads[thread_id], title, now, now))
        node_id = cur.lastrowid
        run = db.execute("INSERT INTO runs (node_id, seed, purpose, status, queued_at) VALUES (?, 0, 'explore', "
                         "'queued', ?)", (node_id, now)).lastrowid
        db.execute("UPDATE threads SET updated_at = ? WHERE id = ?", (now, thread_id))
        return node_id, run

    # the changes timed one by one

    def metric(self, value: float) -> float:
        return self._commit(lambda db, now: db.execute(
            "UPDATE nodes SET metric = ?, updated_at = ? WHERE id = ?", (value, now, self.live_node)))

    def new_node(self, title: str) -> float:
        return self._commit(lambda db, now: self._add_node(db, now, 1, title))

    # the long stream

    def stream(self, commits: int, seconds: float, new_node_every: int) -> dict:
        rng = self.rng
        running = [t for t in self.info["running_threads"] if t != 1]
        pending: deque[list] = deque()  # [node, run, thread, state]
        counts = dict(samples=0, nodes=0, decided=0, accepted=0, events=0, alerts=0)
        late = []
        start = time.monotonic()
        for i in range(commits):
            due = start + seconds * i / commits
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late.append(-wait)

            def work(db: sqlite3.Connection, now: float, i: int = i) -> None:
                # every commit: a batch of the live run's samples, and its log
                rows = []
                for _ in range(5):
                    s = self.step
                    rows.append((self.live_run, s, "train_loss", 3.5 * (1 + s) ** -0.15 + rng.gauss(0, 0.01), now))
                    rows.append((self.live_run, s, "lr", 0.003, now))
                    self.step += 1
                db.executemany("INSERT INTO samples (run_id, step, name, value, t) VALUES (?,?,?,?,?)", rows)
                counts["samples"] += len(rows)
                self.log.write("".join(f"step {r[1]} train_loss {r[3]:.4f}\n" for r in rows[::2]))
                if new_node_every and i % new_node_every == 0:  # a new proposal in a running thread
                    th = rng.choice(running)
                    node, run = self._add_node(db, now, th, f"{rng.choice(TITLES)} (s{i})")
                    pending.append([node, run, th, "queued"])
                    counts["nodes"] += 1
                elif new_node_every and i % new_node_every == new_node_every // 2 and pending:
                    # the oldest one moves on: queued -> running -> decided
                    item = pending.popleft()
                    node, run, th, state = item
                    if state == "queued":
                        db.execute("UPDATE nodes SET status = 'running', updated_at = ? WHERE id = ?", (now, node))
                        db.execute("UPDATE runs SET status = 'running', slot = 'gpu1', started_at = ? WHERE id = ?",
                                   (now, run))
                        item[3] = "running"
                        pending.append(item)
                    else:
                        hm = self.head_metrics[th]
                        accepted = rng.random() < 0.2
                        metric = hm * (1 - rng.uniform(0.002, 0.02)) if accepted else hm * (1 + rng.uniform(0, 0.03))
                        status = "accepted" if accepted else "rejected"
                        db.execute("UPDATE runs SET status = 'done', metric = ?, exit_code = 0, ended_at = ? "
                                   "WHERE id = ?", (metric, now, run))
                        db.executemany("INSERT INTO samples (run_id, step, name, value, t) VALUES (?,?,?,?,?)",
                                       [(run, s, "train_loss", 3.5 * (1 + s) ** -0.15, now) for s in range(40)])
                        db.execute("UPDATE nodes SET status = ?, metric = ?, n_runs = 1, updated_at = ? WHERE id = ?",
                                   (status, metric, now, node))
                        db.execute("INSERT INTO verdicts (node_id, accepted, summary, details, created_at) "
                                   "VALUES (?, ?, ?, '{}', ?)", (node, int(accepted), f"{status} on the stream", now))
                        if accepted:
                            db.execute("UPDATE threads SET head_node_id = ?, stale_attempts = 0, updated_at = ? "
                                       "WHERE id = ?", (node, now, th))
                            self.heads[th], self.head_metrics[th] = node, metric
                            counts["accepted"] += 1
                        else:
                            db.execute("UPDATE threads SET stale_attempts = stale_attempts + 1, updated_at = ? "
                                       "WHERE id = ?", (now, th))
                        counts["decided"] += 1
                if i % 50 == 25:  # the live node's mean moves as its validation runs finish
                    db.execute("UPDATE nodes SET metric = ?, updated_at = ? WHERE id = ?",
                               (2.9 + rng.uniform(-0.01, 0.01), now, self.live_node))
                if i % 100 == 50:
                    db.execute("INSERT INTO events (t, level, kind, message, data) VALUES (?, 'info', 'run', ?, '{}')",
                               (now, f"run {self.live_run}: step {self.step}"))
                    counts["events"] += 1
                if i % 500 == 250:
                    db.execute("INSERT INTO alerts (node_id, run_id, guard, message, evidence, created_at) "
                               "VALUES (?, ?, 'audit_gap', 'val/audit gap far from the baseline''s', '{}', ?)",
                               (self.live_node, self.live_run, now))
                    counts["alerts"] += 1

            self._commit(work, heartbeat=False)
            self.log.flush()
        return {"commits": commits, "wall_s": round(time.monotonic() - start, 2),
                "late_commits": len(late), **counts}


def engine_process(conn: Any, db_path: str, info: dict) -> None:
    writes = EngineWrites(db_path, info)
    conn.send(("ready", os.getpid()))
    try:
        while True:
            op, *args = conn.recv()
            if op == "quit":
                break
            try:
                conn.send(("ok", getattr(writes, op)(*args)))
            except Exception as exc:  # noqa: BLE001 - the benchmark reports it
                conn.send(("error", repr(exc)))
    finally:
        writes.close()


class Engine:
    """The writer process, called through a pipe (the calls block: run them in a thread)."""

    def __init__(self, ctx: Any, db_path: str, info: dict) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=engine_process, args=(child, db_path, info), name="tui-scale-engine")
        self.proc.start()
        _, self.pid = self.conn.recv()

    def call(self, op: str, *args: Any) -> Any:
        self.conn.send((op, *args))
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"engine writer: {op} failed: {value}")
        return value

    def close(self) -> None:
        self.conn.send(("quit",))
        self.proc.join(10)


# ---- inside the app --------------------------------------------------------------------------


class Probe:
    """Timings from inside the app. It wraps, on this app instance only, what ThreadlabApp calls
    (source.load and its parts, _apply, the tree's sync, the detail pane's show, and the screen's
    hand-off of each frame to the driver); tui/ is not changed."""

    def __init__(self, app: Any) -> None:
        from textual._compositor import CompositorUpdate

        self.app = app
        self.applies: deque[tuple[float, float, float]] = deque(maxlen=500)  # (load start, load end, apply end)
        self.parts: dict[str, deque[float]] = {}
        self.check: Callable[[], bool] | None = None  # run after every apply
        self.seen_at: float | None = None
        self.want: str | None = None  # text a frame must contain
        self.painted_at: float | None = None
        self.frames = 0
        self._load_span = (math.nan, math.nan)
        src = app.source

        load = src.load

        async def timed_load(*a: Any, **k: Any) -> Any:
            t = time.monotonic()
            snap = await load(*a, **k)
            self._load_span = (t, time.monotonic())
            return snap

        src.load = timed_load
        for name in ("_threads", "_status", "_detail", "_tasks"):
            self._time_async(src, name)
        self._time_sync(app.thread_tree, "sync", "tree_sync")
        self._time_sync(app.detail, "show", "detail_show")
        self._time_sync(app.alerts_panel, "sync", "alerts_sync")

        apply = app._apply

        def timed_apply(snap: Any) -> None:
            apply(snap)
            end = time.monotonic()
            self.applies.append((*self._load_span, end))
            self._add("apply", end - self._load_span[1])
            self._add("load", self._load_span[1] - self._load_span[0])
            if self.check is not None and self.seen_at is None and self.check():
                self.seen_at = end

        app._apply = timed_apply

        display = app._display

        def spy_display(screen: Any, renderable: Any) -> None:
            self.frames += 1
            if (self.want is not None and self.painted_at is None and isinstance(renderable, CompositorUpdate)
                    and self.want in renderable.render_segments(app.console)):
                self.painted_at = time.monotonic()
            display(screen, renderable)

        app._display = spy_display

    def _add(self, key: str, value: float) -> None:
        self.parts.setdefault(key, deque(maxlen=2000)).append(value)

    def _time_async(self, obj: Any, name: str) -> None:
        fn = getattr(obj, name)

        async def timed(*a: Any, **k: Any) -> Any:
            t = time.monotonic()
            try:
                return await fn(*a, **k)
            finally:
                self._add(name.strip("_"), time.monotonic() - t)

        setattr(obj, name, timed)

    def _time_sync(self, obj: Any, name: str, key: str) -> None:
        fn = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            t = time.monotonic()
            try:
                return fn(*a, **k)
            finally:
                self._add(key, time.monotonic() - t)

        setattr(obj, name, timed)

    def reset(self) -> None:
        self.parts.clear()

    def summary(self) -> dict:
        """Median and p90 (ms) of each timed part since the last reset."""
        out = {}
        for key in ("load", "threads", "detail", "status", "tasks", "apply", "tree_sync", "detail_show",
                    "alerts_sync"):
            xs = list(self.parts.get(key, ()))
            if xs:
                out[f"{key}_median_ms"] = ms(median(xs))
                out[f"{key}_p90_ms"] = ms(p90(xs))
        out["loads"] = len(self.parts.get("apply", ()))
        return out

    def expect(self, check: Callable[[], bool] | None, want: str | None) -> None:
        self.check, self.seen_at, self.want, self.painted_at = check, None, want, None


async def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic()


# ---- the measurement -------------------------------------------------------------------------


async def measure(args: argparse.Namespace, workdir: Path) -> tuple[dict, dict]:
    ctx = multiprocessing.get_context("spawn")
    db_path = str(workdir / "state.db")
    rss_bare = rss_mb()
    load_avg = os.getloadavg()[0]  # other work on the machine skews every figure
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        info = pool.submit(build_db, db_path, args.threads, args.nodes, args.samples, os.getpid(), args.seed).result()
    engine = Engine(ctx, db_path, info)
    try:
        # import the TUI here, after the build: its cost is a real part of `threadlab tui`'s start
        t = time.monotonic()
        import textual

        from tui.app import ThreadlabApp
        from tui.format import fmt_metric

        import_s = time.monotonic() - t
        rss_before_app = rss_mb()

        # 1. first paint
        t0 = time.monotonic()
        app = ThreadlabApp(db_path, watch=not args.no_watch)
        probe = Probe(app)
        first_name = info["first_thread"]
        probe.expect(lambda: app.thread_tree.item("thread", 1) is not None, first_name)
        result: dict[str, Any] = {}
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            ready_at = time.monotonic()
            await until(lambda: probe.painted_at is not None and probe.seen_at is not None, 60, "first paint")
            first_load = probe.applies[0] if probe.applies else (math.nan,) * 3
            snap = app.snapshot
            result.update({
                "first_paint_s": round(probe.painted_at - t0, 3),
                "first_tree_s": round(probe.seen_at - t0, 3),
                "app_ready_s": round(ready_at - t0, 3),
                "first_load_ms": ms(first_load[1] - first_load[0]),
                "first_apply_ms": ms(first_load[2] - first_load[1]),
                "tree_lines": app.thread_tree.last_line + 1,
                "engine_up": bool(snap and snap.status.engine.alive),
            })
            result["first_parts"] = probe.summary()

            # select the live node (a validating node whose run streams samples), as a user would
            live = info["live_node"]
            app.go_to_node(live)
            await until(lambda: app.snapshot.detail is not None and app.snapshot.detail.node.id == live
                        and app.snapshot.detail.run_curve.values, 30, "the live node's detail")
            await pilot.pause()
            tree = app.thread_tree
            tree.scroll_to(y=max(0, tree.cursor_line - 6), animate=False)  # room below it for new nodes
            await pilot.pause()
            await asyncio.sleep(1.0)

            # 2. change to screen
            probe.reset()
            rng = random.Random(args.seed)
            changes = []
            for k in range(args.changes):
                kind = "metric" if k % 2 == 0 else "node"
                if kind == "metric":
                    value = 9.001 + 0.001 * k
                    want = fmt_metric(value)
                    probe.expect(lambda want=want: f" {want}" in tree.item("node", live).label.plain, want)
                    t_commit = await asyncio.to_thread(engine.call, "metric", value)
                else:
                    want = f"probe {k:03d} {rng.randrange(16**6):06x}"

                    def has_node(want: str = want) -> bool:
                        thread = tree.item("thread", 1)
                        return any(want in c.label.plain for c in thread.children)

                    probe.expect(has_node, want)
                    t_commit = await asyncio.to_thread(engine.call, "new_node", want)
                try:
                    await until(lambda: probe.seen_at is not None, args.change_timeout, "change on the tree")
                    await until(lambda: probe.painted_at is not None, 1.0, "frame with the change")
                except TimeoutError:
                    pass
                seen, painted = probe.seen_at, probe.painted_at
                # the Snapshot that showed it: when its load began (detection) and how long it took
                hit = next((a for a in probe.applies if seen is not None and a[2] == seen), None)
                changes.append({
                    "kind": kind,
                    "tree_ms": ms(seen - t_commit) if seen else None,
                    "paint_ms": ms(painted - t_commit) if painted else None,
                    "detect_ms": ms(max(0.0, hit[0] - t_commit)) if hit else None,
                    "load_ms": ms(hit[1] - hit[0]) if hit else None,
                    "apply_ms": ms(hit[2] - hit[1]) if hit else None,
                })
                probe.expect(None, None)
                await asyncio.sleep(rng.uniform(0.3, 0.7))  # no lock-step with the 0.25 s poll
            result["change_parts"] = probe.summary()

            # 3. memory during a long stream of changes
            probe.reset()
            await asyncio.sleep(0.5)
            rss: list[tuple[float, float]] = []
            blocks: list[int] = []
            t_stream = time.monotonic()
            stream = asyncio.ensure_future(asyncio.to_thread(
                engine.call, "stream", args.stream_commits, args.stream_seconds, args.stream_new_node_every))
            while True:
                rss.append((time.monotonic() - t_stream, rss_mb()))
                blocks.append(sys.getallocatedblocks())
                done, _ = await asyncio.wait({stream}, timeout=args.rss_every)
                if done:
                    break
            stream_info = stream.result()
            await asyncio.sleep(2.5)  # the last commits reach the screen
            rss.append((time.monotonic() - t_stream, rss_mb()))
            blocks.append(sys.getallocatedblocks())
            result["stream_parts"] = probe.summary()
            result["stream_frames"] = probe.frames
            result["tree_lines_end"] = app.thread_tree.last_line + 1
            result["engine_up_end"] = bool(app.snapshot and app.snapshot.status.engine.alive)
            t_quit = time.monotonic()
            app.exit()
        # the viewer's reader connection is closed by its worker's `finally` after the app
        # stopped; this loop must keep running until it is (else its thread outlives us)
        try:
            await until(lambda: app.source.store is None, 15, "the reader closed", interval=0.01)
            result["reader_closed_after_exit_s"] = round(time.monotonic() - t_quit, 3)
        except TimeoutError:
            result["reader_closed_after_exit_s"] = None
            await app.source.close()
    finally:
        engine.close()

    tree_ms = [c["tree_ms"] for c in changes if c["tree_ms"] is not None]
    paint_ms = [c["paint_ms"] for c in changes if c["paint_ms"] is not None]
    half = [p for p in rss if p[0] >= rss[-1][0] / 2]
    figures = {
        "threads": args.threads,
        "nodes": info["nodes"],
        "runs": info["runs"],
        "samples": info["samples"],
        "db_mb": info["db_mb"],
        "build_s": info["build_s"],
        "watch": not args.no_watch,
        "load_avg_1m_at_start": round(load_avg, 2),
        "import_s": round(import_s, 3),
        "first_paint_s": result["first_paint_s"],
        "first_tree_s": result["first_tree_s"],
        "app_ready_s": result["app_ready_s"],
        "first_load_ms": result["first_load_ms"],
        "first_apply_ms": result["first_apply_ms"],
        "tree_lines": result["tree_lines"],
        "engine_up": result["engine_up"],
        "changes": len(changes),
        "changes_missed": sum(c["tree_ms"] is None for c in changes),
        "change_to_tree_median_ms": round(median(tree_ms), 1) if tree_ms else None,
        "change_to_tree_p90_ms": round(p90(tree_ms), 1) if tree_ms else None,
        "change_to_paint_median_ms": round(median(paint_ms), 1) if paint_ms else None,
        "change_to_paint_p90_ms": round(p90(paint_ms), 1) if paint_ms else None,
        "change_to_paint_max_ms": max(paint_ms) if paint_ms else None,
        "changes_painted": len(paint_ms),
        "change_detect_median_ms": median([c["detect_ms"] for c in changes if c["detect_ms"] is not None]),
        "change_load_median_ms": median([c["load_ms"] for c in changes if c["load_ms"] is not None]),
        "change_apply_median_ms": median([c["apply_ms"] for c in changes if c["apply_ms"] is not None]),
        "stream_commits": stream_info["commits"],
        "stream_s": stream_info["wall_s"],
        "stream_loads": result["stream_parts"]["loads"],
        "stream_load_median_ms": result["stream_parts"].get("load_median_ms"),
        "stream_apply_median_ms": result["stream_parts"].get("apply_median_ms"),
        "rss_bare_mb": round(rss_bare, 1),
        "rss_before_app_mb": round(rss_before_app, 1),
        "rss_start_mb": round(rss[0][1], 1),
        "rss_end_mb": round(rss[-1][1], 1),
        "rss_max_mb": round(max(r for _, r in rss), 1),
        "rss_slope_last_half_mb_per_min": round(slope_per_min(half), 2) if len(half) >= 3 else None,
        "py_blocks_start": blocks[0],
        "py_blocks_end": blocks[-1],
        "tree_lines_end": result["tree_lines_end"],
        "engine_up_end": result["engine_up_end"],
        "reader_closed_after_exit_s": result["reader_closed_after_exit_s"],
    }
    details = {
        "changes": changes,
        "rss_mb": [(round(t, 1), round(r, 1)) for t, r in rss],
        "first_parts": result["first_parts"],
        "change_parts": result["change_parts"],
        "stream_parts": result["stream_parts"],
        "stream": stream_info,
        "textual": textual.__version__,
    }
    return figures, details


def machine() -> dict:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }


FIGURE_EXTRAS = ("parts", "stream", "rss_mb", "change_samples", "per_run")  # in a result, not figures
TARGETS = {"first_paint_s": 1.0, "change_to_paint_median_ms": 250.0, "change_to_paint_p90_ms": 250.0,
           "rss_max_mb": 300.0}


def run_once(args: argparse.Namespace) -> dict:
    """One measurement on a fresh database: the JSON report."""
    workdir = Path(tempfile.mkdtemp(prefix="tui_scale-", dir=args.dir))
    try:
        figures, details = asyncio.run(measure(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {**figures, "parts": {k: details[k] for k in ("first_parts", "change_parts", "stream_parts")},
              "stream": details["stream"], "rss_mb": details["rss_mb"], "change_samples": details["changes"]}
    return {"benchmark": "tui_scale", "result": result, "machine": {**machine(), "textual": details["textual"]}}


def combine(reports: list[dict]) -> dict:
    """Several runs: each figure is the median over the runs; the parts, the RSS samples and
    the change samples are those of the run with the median change to paint; per_run keeps
    every run's figures."""
    results = [r["result"] for r in reports]
    by_paint = sorted(results, key=lambda r: r.get("change_to_paint_median_ms") or math.inf)
    result = dict(by_paint[(len(by_paint) - 1) // 2])
    for key, value in results[0].items():
        values = [r.get(key) for r in results]
        if key not in FIGURE_EXTRAS and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            m = statistics.median(values)
            result[key] = int(m) if all(isinstance(v, int) for v in values) and m == int(m) else round(m, 3)
    result["measured_runs"] = len(results)
    result["per_run"] = [{k: v for k, v in r.items() if k not in FIGURE_EXTRAS} for r in results]
    return {**reports[0], "result": result}


def print_table(result: dict, details: bool) -> None:
    figures = {k: v for k, v in result.items() if k not in FIGURE_EXTRAS}
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        mark = ""
        if key in TARGETS and value is not None:
            mark = f"   target <= {TARGETS[key]:g}: {'ok' if value <= TARGETS[key] else 'MISSED'}"
        print(f"{key:<{width}}  {value}{mark}")
    print(f"{'where the time goes (ms, median/p90)':<{width}}")
    for phase in ("first_parts", "change_parts", "stream_parts"):
        parts = result["parts"][phase]
        cells = [f"{k[:-10]} {parts[k]}/{parts.get(k[:-10] + '_p90_ms')}" for k in parts if k.endswith("_median_ms")]
        print(f"  {phase:<{width - 2}}  {parts['loads']} loads; " + ", ".join(cells))
    if details:
        for c in result["change_samples"]:
            print(c)
        print("rss", result["rss_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=100, help="nodes per thread")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=20, help="changes timed one by one")
    parser.add_argument("--change-timeout", type=float, default=10.0)
    parser.add_argument("--stream-seconds", type=float, default=60.0)
    parser.add_argument("--stream-commits", type=int, default=2000)
    parser.add_argument("--stream-new-node-every", type=int, default=8,
                        help="a new node every N stream commits (each then runs and is decided); 0: none")
    parser.add_argument("--rss-every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--no-watch", action="store_true", help="poll data_version only (no watchfiles)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to build state.db (default: a temp folder)")
    parser.add_argument("--details", action="store_true", help="also print every change and RSS sample")
    parser.add_argument("--runs", type=int, default=1,
                        help="measure this many times, each in a fresh interpreter; the figures are the medians")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the JSON to this file, e.g. benchmarks/results/tui_scale-cpu2.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one run of --runs N
    args = parser.parse_args()
    if args.runs > 1 and not args.one:
        reports = []
        for i in range(args.runs):
            print(f"---- run {i + 1} of {args.runs} (load average {os.getloadavg()[0]:.2f})", flush=True)
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one"], stdout=subprocess.PIPE,
                                   text=True, check=True)
            print(child.stdout, end="", flush=True)
            reports.append(json.loads(child.stdout.strip().splitlines()[-1]))
        report = combine(reports)
        print(f"---- the medians of {args.runs} runs")
    else:
        report = run_once(args)
    print_table(report["result"], args.details)
    print(json.dumps(report))
    sys.stdout.flush()
    if args.out is not None and not args.one:
        args.out.write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
