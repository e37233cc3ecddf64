"""Commands (pin, pause, resume, prune, fork, merge, stop) as the TUI and CLI send them:
Command rows written by a second connection, carried out by a running Engine."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from engine.config import SessionConfig
from engine.executor import LocalExecutor, detect_slots
from engine.loop import Engine
from engine.models import Edit, Proposal
from engine.store import Store
from engine.workspace import Workspace

from tests.conftest import make_task, slow_playbook, wait_for

FINISHED = "('done', 'failed', 'timeout')"


async def _thread_rows(s, thread_id):
    rows = await s.rows("SELECT * FROM threads WHERE id = ?", (thread_id,))
    return rows[0] if rows else None


async def _finished_runs_of_thread(s, thread_id) -> int:
    return await s.scalar(
        f"SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id WHERE n.thread_id = ? AND r.status IN {FINISHED}",
        (thread_id,),
    )


# ---- pin --------------------------------------------------------------------------------


async def test_a_pinned_thread_is_never_retired_while_an_unpinned_one_is(bowl, start_engine):
    async def pin_first_thread(reader: Store) -> None:
        # Written before the engine starts: carried out before any node is decided.
        await reader.add_command("pin", {"thread": 1})

    s = await start_engine(bowl, threads=2, patience=1, before=pin_first_thread)

    async def pinned_outlived_patience():
        t1, t2 = await _thread_rows(s, 1), await _thread_rows(s, 2)
        return t1 and t2 and t1["stale_attempts"] >= 2 and t2["status"] == "done"

    await s.wait(pinned_outlived_patience, 30, "thread 1 to pass its patience and thread 2 to retire")
    pin = await s.reader.command(1)
    assert (pin.status, pin.result) == ("done", "thread t1 pinned")
    t1, t2 = await _thread_rows(s, 1), await _thread_rows(s, 2)
    assert t1["pinned"] == 1 and t1["status"] == "running"
    assert t2["pinned"] == 0 and t2["status"] == "done" and "retired" in t2["note"]
    # The retired thread was replaced: two threads run again.
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM threads WHERE status = 'running' AND id > 2"), 10,
                 "a thread to replace the retired one")

    # Unpinned, it retires at its next decision without improvement.
    cmd = await s.send("unpin", thread=1)
    assert (cmd.status, cmd.result) == ("done", "thread t1 unpinned")
    await s.wait(lambda: s.scalar("SELECT status = 'done' FROM threads WHERE id = 1"), 30, "thread 1 to retire")


# ---- pause / resume ---------------------------------------------------------------------


async def test_pause_stops_a_thread_until_resume(bowl, start_engine, script_proposals):
    proposer = script_proposals([])
    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM nodes WHERE thread_id = 1 AND status IN "
                                  "('accepted', 'rejected', 'failed', 'flagged')"),
                 30, "thread 1 to decide a node")

    # Pause while the planner is held inside a proposal of thread 2, i.e. past thread 1 in
    # its pass, so no proposal of thread 1 is under way when the pause is carried out (that
    # case is test_a_proposal_under_way_when_its_thread_is_paused_is_not_added).
    proposer.hold(2)
    await s.wait(lambda: 2 in proposer.waiting, 20, "the planner to reach a proposal of thread 2")
    pause = await s.send("pause", thread=1)
    proposer.release(2)
    assert (pause.status, pause.result) == ("done", "thread t1 paused")
    assert (await _thread_rows(s, 1))["status"] == "paused"

    # A window measured by the other thread's progress: 6 more of its runs finish.
    before = await _finished_runs_of_thread(s, 2)
    await s.wait(lambda: _more(s, 2, before + 6), 30, "thread 2 to finish 6 more runs")
    late_nodes = await s.rows("SELECT id, title, created_at FROM nodes WHERE thread_id = 1 AND created_at > ?",
                              (pause.done_at,))
    late_runs = await s.rows(
        "SELECT r.id, r.node_id, r.purpose, r.started_at FROM runs r JOIN nodes n ON n.id = r.node_id "
        "WHERE n.thread_id = 1 AND r.started_at > ?",
        (pause.done_at,),
    )
    assert [dict(r) for r in late_nodes] == [], "a paused thread proposed a node after the pause was done"
    assert [dict(r) for r in late_runs] == [], "a paused thread started a run after the pause was done"
    assert (await _thread_rows(s, 1))["status"] == "paused"
    assert not any(tid == 1 and start > pause.done_at for tid, start, _ in proposer.calls)

    again = await s.send("pause", thread=1)
    assert again.status == "failed" and "paused, not running" in again.result

    resume = await s.send("resume", thread=1)
    assert (resume.status, resume.result) == ("done", "thread t1 resumed")
    await s.wait(
        lambda: s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id "
                         "WHERE n.thread_id = 1 AND r.started_at > ?", (resume.done_at,)),
        20, "a run of the resumed thread to start",
    )
    await s.wait(
        lambda: s.scalar("SELECT COUNT(*) FROM nodes WHERE thread_id = 1 AND created_at > ?", (resume.done_at,)),
        20, "the resumed thread to propose a new node",
    )
    twice = await s.send("resume", thread=1)
    assert twice.status == "failed" and "running, not paused" in twice.result


async def test_a_proposal_under_way_when_its_thread_is_paused_is_not_added(bowl, start_engine, script_proposals):
    proposer = script_proposals([])
    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT status = 'baseline' FROM nodes WHERE id = 1"), 20, "the baseline")

    proposer.hold(1)
    await s.wait(lambda: 1 in proposer.waiting, 20, "the planner to start a proposal of thread 1")
    pause = await s.send("pause", thread=1)
    assert pause.status == "done"
    released = time.time()
    proposer.release(1)
    # The planner is sequential: once it proposes for thread 2, thread 1's proposal is handled.
    await s.wait(lambda: any(tid == 2 and start > released for tid, start, _ in proposer.calls), 20,
                 "the planner to move on to thread 2")
    await s.wait(lambda: any(tid == 2 and start > released for tid, start, end in proposer.calls
                             if end > start), 20, "thread 2's proposal to be handled")
    late = await s.rows("SELECT id, title FROM nodes WHERE thread_id = 1 AND created_at > ?", (pause.done_at,))
    assert [dict(r) for r in late] == [], "a node was added to the thread after it was paused"


async def _more(s, thread_id, target):
    return await _finished_runs_of_thread(s, thread_id) >= target


# ---- prune ------------------------------------------------------------------------------


async def test_prune_kills_the_threads_running_runs_and_cancels_its_queue(tmp_path, start_engine):
    # The baseline is quick; every candidate sleeps 8-9 s after solving (budget 10 + 2 s).
    task = make_task(tmp_path / "slow", sleep=0, playbook=slow_playbook(8.0, 9.0))
    s = await start_engine(task, threads=2)

    async def both_slots_on_candidates():
        rows = await s.rows("SELECT r.id, n.thread_id FROM runs r JOIN nodes n ON n.id = r.node_id "
                            "WHERE r.status = 'running' AND r.purpose = 'explore'")
        return rows if len(rows) == 2 and any(r["thread_id"] == 1 for r in rows) else None

    running = await s.wait(both_slots_on_candidates, 20, "two candidate runs, one of thread 1, to be running")
    ours = [r["id"] for r in running if r["thread_id"] == 1]
    theirs = [r["id"] for r in running if r["thread_id"] != 1]

    cmd = await s.send("prune", thread=1)
    assert cmd.status == "done", cmd.result
    assert cmd.result == f"thread t1 pruned; {len(ours)} run(s) killed"

    async def killed():
        rows = await s.rows(f"SELECT * FROM runs WHERE id IN ({','.join('?' * len(ours))})", ours)
        return rows if all(r["status"] == "cancelled" for r in rows) else None

    # The sleeps last 8 s or more: a run that ended sooner was killed.
    rows = await s.wait(killed, 5, "the pruned thread's running runs to end cancelled")
    for r in rows:
        assert r["metric"] is None and r["ended_at"] - r["started_at"] < 7.5, dict(r)

    thread = await _thread_rows(s, 1)
    assert thread["status"] == "pruned"
    assert await s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id "
                          "WHERE n.thread_id = 1 AND r.status IN ('queued', 'running')") == 0
    statuses = {r["status"] for r in await s.rows("SELECT status FROM nodes WHERE thread_id = 1 AND id > 1")}
    assert "cancelled" in statuses and not statuses & {"queued", "running", "validating"}, statuses
    # The other thread's run goes on, and a new thread takes the pruned one's place.
    assert [r["status"] for r in await s.rows("SELECT status FROM runs WHERE id = ?", theirs)] == ["running"]
    assert await s.scalar("SELECT COUNT(*) FROM threads WHERE status = 'running'") == 2

    again = await s.send("prune", thread=1)
    assert again.status == "failed" and "already pruned" in again.result
    missing = await s.send("prune", thread=99)
    assert missing.status == "failed" and "no thread 99" in missing.result


# ---- fork -------------------------------------------------------------------------------


async def test_fork_starts_a_thread_at_the_node_that_then_gets_nodes(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT status = 'baseline' FROM nodes WHERE id = 1"), 20, "the baseline")

    cmd = await s.send("fork", node=1)
    assert cmd.status == "done", cmd.result
    m = re.fullmatch(r"thread (t\d+) \(id (\d+)\) forked at #1", cmd.result)
    assert m, cmd.result
    thread_id = int(m.group(2))
    thread = await _thread_rows(s, thread_id)
    assert (thread["name"], thread["head_node_id"], thread["status"]) == (m.group(1), 1, "running")
    await s.wait(
        lambda: s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id "
                         f"WHERE n.thread_id = ? AND n.parent_id = 1 AND r.status IN {FINISHED}", (thread_id,)),
        20, "the forked thread to propose from #1 and run it",
    )

    bad = await s.send("fork", node=999)
    assert bad.status == "failed" and "no node 999" in bad.result
    assert not s.task.done()


# ---- merge ------------------------------------------------------------------------------

LR_UP = Proposal("lr up", "a larger step", edits=(Edit("solution.py", "LR = 0.02\n", "LR = 0.03\n"),),
                 origin={"kind": "idea", "idea": "lr_up"})
STEPS_UP = Proposal("steps up", "more steps", edits=(Edit("solution.py", "STEPS = 40\n", "STEPS = 60\n"),),
                    origin={"kind": "idea", "idea": "steps_up"})
LR_DOWN = Proposal("lr down", "a smaller step", edits=(Edit("solution.py", "LR = 0.02\n", "LR = 0.01\n"),),
                   origin={"kind": "idea", "idea": "lr_down"})


async def test_merge_combines_two_nodes_and_a_conflict_fails_the_command_only(bowl, start_engine, script_proposals):
    # LR and STEPS sit on adjacent lines: git would call that a conflict. Separate them.
    sol = bowl / "solution.py"
    sol.write_text(sol.read_text().replace("LR = 0.02\n", "LR = 0.02\n\n\n\n"))
    script_proposals([LR_UP, STEPS_UP, LR_DOWN])
    s = await start_engine(bowl, threads=2)

    async def the_three():
        rows = await s.rows("SELECT * FROM nodes WHERE title IN ('lr up', 'steps up', 'lr down')")
        return {r["title"]: r for r in rows} if len(rows) == 3 else None

    nodes = await s.wait(the_three, 20, "the three scripted nodes")
    lr_up, steps_up, lr_down = nodes["lr up"], nodes["steps up"], nodes["lr down"]
    assert all(n["commit_sha"] for n in nodes.values())

    cmd = await s.send("merge", node=lr_up["id"], other=steps_up["id"])
    assert cmd.status == "done", cmd.result
    m = re.fullmatch(r"merge node #(\d+) queued on thread t\d+", cmd.result)
    assert m, cmd.result
    merged = (await s.rows("SELECT * FROM nodes WHERE id = ?", (int(m.group(1)),)))[0]
    assert (merged["parent_id"], merged["parent2_id"]) == (lr_up["id"], steps_up["id"])
    assert merged["commit_sha"] and '"kind": "merge"' in merged["origin"]
    repo = await s.scalar("SELECT repo_path FROM tasks")
    code = Workspace(repo, "").read_file(merged["commit_sha"], "solution.py")
    assert "LR = 0.03\n" in code and "STEPS = 60\n" in code
    await s.wait(
        lambda: s.scalar(f"SELECT COUNT(*) FROM runs WHERE node_id = ? AND status IN {FINISHED}", (merged["id"],)),
        20, "the merge node to be run",
    )

    conflict = await s.send("merge", node=lr_up["id"], other=lr_down["id"])
    assert conflict.status == "failed"
    assert conflict.result.startswith("merge failed:") and "conflict" in conflict.result, conflict.result
    failed = await s.rows("SELECT * FROM nodes WHERE parent_id = ? AND parent2_id = ?", (lr_up["id"], lr_down["id"]))
    assert len(failed) == 1 and failed[0]["status"] == "failed" and failed[0]["commit_sha"] is None
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ?", (failed[0]["id"],)) == 0

    # The engine goes on: it still carries out commands and finishes runs.
    done_before = await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'done'")
    pin = await s.send("pin", thread=1)
    assert pin.status == "done"
    await s.wait(lambda: _count_at_least(s, "SELECT COUNT(*) FROM runs WHERE status = 'done'", done_before + 3),
                 20, "more runs to finish after the failed merge")


async def _count_at_least(s, sql, target):
    return await s.scalar(sql) >= target


# ---- stop -------------------------------------------------------------------------------


async def _stop_by_command(s) -> int:
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'done'"), 20, "a run to finish")
    cid = await s.reader.add_command("stop", {})
    reason = await asyncio.wait_for(asyncio.shield(s.task), 15)  # raises what run() raised
    assert reason == "stopped by command"
    return cid


async def test_a_stop_command_ends_run_and_releases_the_lock(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    cid = await _stop_by_command(s)
    assert await s.reader.lock() is None
    assert await s.scalar("SELECT COUNT(*) FROM engine_lock") == 0
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0
    assert await s.scalar(
        "SELECT COUNT(*) FROM events WHERE kind = 'engine' AND message = 'engine stopped: stopped by command'") == 1
    cmd = await s.reader.command(cid)
    assert (cmd.status, cmd.result) == ("done", "stopping"), f"the stop command was left {cmd.status}"


async def test_engine_stop_returns_and_releases_the_lock(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'done'"), 20, "a run to finish")
    assert await s.reader.lock() is not None
    assert await s.stop() == "test over"
    assert await s.scalar("SELECT COUNT(*) FROM engine_lock") == 0
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0
    assert await s.scalar(
        "SELECT COUNT(*) FROM events WHERE kind = 'engine' AND message = 'engine stopped: test over'") == 1
    # Runs that were going on are interrupted and queued again for the next engine.
    interrupted = await s.rows("SELECT * FROM runs WHERE status = 'interrupted'")
    for r in interrupted:
        assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ? AND seed = ? AND attempt = ? "
                              "AND status = 'queued'", (r["node_id"], r["seed"], r["attempt"] + 1)) == 1


async def test_a_stop_while_a_run_is_being_started_leaves_no_run_running(bowl, start_engine, monkeypatch):
    s = await start_engine(bowl, threads=2)
    real = s.store.start_run
    stopped: list[int] = []

    async def start_run_then_stop(run_id, slot, run_dir):
        ok = await real(run_id, slot, run_dir)  # committed
        if ok and not stopped and run_id > 5:  # past the baseline's runs
            stopped.append(run_id)
            s.engine.stop("stopped while starting a run")
            await asyncio.Event().wait()  # the stop's cancellation lands here, as on the COMMIT's await
        return ok

    monkeypatch.setattr(s.store, "start_run", start_run_then_stop)
    assert await asyncio.wait_for(asyncio.shield(s.task), 30) == "stopped while starting a run"
    assert stopped
    running = await s.rows("SELECT id, status FROM runs WHERE status = 'running'")
    assert [dict(r) for r in running] == [], "runs left marked running after the engine stopped"


async def test_an_engine_started_after_a_stop_command_keeps_running(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    await _stop_by_command(s)
    # A new process would open its own connection.
    await s.store.close()
    s.store = await Store.open(s.db, writer=True)

    # A new engine on the same database picks up where this one stopped, and keeps going.
    done = await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'done'")
    config = SessionConfig(task=str(bowl), profile="smoke", threads=2, budget_s=None, cpu_slots=2, patience=100)
    engine = Engine(s.store, config, s.run_root, LocalExecutor(detect_slots(2, "cpu")), heartbeat_s=0.2)
    task = asyncio.create_task(engine.run())
    try:
        await wait_for(lambda: _count_at_least(s, "SELECT COUNT(*) FROM runs WHERE status = 'done'", done + 3),
                       20, "the restarted engine to finish runs",
                       alive=lambda: f"the restarted engine stopped: {task.result()!r}" if task.done() else None)
    finally:
        engine.stop()
        await asyncio.wait_for(task, 30)
