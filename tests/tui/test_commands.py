"""The bindings that change things, against a real engine: each writes a Command row and
the engine carries it out (pin, pause/resume, prune with its confirmation, fork, merge,
acknowledge), and the viewer announces the result."""

from __future__ import annotations

import re
import time

from engine.models import Edit, Proposal
from tests.conftest import make_task, slow_playbook, wait_for
from tests.tui.conftest import loaded, make_app, record_notifications, select, send_keys
from tui.screens import ConfirmScreen

SIZE = (120, 40)


async def _thread_row(s, thread_id):
    rows = await s.rows("SELECT * FROM threads WHERE id = ?", (thread_id,))
    return rows[0] if rows else None


async def _app_on(s, pilot, app, thread_id: int = 1) -> None:
    await loaded(app, lambda snap: snap.thread(thread_id) is not None, 20, f"thread {thread_id} on screen")
    await select(app, "thread", thread_id)


async def test_p_pins_and_unpins_and_space_pauses_and_resumes(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM threads"), 20, "the threads")
    app = make_app(s.db, watch=True, clock=time.time)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await _app_on(s, pilot, app)
        await send_keys(app, "p")
        await s.wait(lambda: s.scalar("SELECT pinned FROM threads WHERE id = 1"), 15, "thread 1 pinned")
        await wait_for(lambda: not app._pending, 10, "the pin result")
        assert ("pin thread t1: done", "thread t1 pinned", "information") in seen
        await loaded(app, lambda snap: snap.thread(1).pinned, 10, "the pin on screen")
        await pilot.pause(0.05)
        assert "[pin]" in str(app.thread_tree.item("thread", 1).label)

        await send_keys(app, "p")
        await s.wait(lambda: s.scalar("SELECT pinned = 0 FROM threads WHERE id = 1"), 15, "thread 1 unpinned")
        await wait_for(lambda: not app._pending, 10, "the unpin result")
        await loaded(app, lambda snap: not snap.thread(1).pinned, 10, "the unpin on screen")

        await send_keys(app, "space")
        await s.wait(lambda: s.scalar("SELECT status = 'paused' FROM threads WHERE id = 1"), 15, "thread 1 paused")
        await loaded(app, lambda snap: snap.thread(1).status == "paused", 10, "the pause on screen")
        await pilot.pause(0.05)
        assert "‖ t1 paused" in str(app.thread_tree.item("thread", 1).label)
        await send_keys(app, "space")
        await s.wait(lambda: s.scalar("SELECT status = 'running' FROM threads WHERE id = 1"), 15, "thread 1 resumed")
        await wait_for(lambda: not app._pending, 10, "the resume result")
        assert ("resume thread t1: done", "thread t1 resumed", "information") in seen
        kinds = [r["kind"] for r in await s.rows("SELECT kind FROM commands WHERE source = 'tui' ORDER BY id")]
        assert kinds == ["pin", "unpin", "pause", "resume"]


async def test_d_prunes_only_when_confirmed_and_says_how_many_runs_it_kills(tmp_path, start_engine):
    # candidates sleep 8-9 s: a run of thread 1 is running while we prune
    task = make_task(tmp_path / "slow", sleep=0, playbook=slow_playbook(8.0, 9.0))
    s = await start_engine(task, threads=2)
    await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id "
                                  "WHERE n.thread_id = 1 AND r.status = 'running'"), 20, "a running run of thread 1")
    app = make_app(s.db, watch=True, clock=time.time)
    async with app.run_test(size=SIZE) as pilot:
        await _app_on(s, pilot, app)
        await send_keys(app, "d")
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        running = await s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id "
                                 "WHERE n.thread_id = 1 AND r.status = 'running'")
        assert running >= 1 and f"{running} running run{'s' if running > 1 else ''} will be killed" in \
            app.screen.message
        # focus lands in the screen's on_mount, a message after the screen is pushed
        await wait_for(lambda: app.screen.focused is not None, 5, "a focused button")
        assert app.screen.focused.id == "cancel"
        await send_keys(app, "enter")  # Cancel
        await wait_for(lambda: not isinstance(app.screen, ConfirmScreen), 5, "the confirmation to close")
        assert await s.scalar("SELECT COUNT(*) FROM commands WHERE kind = 'prune'") == 0
        assert (await _thread_row(s, 1))["status"] == "running"

        await send_keys(app, "d")
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation again")
        await send_keys(app, "tab")  # to the Prune button
        await wait_for(lambda: app.screen.focused is not None and app.screen.focused.id == "confirm", 5, "Prune focused")
        await send_keys(app, "enter")
        await s.wait(lambda: s.scalar("SELECT status = 'pruned' FROM threads WHERE id = 1"), 15, "thread 1 pruned")
        cmd = (await s.rows("SELECT * FROM commands WHERE kind = 'prune'"))[0]
        assert cmd["source"] == "tui"
        await s.wait(lambda: s.scalar("SELECT status != 'pending' FROM commands WHERE kind = 'prune'"), 10, "done")
        result = (await s.rows("SELECT result FROM commands WHERE kind = 'prune'"))[0]["result"]
        assert re.fullmatch(r"thread t1 pruned; [1-9]\d* run\(s\) killed", result), result
        await loaded(app, lambda snap: snap.thread(1).status == "pruned", 10, "the prune on screen")


async def test_f_forks_a_new_thread_at_the_selected_node(bowl, start_engine):
    s = await start_engine(bowl, threads=2)
    await s.wait(lambda: s.scalar("SELECT status = 'baseline' FROM nodes WHERE id = 1"), 20, "the baseline")
    app = make_app(s.db, watch=True, clock=time.time)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app, lambda snap: snap.baselines, 20, "the baseline on screen")
        await select(app, "baseline", 1)
        threads_before = await s.scalar("SELECT COUNT(*) FROM threads")
        await send_keys(app, "f")
        await wait_for(lambda: any("forked at #1" in m for _t, m, _s in seen), 15, "the fork result")
        result = next(m for _t, m, _s in seen if "forked at #1" in m)
        m = re.fullmatch(r"thread (t\d+) \(id (\d+)\) forked at #1", result)
        assert m, result
        new_id = int(m.group(2))
        assert await s.scalar("SELECT COUNT(*) FROM threads") == threads_before + 1
        assert (await _thread_row(s, new_id))["status"] == "running"
        await loaded(app, lambda snap: snap.thread(new_id) is not None, 10, "the new thread on screen")
        await pilot.pause(0.05)
        assert app.thread_tree.item("thread", new_id) is not None


LR_UP = Proposal("lr up", "a larger step", edits=(Edit("solution.py", "LR = 0.02\n", "LR = 0.03\n"),),
                 origin={"kind": "idea", "idea": "lr_up"})
STEPS_UP = Proposal("steps up", "more steps", edits=(Edit("solution.py", "STEPS = 40\n", "STEPS = 60\n"),),
                    origin={"kind": "idea", "idea": "steps_up"})


async def test_m_twice_merges_the_marked_node_into_the_selected_one(bowl, start_engine, script_proposals):
    sol = bowl / "solution.py"  # LR and STEPS on adjacent lines would conflict: separate them
    sol.write_text(sol.read_text().replace("LR = 0.02\n", "LR = 0.02\n\n\n\n"))
    script_proposals([LR_UP, STEPS_UP])
    s = await start_engine(bowl, threads=2)

    async def the_two():
        rows = await s.rows("SELECT * FROM nodes WHERE title IN ('lr up', 'steps up') AND commit_sha IS NOT NULL")
        return {r["title"]: r for r in rows} if len(rows) == 2 else None

    nodes = await s.wait(the_two, 20, "the two scripted nodes")
    lr_up, steps_up = nodes["lr up"]["id"], nodes["steps up"]["id"]
    app = make_app(s.db, watch=True, clock=time.time)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app, lambda snap: snap.node(lr_up) and snap.node(steps_up), 20, "both nodes on screen")
        await select(app, "node", steps_up)
        await send_keys(app, "m")
        await wait_for(lambda: app.marked == steps_up, 5, "the mark")
        await select(app, "node", lr_up)
        await send_keys(app, "m")
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), 5, "the merge confirmation")
        assert f"Merge #{steps_up} into #{lr_up}?" == app.screen.title_text
        await send_keys(app, "enter")

        async def merged():
            rows = await s.rows("SELECT * FROM nodes WHERE parent_id = ? AND parent2_id = ? "
                                "AND origin LIKE '%\"by\": \"person\"%'", (lr_up, steps_up))
            return rows[0] if rows else None

        node = await s.wait(merged, 20, "the merge node")
        assert node["commit_sha"] and '"by": "person"' in node["origin"]
        await s.wait(lambda: s.scalar("SELECT status != 'pending' FROM commands WHERE kind = 'merge'"), 10,
                     "the merge command to be finished")
        cmd = (await s.rows("SELECT * FROM commands WHERE kind = 'merge'"))[0]
        assert cmd["source"] == "tui" and cmd["status"] == "done", cmd["result"]
        await loaded(app, lambda snap: snap.node(node["id"]) is not None, 10, "the merge node on screen")
        await pilot.pause(0.05)
        assert f"⊕#{steps_up}" in str(app.thread_tree.item("node", node["id"]).label)


async def test_x_acknowledges_an_alert_that_was_notified(bowl, start_engine):
    s = await start_engine(bowl, threads=1)
    await s.wait(lambda: s.scalar("SELECT status = 'baseline' FROM nodes WHERE id = 1"), 20, "the baseline")
    app = make_app(s.db, watch=True, clock=time.time)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app, lambda snap: snap.baselines, 20, "the baseline on screen")
        await s.store.add_alert(1, None, "audit_gap", "val/audit gap far from the baseline's", {"gap": 0.3})
        await wait_for(lambda: any("audit_gap on #1" in m for _t, m, _s in seen), 10, "the alert notification")
        await send_keys(app, "a")
        await loaded(app, lambda snap: snap.alerts, 10, "the alert in the panel")
        await wait_for(lambda: app.alerts_panel.shown and app.alerts_panel.highlighted_alert() == 1, 5, "the alert row")
        await send_keys(app, "x")
        await s.wait(lambda: s.scalar("SELECT acknowledged FROM alerts WHERE id = 1"), 15, "the alert acknowledged")
        await wait_for(lambda: any("alert 1 acknowledged" in m for _t, m, _s in seen), 10, "the result")
