"""The data layer: Snapshots from a reader Store, change detection, a missing or replaced
database, bounded loading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

from engine.models import NodeStatus
from engine.store import Store
from tests.tui.static_db import NOW, build_static_db, clock
from tui.data import NodeView, Selection, StateSource, lineage_order, tail_text
from tui.keys import BY_ID, KeymapError, load_keymap


async def test_a_snapshot_holds_threads_in_lineage_order_with_counts_best_and_status(static_db):
    async with StateSource(static_db, clock=clock, watch=False) as source:
        snap = await source.load(Selection(node_id=6))
    assert snap.ready and snap.message == ""
    assert [t.name for t in snap.threads] == ["t1", "t2", "t3", "t4"]
    t1 = snap.threads[0]
    # #3 and #4 are both children of #2; #6 and #9 children of #4: depth first, by id
    assert [n.id for n in t1.nodes] == [2, 3, 4, 6, 9]
    assert (t1.pinned, t1.status, t1.head_node_id, t1.head_metric) == (True, "running", 4, 0.21)
    assert (t1.count("accepted"), t1.count("rejected"), t1.node_count, t1.nodes_hidden) == (2, 1, 5, 0)
    assert [n.id for n in t1.nodes if n.is_best] == [4] and [n.id for n in t1.nodes if n.is_head] == [4]
    assert snap.tasks[0].best_node_id == 4 and snap.tasks[0].best_metric == 0.21
    assert [b.id for b in snap.baselines] == [1]
    assert snap.node(7).merged and not snap.node(7).has_code
    s = snap.status
    assert not s.engine.alive and not s.engine.stale_lock  # no engine ever held the lock
    assert (s.busy_slots, s.total_slots, s.queued_runs) == (2, 2, 0)
    assert s.runs_last_hour == 12 and s.spend_usd == 0.0 and s.unacked_alerts == 1
    assert [b.value for b in s.best] == [0.21]
    assert [a.id for a in snap.alerts] == [2, 1]  # newest first
    assert [e.kind for e in snap.events] == ["engine", "accepted", "accepted", "thread"]

    d = snap.detail
    assert d is not None and d.node.id == 6 and d.thread_name == "t1" and d.parent_metric == 0.21
    assert [r.status for r in d.runs] == ["done", "done", "running"]
    assert d.log.run_id == d.runs[-1].id and "step 4 loss 0.2000" in d.log.text  # the running run
    assert d.run_curve.values[0] == 1.0 and len(d.run_curve.values) == 30
    assert d.head_curve.values == (0.5, 0.3, 0.21)  # the start, then the accepted nodes
    assert "+        g = grad([xi - LR * 0.9 * vi" in d.diff and d.diff_note == "against its parent #4"


async def test_the_detail_follows_the_chosen_run_and_explains_missing_code(static_db):
    async with StateSource(static_db, clock=clock, watch=False) as source:
        snap = await source.load(Selection(node_id=6, run_id=11))
        assert snap.detail.log.run_id == 11 and snap.detail.run_curve.label == "run 11 loss"
        failed = (await source.load(Selection(node_id=7))).detail
        assert failed.diff == "" and "did not apply" in failed.diff_note
        base = (await source.load(Selection(node_id=1))).detail
        assert base.diff == "" and "baseline" in base.diff_note and base.thread_name is None
        gone = await source.load(Selection(node_id=999))
        assert gone.ready and gone.detail is None


async def test_a_change_by_another_connection_is_seen_within_a_second(static_db):
    async with StateSource(static_db, clock=clock, watch=False) as source:
        await source.load()
        assert not await source.changed()
        writer = await Store.open(static_db, writer=True)
        try:
            await writer.update_thread(2, status="running", note="resumed")
            start = time.monotonic()
            assert await source.wait_for_change(timeout=1.0)
            assert time.monotonic() - start < 1.0
            snap = await source.load()
            assert snap.thread(2).status == "running"
            # nothing new: the wait times out
            assert not await source.wait_for_change(timeout=0.3)
        finally:
            await writer.close()


async def test_the_file_watcher_wakes_the_poller_early(static_db):
    source = StateSource(static_db, clock=clock, watch=True, poll_s=5.0)  # polling alone would take 5 s
    async with source:
        await source.load()
        await asyncio.sleep(0.3)  # let the watcher start (a test may sleep; it does not synchronise on it)
        writer = await Store.open(static_db, writer=True)
        try:
            source._last_load = 0.0  # the throttle would otherwise hold the first change back
            waiting = asyncio.create_task(source.wait_for_change(timeout=4.0))
            await asyncio.sleep(0.05)
            await writer.update_thread(3, note="touched")
            start = time.monotonic()
            assert await waiting
            assert time.monotonic() - start < 2.0
        finally:
            await writer.close()


async def test_it_waits_for_a_missing_database_then_opens_it(tmp_path):
    db = tmp_path / "later" / "state.db"
    async with StateSource(db, clock=clock, watch=False) as source:
        snap = await source.load()
        assert not snap.ready and "there is no database yet" in snap.message and "threadlab run" in snap.message
        await build_static_db(tmp_path / "later")
        assert await source.wait_for_change(timeout=2.0)
        snap = await source.load()
        assert snap.ready and len(snap.threads) == 4


async def test_a_replaced_database_file_is_reopened(static_db, tmp_path):
    other = await build_static_db(tmp_path / "other")
    writer = await Store.open(other, writer=True)
    await writer.update_thread(1, name="renamed")
    await writer.close()
    async with StateSource(static_db, clock=clock, watch=False) as source:
        assert (await source.load()).threads[0].name == "t1"
        opens = source.opens
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{other}{suffix}").exists():
                shutil.copy(f"{other}{suffix}", f"{static_db}.new{suffix}")
        os.replace(f"{static_db}.new", static_db)  # a new inode at the same path
        for suffix in ("-wal", "-shm"):
            if Path(f"{static_db}.new{suffix}").exists():
                os.replace(f"{static_db}.new{suffix}", f"{static_db}{suffix}")
        assert await source.wait_for_change(timeout=2.0)
        snap = await source.load()
        assert source.opens == opens + 1
        assert snap.ready and snap.threads[0].name == "renamed"


async def test_a_removed_database_is_said_plainly_and_the_reader_waits(static_db):
    async with StateSource(static_db, clock=clock, watch=False) as source:
        await source.load()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{static_db}{suffix}").unlink(missing_ok=True)
        assert await source.wait_for_change(timeout=2.0)
        snap = await source.load()
        assert not snap.ready and "was removed; waiting for a new database" in snap.message
        assert source.store is None


async def test_only_the_newest_nodes_of_a_thread_are_loaded(static_db):
    writer = await Store.open(static_db, writer=True)
    try:
        for i in range(30):
            await writer.add_node(task_id=1, thread_id=3, parent_id=8, commit_sha=None, title=f"extra {i}",
                                  hypothesis="", origin={}, status=NodeStatus.FAILED)
    finally:
        await writer.close()
    async with StateSource(static_db, clock=clock, watch=False, node_limit=10) as source:
        snap = await source.load()
    t3 = snap.thread(3)
    assert len(t3.nodes) == 10 and t3.nodes_hidden == 21 and t3.node_count == 31
    assert t3.nodes[-1].title == "extra 29"


async def test_an_engine_lock_shows_liveness_and_heartbeat_age(static_db):
    writer = await Store.open(static_db, writer=True)
    try:
        await writer.acquire_lock()
        async with StateSource(static_db, clock=lambda: time.time() + 3, watch=False) as source:
            s = (await source.load()).status
            assert s.engine.alive and s.engine.pid == os.getpid() and 2.5 < s.engine.heartbeat_age < 10
            async with writer.write() as w:  # a heartbeat a minute old: a dead engine
                await w.execute("UPDATE engine_lock SET heartbeat_at = heartbeat_at - 60")
            s = (await source.load()).status
            assert not s.engine.alive and s.engine.stale_lock and s.engine.heartbeat_age > 60
    finally:
        await writer.close()


def test_lineage_order_puts_every_node_after_its_parent():
    def n(i, parent):
        return NodeView(i, 1, 1, parent, None, True, f"n{i}", "accepted", None, None, 0)

    order = lineage_order([n(9, 4), n(2, 1), n(3, 2), n(4, 2), n(6, 4), n(12, 3)])
    assert [x.id for x in order] == [2, 3, 12, 4, 6, 9]


def test_tail_text_reads_only_the_end(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)))
    text = tail_text(path, max_bytes=4096, max_lines=10)
    assert text.splitlines() == [f"line {i}" for i in range(99_990, 100_000)]
    assert tail_text(tmp_path / "missing.log") is None


def test_a_keymap_file_is_read_and_its_mistakes_named(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text('[keys]\nprune = "D"\ncursor_down = "j, down, ctrl+n"\nnope = "z"\nfork = ""\n')
    keymap, problems = load_keymap(path)
    assert keymap == {"prune": "D", "cursor_down": "j,down,ctrl+n"}
    assert any("nope" in p for p in problems) and any(p.startswith("fork") for p in problems)
    path.write_text("[keys\n")
    with pytest.raises(KeymapError, match="not valid TOML"):
        load_keymap(path)
    with pytest.raises(KeymapError, match="cannot read"):
        load_keymap(tmp_path / "missing.toml")
    assert set(BY_ID) >= {"fork", "merge", "pin", "prune", "pause", "filter", "help", "palette", "alerts", "quit"}


def test_the_frozen_clock_is_what_the_static_database_expects():
    assert clock() == NOW


async def test_a_cancelled_load_leaves_no_old_snapshot_behind(static_db):
    """A read cut off by cancellation must not leave its cursor open: the reader would sit
    on an old snapshot, and its next Command write would fail with SQLITE_BUSY_SNAPSHOT
    ("database is locked") once another connection has committed."""
    async with await Store.open(static_db, writer=True) as writer:
        async with writer.write() as db:  # enough rows that a load takes a while
            await db.executemany("INSERT INTO events (t, level, kind, message) VALUES (0, 'info', 'k', 'm')",
                                 [()] * 3000)
    async with StateSource(static_db, clock=clock, watch=False) as source:
        await source.load()
        for k in range(30):
            task = asyncio.create_task(source.load(Selection(node_id=6)))
            await asyncio.sleep((k % 10) * 0.0007)  # cut it off at different points
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with await Store.open(static_db, writer=True) as writer:
                await writer.update_thread(4, note=f"note {k}")
            await source.send("pin", {"thread": 4})  # a BEGIN IMMEDIATE right after the cut
            assert (await source.load()).thread(4).note == f"note {k}"


def test_the_tui_reads_the_engine_only_through_the_store_and_its_records():
    import ast

    allowed = {"engine.store", "engine.records", "engine.models", "engine.errors", "engine.workspace"}
    root = Path(__file__).resolve().parents[2] / "tui"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.split(".")[0] == "engine":
                    assert name in allowed, f"{path.name} imports {name}"
