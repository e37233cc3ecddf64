"""The installed program in a real terminal: `threadlab run` inside tmux, driven by keys,
read back with capture-pane; the engine outlives the viewer and carried out its commands."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.conftest import THREADLAB, make_task, slow_playbook


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-t", session, "-p")


def wait_screen(session: str, *texts: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        shown = screen(session)
        if all(t in shown for t in texts):
            return shown
        assert time.monotonic() < deadline, f"the screen never showed {texts}:\n{shown}"
        time.sleep(0.1)  # polling the terminal, not synchronising with the program


def wait_db(db: Path, sql: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            value = con.execute(sql).fetchone()
        except sqlite3.OperationalError:
            value = None
        finally:
            con.close()
        if value and value[0]:
            return value[0]
        assert time.monotonic() < deadline, f"state.db never answered {sql!r}"
        time.sleep(0.1)


def keys(session: str, *pressed: str) -> None:
    for key in pressed:
        tmux("send-keys", "-t", session, key)
        time.sleep(0.15)  # a person's pace: each key is drawn before the next


def test_run_navigate_pin_prune_and_quit_in_tmux(tmp_path):
    # Candidates sleep a second or two, so the threads have runs going when they are pruned.
    task = make_task(tmp_path / "bowl", sleep=0, playbook=slow_playbook(1.0, 2.0))
    db = tmp_path / "state.db"
    session = f"threadlab-e2e-{os.getpid()}"
    command = f"cd {tmp_path} && TERM=screen-256color {THREADLAB} run {task} --threads 2 --db {db}; sleep 60"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "36", command)
    try:
        wait_screen(session, "engine up", "t1", "t2", timeout=60)
        wait_db(db, "SELECT COUNT(*) FROM nodes WHERE thread_id = 1 AND status != 'queued'")

        # Navigate to the first thread and pin it.
        keys(session, "g", "j")
        wait_screen(session, "t1")
        keys(session, "p")
        assert wait_db(db, "SELECT pinned FROM threads WHERE id = 1") == 1
        wait_screen(session, "pin")

        # Open a node of it and its diff against its parent.
        keys(session, "l", "j", "Enter", "2")
        wait_screen(session, "solution.py")

        # Prune the second thread: the confirmation comes first, with Cancel focused.
        keys(session, "/")  # filter the tree down to t2, then select its line
        keys(session, "t2", "Enter", "g", "j")
        keys(session, "d")
        shown = wait_screen(session, "Cancel", "Prune")
        assert "run" in shown  # it says how many runs it will kill
        keys(session, "Right", "Enter")
        assert wait_db(db, "SELECT status = 'pruned' FROM threads WHERE name = 't2'") == 1

        # Quit the viewer: it says the engine keeps running, and it does.
        keys(session, "Escape", "q")
        wait_screen(session, "keeps running")
        lock = wait_db(db, "SELECT pid FROM engine_lock")
        os.kill(lock, 0)
        heartbeat = wait_db(db, "SELECT heartbeat_at FROM engine_lock")
        time.sleep(2.5)
        assert wait_db(db, "SELECT heartbeat_at FROM engine_lock") > heartbeat, "the engine stopped with the viewer"
        assert wait_db(db, "SELECT pinned FROM threads WHERE id = 1") == 1
    finally:
        subprocess.run([str(THREADLAB), "stop", "--db", str(db)], capture_output=True, timeout=90)
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
