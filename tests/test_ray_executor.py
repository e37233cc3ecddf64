"""The Ray executor on a local Ray cluster, inside a private network namespace.

Run as part of the suite, this module has one test: it runs the module again with pytest
under `unshare --net` (only loopback, brought up by the inner process), where Ray is alone
and can reach nothing but 127.0.0.1. The inner run has the real tests: a research session
on Ray, a Ray worker killed mid-run, prune cancelling the remote run, slots following the
cluster's nodes, and the connection to the cluster lost and found again.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.ray_support import inside, interfaces, loopback_up, netns_env, netns_prefix

HERE = Path(__file__)

def test_the_engine_side_never_imports_ray() -> None:
    """Ray's driver lives in the bridge subprocess: importing the executor loads no Ray."""
    code = "import sys, engine.ray_executor; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=HERE.parent.parent, check=False).returncode == 0


if not inside():

    @pytest.mark.slow
    def test_ray_suite_in_a_private_network_namespace(tmp_path: Path) -> None:
        if importlib.util.find_spec("ray") is None:
            pytest.skip("ray is not installed: pip install -e '.[ray]'")
        prefix, why = netns_prefix()
        if prefix is None:
            pytest.skip(why)
        argv = [*prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                "addopts=", "--basetemp", str(tmp_path / "inner"), "-rfEs", str(HERE)]
        env = netns_env(tmp_path)
        proc = subprocess.Popen(argv, cwd=HERE.parent.parent, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"the Ray tests did not finish in 420 s:\n{output[-6000:]}", pytrace=False)
        finally:
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
        if proc.returncode != 0:
            pytest.fail(f"the Ray tests failed inside the namespace:\n{output[-12000:]}", pytrace=False)
        summary = output.strip().splitlines()[-1]
        if " passed" not in summary:
            pytest.fail(f"the Ray tests did not run: {summary}", pytrace=False)
        if "skipped" in summary:
            warnings.warn(f"some Ray tests were skipped: {summary}", stacklevel=1)

else:
    loopback_up()
    assert interfaces() == ["lo"], f"not alone in a network namespace: {interfaces()}"

    from engine.config import SessionConfig
    from engine.errors import ExecutorError
    from engine.loop import Engine
    from engine.models import RunRequest, RunStatus
    from engine.ray_executor import RayExecutor, SlotChange
    from engine.store import Store
    from engine.taskfile import load_task
    from tests.conftest import EngineSession, make_task, slow_playbook, wait_for
    from tests.ray_support import LOOPBACK, start_cluster

    # the engine follows executor.refresh_slots() (Engine._refresh_slots in engine/loop.py)
    FOLLOWS_SLOTS = hasattr(Engine, "_refresh_slots")

    @pytest.fixture(scope="module")
    def cluster():
        c = start_cluster(num_cpus=2)
        yield c
        c.shutdown()

    def worker_pids(run_id: int) -> list[int]:
        """The Ray worker processes executing run `run_id` (its task is named for it)."""
        title = f"ray::threadlab-run-{run_id}".encode()
        pids = []
        for path in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                with open(path, "rb") as f:
                    if f.read().startswith(title):
                        pids.append(int(path.split("/")[2]))
            except OSError:
                continue
        return pids

    def process_alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except OSError:
            return False

    @pytest.fixture
    async def ray_engine(tmp_path: Path, cluster, request: pytest.FixtureRequest):
        """ray_engine(task_dir, threads=2, budget_s=None) -> EngineSession on a RayExecutor."""
        sessions: list[EngineSession] = []

        async def start(task_dir: Path, *, threads: int = 2, budget_s: float | None = None,
                        patience: int = 100) -> EngineSession:
            db = tmp_path / "state.db"
            store = await Store.open(db, writer=True, create=True)
            reader = await Store.open(db)
            config = SessionConfig(task=str(task_dir), profile="smoke", threads=threads, budget_s=budget_s,
                                   patience=patience, executor="ray")
            executor = await RayExecutor.connect(cluster.address, node_ip_address=LOOPBACK,
                                                 log_path=tmp_path / "ray-bridge.log")
            assert len(executor.slots) == 2, executor.status
            engine = Engine(store, config, tmp_path / "state.run", executor, heartbeat_s=0.2)
            task = asyncio.create_task(engine.run())
            session = EngineSession(engine, store, reader, task, db, tmp_path / "state.run")
            sessions.append(session)
            return session

        yield start

        problems = []
        for s in sessions:
            s.engine.stop("test over")
            try:
                await asyncio.wait_for(asyncio.shield(s.task), 60)
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(f"engine.run() raised {exc!r}")
            try:
                crashes = await s.reader.rows("SELECT message FROM events WHERE kind = 'crash'")
                problems += [r["message"] for r in crashes]
            finally:
                await s.reader.close()
                await s.store.close()
        report = getattr(request.node, "rep_call", None)
        if problems and report is not None and report.passed:
            pytest.fail("engine problems: " + "; ".join(problems))

    # ---- sessions -------------------------------------------------------------------------

    async def test_a_research_session_completes_on_ray(tmp_path: Path, ray_engine) -> None:
        s = await ray_engine(make_task(tmp_path / "bowl"), threads=2, budget_s=12)
        reason = await asyncio.wait_for(asyncio.shield(s.task), 120)
        assert reason == "research time spent"
        runs = await s.rows("SELECT * FROM runs WHERE status = 'done'")
        assert len(runs) >= 8, len(runs)
        assert {r["slot"] for r in runs} == {sl.name for sl in s.engine.executor.slots} or len(
            {r["slot"] for r in runs}) == 2
        threads = await s.rows("SELECT id FROM threads")
        assert len(threads) >= 2
        for t in threads:  # every thread's research went through Ray to a decision
            decided = await s.scalar(
                "SELECT COUNT(*) FROM nodes WHERE thread_id = ? AND status IN "
                "('accepted', 'rejected', 'flagged', 'failed')", (t["id"],))
            assert decided >= 1, t["id"]
        run = runs[-1]
        assert '"executor": "ray"' in run["extra"]
        assert await s.scalar("SELECT COUNT(*) FROM samples WHERE run_id = ?", (run["id"],)) > 0
        assert (Path(run["run_dir"]) / "stdout.log").exists()
        assert (Path(run["run_dir"]) / "eval.log").exists()
        errors = await s.rows("SELECT message FROM events WHERE level = 'error'")
        assert not errors, errors

    async def test_a_killed_ray_worker_requeues_its_run(tmp_path: Path, ray_engine) -> None:
        task = make_task(tmp_path / "bowl", sleep=0, playbook=slow_playbook(3, 4))
        s = await ray_engine(task, threads=2, budget_s=15)

        async def candidate_mid_run():
            rows = await s.rows(
                "SELECT r.id FROM runs r JOIN nodes n ON n.id = r.node_id WHERE r.status = 'running' "
                "AND n.thread_id IS NOT NULL AND EXISTS (SELECT 1 FROM samples WHERE run_id = r.id)")
            for r in rows:
                if worker_pids(r["id"]):
                    return r["id"]
            return None

        victim = await s.wait(candidate_mid_run, 60, "a candidate's run going on on a Ray worker")
        for pid in worker_pids(victim):
            os.kill(pid, signal.SIGKILL)
        run = await s.wait(lambda: s.rows("SELECT * FROM runs WHERE id = ? AND status = 'interrupted'",
                                          (victim,)), 30, "the killed run to be interrupted")
        if FOLLOWS_SLOTS:  # the engine records the executor's reason
            assert "the Ray worker was lost: WorkerCrashedError" in run[0]["error"], run[0]["error"]
        again = await s.wait(lambda: s.rows(
            "SELECT * FROM runs WHERE node_id = ? AND seed = ? AND attempt = ? AND status = 'done'",
            (run[0]["node_id"], run[0]["seed"], run[0]["attempt"] + 1)), 60, "the queued-again run to finish")
        assert again
        reason = await asyncio.wait_for(asyncio.shield(s.task), 120)
        assert reason == "research time spent"
        assert await s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0

    async def test_prune_cancels_the_remote_run(tmp_path: Path, ray_engine) -> None:
        task = make_task(tmp_path / "bowl", sleep=0, playbook=slow_playbook(30, 40))
        s = await ray_engine(task, threads=2)

        async def remote_candidate():
            rows = await s.rows(
                "SELECT r.id, n.thread_id FROM runs r JOIN nodes n ON n.id = r.node_id WHERE r.status = 'running' "
                "AND n.thread_id IS NOT NULL AND EXISTS (SELECT 1 FROM samples WHERE run_id = r.id)")
            for r in rows:
                if worker_pids(r["id"]):
                    return r
            return None

        row = await s.wait(remote_candidate, 60, "a candidate's run going on on a Ray worker")
        run_id, thread_id = row["id"], row["thread_id"]
        (pid,) = worker_pids(run_id)
        workdirs = glob.glob(os.path.join(os.environ["THREADLAB_RAY_WORKDIR"], f"threadlab-run{run_id}-{pid}-*"))
        assert len(workdirs) == 1, workdirs
        cmd = await s.send("prune", thread=thread_id, timeout=30)
        assert cmd.status == "done", cmd.result
        # The thread may have had more than this run going (a node's seeds run side by side).
        killed = re.search(r"(\d+) run\(s\) killed", cmd.result)
        assert killed and int(killed.group(1)) >= 1, cmd.result
        run = await s.wait(lambda: s.rows("SELECT * FROM runs WHERE id = ? AND status = 'cancelled'", (run_id,)),
                           20, "the pruned run to be cancelled")
        cancelled = await s.scalar("SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id "
                                   "WHERE n.thread_id = ? AND r.status = 'cancelled' AND r.started_at IS NOT NULL",
                                   (thread_id,))
        assert cancelled == int(killed.group(1)), (cancelled, cmd.result)
        assert run[0]["ended_at"] - run[0]["started_at"] < 25  # long before its 30 s sleep ended
        # the worker tore its sandbox down and removed its directory
        await wait_for(lambda: not glob.glob(workdirs[0]), 20, "the worker's run directory to go")
        sandboxes = subprocess.run(["pgrep", "-f", workdirs[0]], capture_output=True, text=True)
        assert sandboxes.stdout.strip() == "", sandboxes.stdout

    @pytest.mark.skipif(not FOLLOWS_SLOTS, reason="the engine does not follow refresh_slots() yet")
    async def test_the_engine_follows_nodes_joining_and_leaving(tmp_path: Path, ray_engine, cluster) -> None:
        task = make_task(tmp_path / "bowl", sleep=0, playbook=slow_playbook(1, 2))
        s = await ray_engine(task, threads=2)
        before = {sl.name for sl in s.engine.executor.slots}

        async def slots_event(count: int):
            rows = await s.rows("SELECT data FROM events WHERE kind = 'engine' AND message LIKE 'slots changed%' "
                                "ORDER BY id DESC LIMIT 1")
            return rows and len(json.loads(rows[0]["data"])["slots"]) == count and json.loads(rows[0]["data"])

        node = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK, object_store_memory=80 << 20)
        try:
            data = await s.wait(lambda: slots_event(3), 30, "the engine to offer the new node's slot")
            (new,) = data["added"]
            assert new not in before
            await s.wait(lambda: s.rows("SELECT id FROM runs WHERE slot = ? AND status = 'done'", (new,)), 60,
                         "a run to finish on the new node's slot")
            assert await s.reader.engine_slots() == data["slots"]  # what `threadlab status` counts
        finally:
            cluster.remove_node(node)
        data = await s.wait(lambda: slots_event(2), 60, "the engine to stop offering the slot of the node that left")
        assert data["removed"] == [new]
        # research goes on on the slots left (runs started after the new node's last one)
        await s.wait(lambda: s.scalar("SELECT COUNT(*) FROM runs WHERE status = 'done' AND slot != ? AND id > "
                                      "(SELECT MAX(id) FROM runs WHERE slot = ?)", (new, new)), 60,
                     "runs to go on on the remaining slots")
        assert s.dead() is None

    # ---- the executor alone ------------------------------------------------------------------

    async def _ignore(batch) -> None:
        return None

    async def changes_until(executor: RayExecutor, level: str, timeout: float, what: str,
                            slots: int | None = None) -> SlotChange:
        """The refresh_slots() changes merged until one brings an event of `level` (and the
        executor has `slots` slots): the bridge reports what it sees one message at a time."""
        merged = SlotChange()

        async def seen() -> bool:
            nonlocal merged
            change = await executor.refresh_slots()
            if change is not None:
                merged = SlotChange(merged.added + change.added, merged.removed + change.removed,
                                    merged.events + change.events, change.status)
            return any(lvl == level for lvl, _ in merged.events) and (
                slots is None or len(executor.slots) == slots)

        await wait_for(seen, timeout, what)
        return merged

    def bowl_request(tmp_path: Path, run_id: int, sleep: float | None = None) -> RunRequest:
        task_dir = make_task(tmp_path / f"bowl{run_id}", sleep=sleep)
        task = load_task(str(task_dir), "smoke")
        return RunRequest(
            run_id=run_id, node_id=1, seed=0, files_dir=str(task_dir), run_dir=str(tmp_path / f"run{run_id}"),
            budget_s=task.budget_s, grace_s=task.grace_s, eval_timeout_s=task.eval_timeout_s,
            run_command=task.run_command, eval_command=task.eval_command,
            protected=("run.py", "bowl.py", "evaluate.py", "task.toml"), private_paths=task.private,
        )

    async def test_slots_follow_the_nodes_of_the_cluster(tmp_path: Path, cluster) -> None:
        executor = await RayExecutor.connect(cluster.address, node_ip_address=LOOPBACK,
                                             log_path=tmp_path / "bridge.log")
        try:
            assert len(executor.slots) == 2
            first = await executor.refresh_slots()  # changes since connect(): none but the news
            assert first is not None and not first.added and not first.removed, first
            assert [level for level, _ in first.events] == ["info"] and "connected" in first.events[0][1]
            assert await executor.refresh_slots() is None
            node = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK, object_store_memory=80 << 20)
            try:
                change = await wait_for(executor.refresh_slots, 30, "a slot for the new node")
                assert len(change.added) == 1 and not change.removed, change
                assert len(executor.slots) == 3 and "2 node(s), 3 slot(s)" in change.status
                # a run pinned to the new node's slot runs there
                got: list = []

                async def sink(batch):
                    got.extend(batch)

                outcome = await executor.execute(bowl_request(tmp_path, 1), change.added[0], sink)
                assert outcome.status == RunStatus.DONE, outcome.error
                assert outcome.extra["ray_node"] == node.node_id and got
            finally:
                cluster.remove_node(node)
            change = await wait_for(executor.refresh_slots, 60, "the slot of the node that left to go")
            assert len(change.removed) == 1 and not change.added, change
            assert len(executor.slots) == 2
        finally:
            await executor.shutdown()

    async def test_a_lost_cluster_interrupts_runs_and_is_reconnected(tmp_path: Path) -> None:
        port = 43917
        lost = start_cluster(num_cpus=2, gcs_server_port=port)
        address = f"{LOOPBACK}:{port}"
        executor = await RayExecutor.connect(address, node_ip_address=LOOPBACK, log_path=tmp_path / "bridge.log")
        found = None
        try:
            slot = executor.slots[0]
            run = asyncio.create_task(executor.execute(bowl_request(tmp_path, 7, sleep=60), slot, _ignore))
            await wait_for(lambda: executor._pending.get(7) is not None and worker_pids(7), 30, "the run to start")
            lost.shutdown()
            outcome = await asyncio.wait_for(run, 60)
            assert outcome.status == RunStatus.INTERRUPTED, outcome
            assert "lost" in outcome.error
            change = await changes_until(executor, "error", 30, "the lost connection to be reported")
            assert [lvl for lvl, _ in change.events] == ["info", "error"] and len(change.removed) == 2, change
            assert "lost the connection" in change.events[-1][1] and "reconnecting" in change.status
            assert not executor.connected and executor.slots == ()
            executor.unavailable_wait_s = 0.5
            outcome = await executor.execute(bowl_request(tmp_path, 8), slot, _ignore)
            assert outcome.status == RunStatus.INTERRUPTED and "not connected" in outcome.error, outcome
            found = start_cluster(num_cpus=2, gcs_server_port=port)
            change = await changes_until(executor, "info", 90, "the executor to reconnect", slots=2)
            assert any(lvl == "info" and "connected" in m for lvl, m in change.events), change
            assert len(change.added) == 2 and executor.connected
            outcome = await executor.execute(bowl_request(tmp_path, 9), executor.slots[0], _ignore)
            assert outcome.status == RunStatus.DONE, outcome.error
        finally:
            await executor.shutdown()
            if found is not None:
                found.shutdown()


    async def test_an_unreachable_cluster_is_one_clear_error(tmp_path: Path) -> None:
        with pytest.raises(ExecutorError) as info:
            await RayExecutor.connect(f"{LOOPBACK}:45999", node_ip_address=LOOPBACK, log_path=tmp_path / "bridge.log",
                                      connect_timeout_s=60, bridge_env={"RAY_gcs_rpc_server_reconnect_timeout_s": "3"})
        assert "cannot connect to the Ray cluster at 127.0.0.1:45999" in str(info.value)
        assert "ray status --address 127.0.0.1:45999" in info.value.hint
