"""engine.loop.Engine end to end on the bowl fixture: propose, run, judge, accept, learn.

Each test runs a real Engine in-process (real sandboxed runs, ~0.1 s each) and asserts
what state.db shows, through a second (viewer) connection.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time

from engine.models import Edit, Proposal
from engine.workspace import Workspace

from tests.conftest import make_task

ALL_SEEDS = [0, 1, 2, 3, 4]  # the bowl fixture: explore [0], validate [1, 2, 3, 4]
VALIDATE_SEEDS = [1, 2, 3, 4]  # the t-test's: the exploration seed selects, fresh seeds decide


async def test_a_session_accepts_a_validated_improvement_and_records_everything(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    accepted_id = await s.wait(
        lambda: s.scalar("SELECT MIN(id) FROM nodes WHERE status = 'accepted'"), 40, "a node to be accepted"
    )
    assert await s.stop() == "test over"

    node = (await s.rows("SELECT * FROM nodes WHERE id = ?", (accepted_id,)))[0]
    assert node["p_value"] is not None and node["p_value"] < 0.05
    assert node["n_runs"] == 5 and node["commit_sha"]

    # The verdict: a one-sided test over the 4 validation seeds on each side.
    verdicts = await s.rows("SELECT * FROM verdicts WHERE node_id = ?", (accepted_id,))
    assert len(verdicts) == 1 and verdicts[0]["accepted"] == 1
    details = json.loads(verdicts[0]["details"])
    assert sorted(details["seeds"]) == VALIDATE_SEEDS
    assert len(details["candidate"]) == 4 and len(details["parent"]) == 4
    assert statistics.fmean(details["candidate"]) < statistics.fmean(details["parent"])  # bowl minimises

    # Its runs: one exploration run on seed 0, then validation on seeds 1-4, all done.
    runs = await s.rows("SELECT * FROM runs WHERE node_id = ? AND status = 'done' ORDER BY id", (accepted_id,))
    assert sorted((r["purpose"], r["seed"]) for r in runs) == [("explore", 0)] + [("validate", k) for k in (1, 2, 3, 4)]
    explore = next(r for r in runs if r["purpose"] == "explore")
    assert all(r["queued_at"] >= explore["ended_at"] for r in runs if r["purpose"] == "validate"), \
        "validation runs were queued before the exploration run had ended"
    # ... and the verdict's numbers are the validation runs' metrics, and the parent's; the
    # node's metric summarises all five runs.
    assert sorted(details["candidate"]) == sorted(r["metric"] for r in runs if r["purpose"] == "validate")
    assert math.isclose(node["metric"], statistics.fmean(r["metric"] for r in runs))
    parent_runs = await s.rows(
        "SELECT seed, metric FROM runs WHERE node_id = ? AND status = 'done'", (node["parent_id"],)
    )
    assert {r["seed"] for r in parent_runs} >= set(ALL_SEEDS)
    assert sorted(details["parent"]) == sorted(
        {r["seed"]: r["metric"] for r in parent_runs}[k] for k in VALIDATE_SEEDS
    )

    # The thread's head moved: to this node or to a better one accepted after it, and the
    # thread's git branch points at the head's commit.
    thread = (await s.rows("SELECT * FROM threads WHERE id = ?", (node["thread_id"],)))[0]
    head = (await s.rows("SELECT * FROM nodes WHERE id = ?", (thread["head_node_id"],)))[0]
    assert head["status"] == "accepted" and head["id"] >= accepted_id and head["metric"] <= node["metric"]
    repo = (await s.rows("SELECT repo_path FROM tasks"))[0]["repo_path"]
    assert Workspace(repo, "").branch_sha(thread["branch"]) == head["commit_sha"]
    events = await s.rows("SELECT message FROM events WHERE kind = 'accepted'")
    assert any(f"#{accepted_id} " in e["message"] for e in events), events

    # A positive Lesson names the node and the improvement.
    lessons = await s.rows("SELECT * FROM lessons WHERE node_id = ?", (accepted_id,))
    assert len(lessons) == 1 and lessons[0]["positive"] == 1 and lessons[0]["effect"] > 0

    # Every finished run of the session: a finite metric and its streamed samples.
    done = await s.rows("SELECT id, metric FROM runs WHERE status = 'done'")
    assert len(done) >= 10
    assert all(r["metric"] is not None and math.isfinite(r["metric"]) for r in done)
    counts = {r["run_id"]: r["n"] for r in await s.rows(
        "SELECT run_id, COUNT(*) AS n FROM samples WHERE name = 'grad_norm' GROUP BY run_id")}
    assert all(counts.get(r["id"], 0) >= 10 for r in done), "a finished run has no samples (STEPS >= 10)"

    # The baseline ran on every seed and candidates rejected on the exploration seed
    # cost exactly one run.
    root = (await s.rows("SELECT * FROM nodes WHERE parent_id IS NULL"))[0]
    assert root["status"] == "baseline" and root["n_runs"] == 5
    early = await s.rows(
        "SELECT n.id, COUNT(r.id) AS n FROM nodes n JOIN runs r ON r.node_id = n.id "
        "WHERE n.status = 'rejected' AND n.p_value IS NULL GROUP BY n.id")
    assert early and all(r["n"] == 1 for r in early)


async def test_proposals_are_made_ahead_of_free_slots(bowl, start_engine):
    s = await start_engine(bowl, threads=2)

    async def busy_with_work_waiting() -> bool:
        baseline = await s.scalar("SELECT status FROM nodes WHERE parent_id IS NULL")
        running = await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'running'")
        waiting = await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'queued' AND purpose = 'explore'")
        return baseline == "baseline" and running == 2 and waiting >= 1

    await s.wait(busy_with_work_waiting, 30, "both slots busy while explore runs wait in the queue")


async def test_edits_that_do_not_apply_or_touch_protected_files_are_refused_and_never_run(bowl, start_engine, script_proposals):
    missing = Proposal(
        "ghost edit", "edits a line that is not there",
        edits=(Edit("solution.py", "    this line is not in solution.py\n", "    pass\n"),),
        origin={"kind": "idea", "idea": "ghost"},
    )
    protected = Proposal(
        "harness edit", "edits the protected runner",
        edits=(Edit("run.py", "import json\n", "import json  # changed\n"),),
        origin={"kind": "idea", "idea": "harness"},
    )
    script_proposals([missing, protected])
    s = await start_engine(bowl, threads=1)

    async def both_decided():
        rows = await s.rows("SELECT * FROM nodes WHERE title IN ('ghost edit', 'harness edit') AND status != 'queued'")
        return rows if len(rows) == 2 else None

    nodes = {r["title"]: r for r in await s.wait(both_decided, 20, "the two bad proposals to be decided")}
    ghost, harness = nodes["ghost edit"], nodes["harness edit"]
    assert ghost["status"] == "failed" and ghost["commit_sha"] is None
    assert "solution.py" in ghost["error"] and "SEARCH matches nowhere" in ghost["error"], ghost["error"]
    # An edit to a protected file is a static guard's business: flagged, with an Alert.
    assert harness["status"] == "flagged" and harness["commit_sha"] is None
    assert "protected" in harness["error"] and "run.py" in harness["error"], harness["error"]
    alerts = await s.rows("SELECT guard, evidence FROM alerts WHERE node_id = ?", (harness["id"],))
    assert [a["guard"] for a in alerts] == ["static.protected_file"] and "run.py" in alerts[0]["evidence"]
    assert await s.scalar("SELECT COUNT(*) FROM alerts WHERE node_id = ?", (ghost["id"],)) == 0
    for n in (ghost, harness):
        assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ?", (n["id"],)) == 0
        verdict = await s.rows("SELECT accepted, summary FROM verdicts WHERE node_id = ?", (n["id"],))
        assert [v["accepted"] for v in verdict] == [0] and verdict[0]["summary"] == n["error"]
        lesson = await s.rows("SELECT idea, positive FROM lessons WHERE node_id = ?", (n["id"],))
        assert [(le["idea"], le["positive"]) for le in lesson] == [(json.loads(n["origin"])["idea"], 0)]

    # The thread goes on with the playbook's proposals, which run.
    await s.wait(
        lambda: s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id "
                         "WHERE n.id > ? AND r.status = 'done'", (harness["id"],)),
        20, "a later proposal of the same thread to finish a run",
    )


async def test_a_proposal_whose_code_a_node_already_has_is_recorded_and_never_run(bowl, start_engine, script_proposals):
    # one idea from two proposers (or a merge that adds nothing): the same tree as a known node
    lr_up = Proposal("lr up", "a larger step", edits=(Edit("solution.py", "LR = 0.02\n", "LR = 0.03\n"),),
                     origin={"kind": "idea", "idea": "lr_up"})
    again = Proposal("lr up, again", "the same edit", edits=lr_up.edits, origin={"kind": "idea", "idea": "lr_up"})
    # node #2 is "lr up" (the baseline is #1): merged into the baseline it is #2's code again
    merge = Proposal("merge #2", "adds nothing to the baseline but #2", merge_with=2, origin={"kind": "merge"})
    script_proposals([lr_up, again, merge])
    s = await start_engine(bowl, threads=1)

    async def decided():
        rows = await s.rows("SELECT * FROM nodes WHERE title IN ('lr up', 'lr up, again', 'merge #2')")
        return rows if len(rows) == 3 and all(r["status"] != "queued" for r in rows[1:]) else None

    nodes = {r["title"]: r for r in await s.wait(decided, 20, "the three proposals")}
    first, second, merged = nodes["lr up"], nodes["lr up, again"], nodes["merge #2"]
    assert first["id"] == 2
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ?", (first["id"],)) >= 1
    assert second["status"] == "failed", second["error"]
    assert second["error"].startswith(f"the same code as node #{first['id']} ('lr up', ") \
        and second["error"].endswith("): not run again"), second["error"]
    assert merged["status"] == "failed" and merged["error"].startswith("the same code as node #2 ('lr up', "), \
        merged["error"]
    for n in (second, merged):
        assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ?", (n["id"],)) == 0


async def test_a_static_guard_flags_a_process_spawning_idea_before_it_runs(tmp_path, start_engine):
    playbook = '''
[[idea]]
id = "spawn"
title = "Shell out"
hypothesis = "A subprocess could do the work."
  [[idea.edit]]
  file = "solution.py"
  search = """# knobs
"""
  replace = """import subprocess
# knobs
"""
'''
    task = make_task(tmp_path / "bowl", playbook=playbook)
    s = await start_engine(task, threads=2)
    node = (await s.wait(
        lambda: s.rows("SELECT * FROM nodes n WHERE title = 'Shell out' AND status != 'queued' "
                       "AND EXISTS (SELECT 1 FROM verdicts v WHERE v.node_id = n.id)"),
        20, "the subprocess idea to be decided"))[0]
    assert node["status"] == "flagged"
    assert node["commit_sha"], "a flagged node keeps its commit, as evidence"
    alerts = await s.rows("SELECT * FROM alerts WHERE node_id = ?", (node["id"],))
    assert [a["guard"] for a in alerts] == ["static.process_spawn"]
    evidence = json.loads(alerts[0]["evidence"])
    assert evidence["file"] == "solution.py" and "import subprocess" in evidence["code"]
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ?", (node["id"],)) == 0
    verdict = await s.rows("SELECT accepted FROM verdicts WHERE node_id = ?", (node["id"],))
    assert [v["accepted"] for v in verdict] == [0]
    assert await s.scalar("SELECT positive FROM lessons WHERE node_id = ?", (node["id"],)) == 0
    # Nothing else to try: both threads retire, and neither head moved.
    threads = await s.wait(lambda: _all_done(s), 20, "both threads to run out of ideas")
    root = await s.scalar("SELECT id FROM nodes WHERE parent_id IS NULL")
    assert len(threads) == 2 and all("no more ideas" in t["note"] for t in threads)
    assert all(t["head_node_id"] == root for t in threads)
    assert await s.scalar("SELECT COUNT(*) FROM nodes") == 2  # the baseline and the flagged node


async def _all_done(s):
    rows = await s.rows("SELECT * FROM threads")
    return rows if rows and all(t["status"] == "done" for t in rows) else None


async def test_runs_the_machine_cannot_start_are_requeued_and_stop_the_engine(bowl, start_engine, monkeypatch):
    # The sandbox program vanishing mid-session (it happened on a lent GPU machine) must not
    # fail one proposal after another: nothing is charged to the candidates.
    import engine.sandbox

    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM nodes WHERE status != 'baseline' AND status != 'queued'"),
                 30, "a candidate to be running")
    monkeypatch.setattr(engine.sandbox, "bwrap_path", lambda: "/nonexistent/bwrap")
    failed_before = await s.scalar("SELECT COUNT(*) FROM nodes WHERE status = 'failed'")
    reason = await asyncio.wait_for(asyncio.shield(s.task), 60)
    assert "runs in a row could not start on this machine" in reason and "/nonexistent/bwrap" in reason
    assert "threadlab run` resumes" in reason
    assert await s.scalar("SELECT COUNT(*) FROM nodes WHERE status = 'failed'") == failed_before
    interrupted = await s.rows("SELECT error FROM runs WHERE status = 'interrupted' AND error LIKE '%could not start%'")
    assert 3 <= len(interrupted) <= 4  # one per slot at most beyond the third
    assert all("/nonexistent/bwrap" in r["error"] for r in interrupted)
    events = await s.rows("SELECT message FROM events WHERE kind = 'machine'")
    assert len(events) == len(interrupted)
    # each interrupted run has a fresh attempt queued for the next engine
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'queued'") >= len(interrupted)


async def test_a_run_interrupted_again_and_again_fails_instead_of_running_forever(bowl, start_engine):
    # On Ray, a candidate that gets its worker killed each time (out of memory) would
    # otherwise be queued again forever.
    from engine.models import RunOutcome, RunStatus

    s = await start_engine(bowl, threads=1)
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM nodes WHERE status = 'baseline' AND metric IS NOT NULL"),
                 30, "the baseline")
    real = s.engine.executor.execute

    async def lost(req, slot, on_samples):
        if req.node_id == s.engine.root_id:
            return await real(req, slot, on_samples)
        now = time.time()
        return RunOutcome(RunStatus.INTERRUPTED, None, None, "worker lost", now, now)

    s.engine.executor.execute = lost
    failed = await s.wait(lambda: s.rows("SELECT * FROM runs WHERE status = 'failed'"), 30, "a run to fail")
    assert "interrupted 3 times; last: worker lost" in failed[0]["error"]
    tries = await s.rows("SELECT attempt, status FROM runs WHERE node_id = ? AND seed = ? ORDER BY attempt",
                         (failed[0]["node_id"], failed[0]["seed"]))
    assert [(r["attempt"], r["status"]) for r in tries] == [(1, "interrupted"), (2, "interrupted"), (3, "failed")]


async def test_a_proposer_that_raises_costs_its_thread_a_retry_not_the_engine(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM nodes WHERE status = 'baseline' AND metric IS NOT NULL"),
                 30, "the baseline")
    proposer = s.engine.proposers["search"]
    real = proposer.propose
    calls = []

    async def buggy(ctx):
        calls.append(ctx.thread_id)
        if len(calls) == 1:
            raise KeyError("a bug in a proposer")
        return await real(ctx)

    proposer.propose = buggy
    await s.wait(lambda: s.rows("SELECT * FROM events WHERE kind = 'proposer' AND message LIKE '%KeyError%'"),
                 20, "the failure to be recorded")
    before = await s.scalar("SELECT COUNT(*) FROM nodes")
    await s.wait(lambda: s.scalar("SELECT COUNT(*) > ? FROM nodes", (before,)), 20, "proposing to go on")
    assert not s.task.done()
