"""engine.store.Store: schema versions, WAL, the engine lock, commands, write transactions."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import EngineLocked, SchemaTooNew, StoreError
from engine.schema import SCHEMA_VERSION
from engine.store import LOCK_STALE_S, Store

from tests.conftest import assert_clean_error, threadlab

TABLES = {"engine_lock", "session", "tasks", "threads", "nodes", "runs", "samples", "verdicts", "alerts",
          "lessons", "commands", "events"}


def _fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


@pytest.fixture
def future_db(tmp_path: Path) -> Path:
    db = tmp_path / "state.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE from_the_future (x INTEGER)")
    con.execute("INSERT INTO from_the_future VALUES (42)")
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    return db


# ---- schema versions --------------------------------------------------------------------


async def test_a_database_newer_than_the_code_is_refused_and_left_untouched(future_db):
    before = _fingerprint(future_db.parent)
    for writer in (True, False):
        with pytest.raises(SchemaTooNew) as err:
            await Store.open(future_db, writer=writer)
        assert "99" in str(err.value) and str(SCHEMA_VERSION) in str(err.value)
        assert err.value.hint
    assert _fingerprint(future_db.parent) == before  # no byte, no mtime, no -wal or -shm file
    con = sqlite3.connect(future_db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 99
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_status_on_a_newer_database_is_one_error_line_and_a_hint(future_db):
    before = _fingerprint(future_db.parent)
    result = threadlab("status", "--db", future_db)
    assert_clean_error(result, "schema version 99")
    assert _fingerprint(future_db.parent) == before


async def test_migrations_bring_an_empty_database_to_the_current_version_in_wal_mode(tmp_path):
    db = tmp_path / "state.db"
    store = await Store.open(db, writer=True, create=True)
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.scalar("PRAGMA journal_mode") == "wal"
        assert await store.scalar("PRAGMA synchronous") == 1  # NORMAL
        tables = {r[0] for r in await store.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert TABLES <= tables
    finally:
        await store.close()
    con = sqlite3.connect(db)  # WAL is a property of the file: another connection sees it
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    again = await Store.open(db, writer=True)  # opening it again migrates nothing
    assert await again.schema_version() == SCHEMA_VERSION
    await again.close()


async def test_a_viewer_never_creates_or_migrates_a_database(tmp_path):
    missing = tmp_path / "nothing.db"
    with pytest.raises(StoreError) as err:
        await Store.open(missing)
    assert err.value.hint and not missing.exists()

    old = tmp_path / "old.db"
    sqlite3.connect(old).close()  # user_version 0
    with pytest.raises(StoreError) as err:
        await Store.open(old)
    assert "threadlab engine" in err.value.hint
    con = sqlite3.connect(old)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()


def test_status_without_a_database_is_one_error_line_and_creates_nothing(tmp_path):
    db = tmp_path / "none.db"
    assert_clean_error(threadlab("status", "--db", db), "no database")
    assert not db.exists()


# ---- the engine lock ----------------------------------------------------------------------


async def _set_lock(store: Store, pid: int, host: str, heartbeat_at: float) -> None:
    async with store.write() as db:
        await db.execute(
            "INSERT OR REPLACE INTO engine_lock (id, pid, host, started_at, heartbeat_at) VALUES (1, ?, ?, ?, ?)",
            (pid, host, heartbeat_at, heartbeat_at),
        )


@pytest.fixture
async def stores(tmp_path):
    """Two writer connections to one database, as two engines would have."""
    db = tmp_path / "state.db"
    a = await Store.open(db, writer=True, create=True)
    b = await Store.open(db, writer=True)
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture
def other_process():
    """A live process of this host that is not us: the pid of 'another engine'."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    proc.kill()
    proc.wait()


async def test_a_live_engines_lock_is_refused_naming_its_pid_and_host(stores, other_process):
    a, b = stores
    await _set_lock(a, other_process.pid, socket.gethostname(), time.time())
    with pytest.raises(EngineLocked) as err:
        await b.acquire_lock()
    assert f"pid {other_process.pid}" in str(err.value) and socket.gethostname() in str(err.value)
    assert "threadlab stop" in err.value.hint
    lock = await b.lock()
    assert lock.pid == other_process.pid  # untouched
    assert (await b.engine_alive()).pid == other_process.pid


async def test_a_live_engine_on_another_host_is_refused_while_its_heartbeat_is_fresh(stores):
    a, b = stores
    await _set_lock(a, 12345, "some-other-host", time.time())
    with pytest.raises(EngineLocked) as err:
        await b.acquire_lock()
    assert "pid 12345 on some-other-host" in str(err.value)


async def test_a_lock_with_an_old_heartbeat_is_taken_over(stores, other_process):
    a, b = stores
    old = time.time() - LOCK_STALE_S - 5
    await _set_lock(a, other_process.pid, "some-other-host", old)
    assert await b.engine_alive() is None
    taken = await b.acquire_lock()
    assert taken is not None and (taken.pid, taken.host) == (other_process.pid, "some-other-host")
    lock = await a.lock()
    assert (lock.pid, lock.host) == (os.getpid(), socket.gethostname()) and lock.heartbeat_at > old


async def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(stores):
    a, b = stores
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid is free
    await _set_lock(a, dead.pid, socket.gethostname(), time.time())
    assert await b.engine_alive() is None
    taken = await b.acquire_lock()
    assert taken is not None and taken.pid == dead.pid
    assert (await a.lock()).pid == os.getpid()


async def test_the_lock_of_a_killed_but_unreaped_engine_is_taken_over_at_once(stores):
    """A killed engine whose parent is gone stays a zombie where PID 1 does not reap (many
    containers): its pid answers kill(pid, 0), but no engine is there any more."""
    a, b = stores
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        zombie.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not die"
            await asyncio.sleep(0.02)
        await _set_lock(a, zombie.pid, socket.gethostname(), time.time())
        assert await b.engine_alive() is None
        taken = await b.acquire_lock()
        assert taken is not None and taken.pid == zombie.pid
    finally:
        zombie.wait()


async def test_heartbeat_and_release_touch_only_our_own_lock(stores, other_process):
    a, b = stores
    assert await a.acquire_lock() is None
    first = (await a.lock()).heartbeat_at
    await a.heartbeat(1.5)
    assert (await a.lock()).heartbeat_at >= first
    await a.release_lock()
    assert await a.lock() is None
    # Another engine's lock survives our release.
    await _set_lock(a, other_process.pid, socket.gethostname(), time.time())
    await b.release_lock()
    assert (await a.lock()).pid == other_process.pid


# ---- commands -------------------------------------------------------------------------------


async def test_commands_round_trip_between_a_viewer_and_the_engine(tmp_path):
    db = tmp_path / "state.db"
    engine = await Store.open(db, writer=True, create=True)
    viewer = await Store.open(db)
    try:
        cid = await viewer.add_command("merge", {"node": 3, "other": 5}, source="tui")
        second = await viewer.add_command("pin", {"thread": 2})
        pending = await engine.pending_commands()
        assert [(c.id, c.kind, c.args, c.source, c.status) for c in pending] == [
            (cid, "merge", {"node": 3, "other": 5}, "tui", "pending"), (second, "pin", {"thread": 2}, "cli", "pending")]
        await engine.finish_command(cid, True, "merge node #9 queued")
        await engine.finish_command(second, False, "no thread 2")
        done, failed = await viewer.command(cid), await viewer.command(second)
        assert (done.status, done.result) == ("done", "merge node #9 queued") and done.done_at >= done.created_at
        assert (failed.status, failed.result) == ("failed", "no thread 2")
        assert await engine.pending_commands() == []
        with pytest.raises(ValueError):
            await viewer.add_command("explode", {})
        assert await viewer.scalar("SELECT COUNT(*) FROM commands") == 2
    finally:
        await viewer.close()
        await engine.close()


async def test_a_viewer_sees_the_engines_commits_through_data_version(tmp_path):
    db = tmp_path / "state.db"
    engine = await Store.open(db, writer=True, create=True)
    viewer = await Store.open(db)
    try:
        before = await viewer.data_version()
        assert await viewer.data_version() == before  # nothing changed
        await engine.add_event("info", "test", "hello")
        assert await viewer.data_version() != before
        assert [e.message for e in await viewer.events()] == ["hello"]
    finally:
        await viewer.close()
        await engine.close()


# ---- write transactions --------------------------------------------------------------------


SLOW_READ = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT COUNT(*) FROM c"


async def test_a_write_cancelled_at_begin_leaves_no_transaction_open(tmp_path):
    store = await Store.open(tmp_path / "state.db", writer=True, create=True)
    try:
        # A read of the engine's own connection is under way (reads take no write lock), so
        # the write's BEGIN waits behind it in the connection's queue when it is cancelled.
        read = asyncio.create_task(store.scalar(SLOW_READ))
        await asyncio.sleep(0)
        task = asyncio.create_task(store.add_event("info", "test", "cancelled"))
        await asyncio.sleep(0)  # the task now awaits its BEGIN IMMEDIATE
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.add_event("info", "test", "after")  # must not fail "within a transaction"
        assert await read == 2000000
        assert [e.message for e in await store.events()] == ["after"]
        assert not store._db.in_transaction
        other = sqlite3.connect(tmp_path / "state.db", timeout=5)  # nobody holds the write lock
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        other.close()
    finally:
        await store.close()


async def test_a_write_cancelled_at_begin_with_an_idle_connection_leaves_no_transaction_open(tmp_path):
    store = await Store.open(tmp_path / "state.db", writer=True, create=True)
    try:
        task = asyncio.create_task(store.add_event("info", "test", "cancelled"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the idle case: the worker has run the orphaned BEGIN before the next write comes (a
        # read queued behind it returns only after it)
        assert await store.scalar("SELECT 1") == 1
        await store.add_event("info", "test", "after")
        assert [e.message for e in await store.events()] == ["after"]
    finally:
        await store.close()


async def test_an_engine_write_during_its_own_read_survives_a_viewers_command(tmp_path):
    db = tmp_path / "state.db"
    engine = await Store.open(db, writer=True, create=True)
    viewer = await Store.open(db)
    try:
        for i in range(5):
            await engine.add_event("info", "test", f"e{i}")
        # On the engine's connection: a read is under way (its rows not fetched yet), a slow
        # read keeps the connection busy, and a write waits behind them...
        reading = asyncio.create_task(engine.rows("SELECT * FROM events"))
        slow = asyncio.create_task(engine.scalar(SLOW_READ))
        writing = asyncio.create_task(engine.add_event("info", "test", "engine write"))
        await asyncio.sleep(0)
        # ...when a viewer's Command commits, as the TUI and CLI do at any time.
        await viewer.add_command("pin", {"thread": 1})
        rows, _, wrote = await asyncio.gather(reading, slow, writing, return_exceptions=True)
        assert not isinstance(wrote, Exception), f"the engine's write failed: {wrote!r}"
        assert not isinstance(rows, Exception) and len(rows) == 5
        assert [e.message for e in await viewer.events()][-1] == "engine write"
    finally:
        await viewer.close()
        await engine.close()


async def test_a_failing_write_rolls_back_everything_it_did(tmp_path):
    store = await Store.open(tmp_path / "state.db", writer=True, create=True)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            async with store.write() as db:
                await db.execute("INSERT INTO events (t, level, kind, message) VALUES (1, 'info', 'x', 'kept?')")
                await db.execute("INSERT INTO events (t, level, kind, message) VALUES (1, NULL, 'x', 'bad')")
        assert await store.events() == []
        await store.add_event("info", "test", "fine")
        assert len(await store.events()) == 1
    finally:
        await store.close()


async def test_the_slots_are_those_of_the_engine_that_started_last(tmp_path):
    async with await Store.open(tmp_path / "state.db", writer=True, create=True) as store:
        assert await store.engine_slots() is None
        await store.add_event("info", "engine", "engine started ... with 2 slot(s): cpu0, cpu1", slots=["cpu0", "cpu1"])
        await store.add_event("info", "engine", "engine stopped: test")
        await store.add_event("info", "engine", "engine started ... with 1 slot(s): gpu0", slots=["gpu0"])
        await store.add_event("info", "engine", "engine stopped: test")
        assert await store.engine_slots() == ["gpu0"]
