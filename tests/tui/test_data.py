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
    # 12 runs in the 598 s since the first one started: a rate, not the hour's count
    assert s.runs_per_hour == pytest.approx(12 * 3600 / 598)
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


# ---- a load reads what changed, not the whole session ---------------------------------------


async def test_a_load_rereads_only_the_changed_nodes_and_keeps_the_other_threads_as_they_were(static_db):
    async with StateSource(static_db, clock=clock, watch=False) as source:
        before = await source.load()
        async with await Store.open(static_db, writer=True) as writer:
            await writer.update_node(3, metric=0.49)  # thread t1
            new = await writer.add_node(task_id=1, thread_id=2, parent_id=5, commit_sha=None, title="new in t2",
                                        hypothesis="", origin={}, status=NodeStatus.QUEUED)
        after = await source.load()
        assert source._nodes.full_reads == 1  # the first load read everything, the second only the changes
    assert after.node(3).metric == 0.49 and after.thread(1).nodes != before.thread(1).nodes
    assert [n.id for n in after.thread(2).nodes] == [5, new, 7]  # lineage order: #new is a child of #5
    assert after.thread(2).node_count == 3 and after.thread(2).count("queued") == 1
    # the threads nothing happened to keep the very same nodes (the tree skips them)
    assert after.thread(3).nodes is before.thread(3).nodes and after.thread(4).nodes is before.thread(4).nodes
    # the flags survive: #4 is still t1's head and the best node
    assert [n.id for n in after.thread(1).nodes if n.is_head and n.is_best] == [4]


async def test_a_new_head_and_a_new_best_move_their_flags_without_a_node_write(static_db):
    async with StateSource(static_db, clock=clock, watch=False) as source:
        await source.load()
        async with await Store.open(static_db, writer=True) as writer:
            await writer.update_thread(1, head_node_id=6)  # only the thread row changes
        snap = await source.load()
        assert [n.id for n in snap.thread(1).nodes if n.is_head] == [6]
        async with await Store.open(static_db, writer=True) as writer:
            await writer.update_node(6, status=NodeStatus.ACCEPTED, metric=0.05)
        snap = await source.load()
    assert [n.id for n in snap.thread(1).nodes if n.is_best] == [6] and snap.tasks[0].best_node_id == 6


async def test_new_nodes_beyond_the_limit_push_the_oldest_out_without_a_full_read(static_db):
    async with StateSource(static_db, clock=clock, watch=False, node_limit=3) as source:
        first = await source.load()
        assert [n.id for n in first.thread(1).nodes] == [4, 6, 9] and first.thread(1).nodes_hidden == 2
        async with await Store.open(static_db, writer=True) as writer:
            new = [await writer.add_node(task_id=1, thread_id=1, parent_id=9, commit_sha=None, title=f"x{i}",
                                         hypothesis="", origin={}, status=NodeStatus.QUEUED) for i in range(2)]
            await writer.update_node(2, metric=0.31)  # an older node, not shown: only the counts
        snap = await source.load()
        assert source._nodes.full_reads == 1
    t1 = snap.thread(1)
    assert [n.id for n in t1.nodes] == [9, *new] and t1.nodes_hidden == 4 and t1.node_count == 7


async def test_a_write_stamped_before_the_newest_seen_is_still_read(static_db):
    """A write whose updated_at was taken before another's but committed after it."""
    async with StateSource(static_db, clock=clock, watch=False) as source:
        await source.load()
        newest = source._nodes.mark[1]
        async with await Store.open(static_db, writer=True) as writer, writer.write() as db:
            await db.execute("UPDATE nodes SET title = 'late', updated_at = ? WHERE id = 3", (newest - 1.0,))
        assert (await source.load()).node(3).title == "late"
        assert source._nodes.full_reads == 1


async def test_each_thread_is_read_again_in_turn_and_all_when_a_node_moves(static_db):
    async with StateSource(static_db, clock=clock, watch=False) as source:
        await source.load()
        # a write stamped far in the past (a clock stepped back): the deltas miss it, t1's turn sees it
        async with await Store.open(static_db, writer=True) as writer, writer.write() as db:
            await db.execute("UPDATE nodes SET title = 'stale', updated_at = 0 WHERE id = 3")
        source._nodes._turn = 1  # t2, t3 and t4 are read in full first, then t1
        titles = [(await source.load()).node(3).title for _ in range(4)]
        assert titles == ["Sign descent"] * 3 + ["stale"] and source._nodes.full_reads == 1
        async with await Store.open(static_db, writer=True) as writer:
            await writer.update_node(3, thread_id=2)
        snap = await source.load()
        assert source._nodes.full_reads == 2
    assert 3 in [n.id for n in snap.thread(2).nodes] and 3 not in [n.id for n in snap.thread(1).nodes]
    assert snap.thread(1).node_count == 4 and snap.thread(2).node_count == 3


async def test_a_replaced_database_is_read_in_full(static_db, tmp_path):
    other = await build_static_db(tmp_path / "other")
    async with await Store.open(other, writer=True) as writer, writer.write() as db:
        # the same updated_at as in the first file: only a full read sees the new title
        await db.execute("UPDATE nodes SET title = 'in the other file' WHERE id = 3")
    async with StateSource(static_db, clock=clock, watch=False) as source:
        await source.load()
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{other}{suffix}").exists():
                shutil.copy(f"{other}{suffix}", f"{static_db}.new{suffix}")
        os.replace(f"{static_db}.new", static_db)
        for suffix in ("-wal", "-shm"):
            if Path(f"{static_db}.new{suffix}").exists():
                os.replace(f"{static_db}.new{suffix}", f"{static_db}{suffix}")
        snap = await source.load()
    assert source.opens == 2 and snap.node(3).title == "in the other file"


async def test_the_status_bar_spend_counts_proposals_and_failed_proposals(static_db):
    async with await Store.open(static_db, writer=True) as store:
        async with store.write() as w:
            await w.execute("UPDATE nodes SET origin = json_set(origin, '$.cost_usd', 0.25) WHERE id IN (2, 3)")
        await store.add_event("warning", "proposer", "thread t2: a refused proposal", cost_usd=0.125)
    async with StateSource(static_db, clock=clock, watch=False) as source:
        snap = await source.load(Selection())
    assert snap.status.spend_usd == pytest.approx(0.625)
