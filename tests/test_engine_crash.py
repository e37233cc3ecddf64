"""Crash safety with real processes: `threadlab engine` killed with SIGKILL restarts where
it stopped; another engine, or `threadlab run`, on a live database refuses with one clear line.

The first engine is this test's own child (started with `threadlab engine --db` after the
session was stored, which is what `threadlab run` does before it spawns one), so the test
reaps it after the kill: a killed engine that nobody reaps stays a zombie, and a zombie's
pid still looks alive (see test_store.py for that case).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

from engine.config import SessionConfig
from engine.store import Store

from tests.conftest import THREADLAB, assert_clean_error, make_task, only_lines, slow_playbook, threadlab, wait_for

TABLES = ("nodes", "runs", "samples", "lessons", "verdicts", "alerts", "threads")


def _db_rows(db: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _lock_pid(db: Path) -> int | None:
    rows = _db_rows(db, "SELECT pid FROM engine_lock")
    return rows[0]["pid"] if rows else None


async def _store_session(db: Path, task: Path) -> None:
    config = SessionConfig(task=str(task), profile="smoke", threads=2, budget_s=None, cpu_slots=2, patience=100)
    async with await Store.open(db, writer=True, create=True) as store:
        await store.save_session(config.to_dict(), None, reset_elapsed=True)


def _exited(proc) -> str | None:
    code = proc.popen.poll()
    if code is None:
        return None
    return f"the engine exited with {code}: {proc.stderr()[-2000:]} {proc.stdout()[-500:]}"


async def test_kill_9_loses_nothing_and_the_next_engine_requeues_the_interrupted_runs(tmp_path, processes):
    # The baseline is quick; candidates sleep 1.5-2 s after streaming their samples.
    task = make_task(tmp_path / "slow", sleep=0, playbook=slow_playbook(1.5, 2.0))
    db = tmp_path / "state.db"
    await _store_session(db, task)
    first = processes([str(THREADLAB), "engine", "--db", str(db)], "engine1")

    def ready():
        if _lock_pid(db) != first.pid or not _db_rows(db, "SELECT id FROM lessons"):
            return None
        running = _db_rows(db, "SELECT r.id FROM runs r WHERE r.status = 'running' AND r.purpose = 'explore' "
                               "AND EXISTS (SELECT 1 FROM samples s WHERE s.run_id = r.id)")
        return running or None

    await wait_for(ready, 30, "a decided node and a running run with samples", alive=lambda: _exited(first))
    before = {t: {r["id"] for r in _db_rows(db, f"SELECT id FROM {t}")} for t in TABLES}
    os.kill(first.pid, signal.SIGKILL)
    first.popen.wait(timeout=10)
    running = {r["id"]: r for r in _db_rows(db, "SELECT * FROM runs WHERE status = 'running'")}
    assert running, "no run was running when the engine died"
    assert set(running) <= before["runs"]
    assert _lock_pid(db) == first.pid  # a dead engine's lock row stays behind

    second = processes([str(THREADLAB), "engine", "--db", str(db)], "engine2")
    await wait_for(lambda: _lock_pid(db) == second.pid, 30, "the new engine to take over the lock",
                   alive=lambda: _exited(second))

    def recovered():
        rows = {r["id"]: r for r in _db_rows(db, "SELECT * FROM runs")}
        if any(rows[i]["status"] != "interrupted" for i in running):
            return None
        retries = {}
        for i, old in running.items():
            again = [r for r in rows.values() if (r["node_id"], r["seed"], r["purpose"], r["attempt"])
                     == (old["node_id"], old["seed"], old["purpose"], old["attempt"] + 1)]
            if len(again) != 1:
                return None
            retries[i] = again[0]
        return retries

    retries = await wait_for(recovered, 20, "the interrupted runs to be marked and queued again",
                             alive=lambda: _exited(second))
    for i, new in retries.items():
        assert new["id"] > max(before["runs"])
        assert new["status"] in ("queued", "running", "done", "failed", "cancelled"), dict(new)
        assert running[i]["id"] != new["id"]
    for i in running:
        row = _db_rows(db, "SELECT error, ended_at FROM runs WHERE id = ?", (i,))[0]
        assert row["error"] and row["ended_at"] is not None

    # Nothing committed before the crash is lost.
    for table, ids in before.items():
        now = {r["id"] for r in _db_rows(db, f"SELECT id FROM {table}")}
        assert ids <= now, f"{table} lost rows {sorted(ids - now)[:10]}"

    events = _db_rows(db, "SELECT kind, message, data FROM events ORDER BY id")
    recovery = [e for e in events if e["kind"] == "recovery"]
    assert len(recovery) == 1 and str(len(running)) in recovery[0]["message"]
    assert sorted(eval_json(recovery[0]["data"])["runs"]) == sorted(running)
    lock = [e for e in events if e["kind"] == "lock"]
    assert len(lock) == 1 and f"pid {first.pid}" in lock[0]["message"] and "dead engine" in lock[0]["message"]

    # The research goes on under the new engine.
    done = len(_db_rows(db, "SELECT id FROM runs WHERE status = 'done'"))
    await wait_for(lambda: len(_db_rows(db, "SELECT id FROM runs WHERE status = 'done'")) > done, 20,
                   "the new engine to finish a run", alive=lambda: _exited(second))

    # A third engine on the live database refuses with one line naming the live one.
    third = subprocess.run([str(THREADLAB), "engine", "--db", str(db)], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert third.returncode != 0
    assert "Traceback" not in third.stderr + third.stdout
    errors = [ln for ln in only_lines(third.stderr) if ln.startswith("error:")]
    assert len(errors) == 1, third.stderr
    assert "already running" in errors[0] and f"pid {second.pid}" in errors[0], errors[0]
    assert second.popen.poll() is None and _lock_pid(db) == second.pid  # the live one is untouched

    # Stopped cleanly, it exits 0 and releases the lock.
    stop = threadlab("stop", "--db", db, "--timeout", "30")
    assert stop.returncode == 0 and f"pid {second.pid}" in stop.stdout, (stop.stdout, stop.stderr)
    assert second.popen.wait(timeout=30) == 0
    assert _lock_pid(db) is None
    assert "Traceback" not in second.stderr() + second.stdout()
    # No process of the session outlives it: neither engine's runs or their sandboxes.
    await wait_for(lambda: not _session_processes(tmp_path), 10,
                   f"the session's processes to end: {_session_processes(tmp_path)}")


def _session_processes(root: Path) -> list[str]:
    """Live processes (zombies aside) whose command line names a path under root."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(root) in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def eval_json(text: str):
    import json

    return json.loads(text)


async def test_run_detach_starts_an_engine_that_stop_ends(tmp_path, processes, bowl):
    db = tmp_path / "state.db"
    started = threadlab("run", bowl, "--detach", "--db", db, "--threads", "2", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    pid = _lock_pid(db)
    assert pid is not None and f"pid {pid}" in started.stdout
    processes.adopt(pid)
    await wait_for(lambda: _db_rows(db, "SELECT id FROM runs WHERE status = 'done'"), 30, "a run to finish")

    # A second `threadlab run` on the live database refuses, before it changes the session.
    session = _db_rows(db, "SELECT config FROM session")[0]["config"]
    again = threadlab("run", bowl, "--detach", "--db", db, "--threads", "3", cwd=tmp_path)
    assert_clean_error(again, "already running", f"pid {pid}")
    assert _db_rows(db, "SELECT config FROM session")[0]["config"] == session
    assert _lock_pid(db) == pid
    stop = threadlab("stop", "--db", db, "--timeout", "30", cwd=tmp_path)
    assert stop.returncode == 0 and f"engine (pid {pid}) stopped" in stop.stdout, (stop.stdout, stop.stderr)
    assert _lock_pid(db) is None
    log = (tmp_path / "state.run" / "engine.log").read_text()
    assert "Traceback" not in log and "engine stopped: stopped by command" in log
    assert not _db_rows(db, "SELECT id FROM runs WHERE status = 'running'")
    assert not _db_rows(db, "SELECT id FROM commands WHERE status = 'pending'")
    await wait_for(lambda: _gone(pid), 10, f"the engine pid {pid} to exit after `threadlab stop`")


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (the detached engine's parent is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"
