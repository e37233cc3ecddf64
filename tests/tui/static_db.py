"""A deterministic state.db for the TUI tests: fixed rows, fixed timestamps, and a git
repository whose commits have fixed dates (so the diffs, and the screens, never change).

Rows go in through the Store's write API; only the timestamps are then pinned by SQL.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from engine.models import NodeStatus
from engine.store import Store

T0 = 1_700_000_000.0  # every row's time is T0 + a few seconds
NOW = T0 + 600.0  # the frozen clock of the app under test


def clock() -> float:
    return NOW


BASE = '''"""Gradient descent on a bowl. The only file proposals may edit."""

# knobs
LR = 0.02
STEPS = 40


def solve(x, grad, report):
    for step in range(STEPS):
        g = grad(x)
        x = [xi - LR * gi for xi, gi in zip(x, g)]
        report(step, "grad_norm", sum(gi * gi for gi in g) ** 0.5)
    return x
'''
MOMENTUM = BASE.replace(
    "    for step in range(STEPS):\n        g = grad(x)\n        x = [xi - LR * gi for xi, gi in zip(x, g)]\n",
    "    v = [0.0] * len(x)\n    for step in range(STEPS):\n        g = grad(x)\n"
    "        v = [0.9 * vi + gi for vi, gi in zip(v, g)]\n        x = [xi - LR * vi for xi, vi in zip(x, v)]\n",
)
SIGN = MOMENTUM.replace("LR * vi", "LR * (1 if vi > 0 else -1)")
STEP_UP = MOMENTUM.replace("LR = 0.02", "LR = 0.03")
NESTEROV = STEP_UP.replace("g = grad(x)", "g = grad([xi - LR * 0.9 * vi for xi, vi in zip(x, v)])")
HALF = BASE.replace("STEPS = 40", "STEPS = 20")


class Repo:
    """A git repository whose commits have fixed dates and identity: fixed shas."""

    def __init__(self, path: Path):
        self.path = path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
            "GIT_DIR": str(path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "2023-11-14T22:13:20Z",
            "GIT_COMMITTER_DATE": "2023-11-14T22:13:20Z", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        }
        self.git("init", "--bare", "-q", str(path))

    def git(self, *args: str, input: bytes | None = None) -> str:
        return subprocess.run(["git", *args], env=self.env, input=input, capture_output=True, check=True
                              ).stdout.decode().strip()

    def commit(self, text: str, parent: str | None, message: str) -> str:
        blob = self.git("hash-object", "-w", "--stdin", input=text.encode())
        tree = self.git("mktree", input=f"100644 blob {blob}\tsolution.py\n".encode())
        return self.git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)


async def build_static_db(folder: Path, *, runs_dir: bool = True) -> Path:
    """state.db in folder: one task, four threads in every status, nodes in every status,
    runs, samples, verdicts, alerts, events; no engine (its lock is absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    repo = Repo(folder / "repo.git")
    c1 = repo.commit(BASE, None, "baseline")
    c2 = repo.commit(MOMENTUM, c1, "momentum")
    c3 = repo.commit(SIGN, c2, "sign")
    c4 = repo.commit(STEP_UP, c2, "step up")
    c6 = repo.commit(NESTEROV, c4, "nesterov")
    c5 = repo.commit(HALF, c1, "half")
    db = folder / "state.db"
    store = await Store.open(db, writer=True, create=True)
    try:
        task = await store.upsert_task("bowl", "/tasks/bowl", "smoke", "loss", "minimize", "", str(repo.path))
        await store.save_session({"task": "/tasks/bowl", "profile": "smoke", "threads": 2, "cpu_slots": 2,
                                  "budget_s": None}, task.id, reset_elapsed=True)

        async def node(thread, parent, sha, title, status, hypothesis="", parent2=None, error="", origin=None):
            return await store.add_node(
                task_id=task.id, thread_id=thread, parent_id=parent, commit_sha=sha, title=title,
                hypothesis=hypothesis, origin=origin or {"kind": "idea"}, status=status, parent2_id=parent2,
                error=error)

        n1 = await node(None, None, c1, "baseline", NodeStatus.BASELINE, "the task's seed code",
                        origin={"kind": "baseline"})
        await store.set_task_root(task.id, n1)
        t1 = (await store.add_thread(task.id, "t1", n1, "search")).id
        t2 = (await store.add_thread(task.id, "t2", n1, "search")).id
        t3 = (await store.add_thread(task.id, "t3", n1, "search")).id
        t4 = (await store.add_thread(task.id, "t4", n1, "search")).id
        n2 = await node(t1, n1, c2, "Heavy-ball momentum", NodeStatus.ACCEPTED,
                        "Momentum carries the walk along the shallow directions of the narrow valley.")
        n3 = await node(t1, n2, c3, "Sign descent", NodeStatus.REJECTED,
                        "Stepping by the sign of the gradient ignores badly scaled directions.")
        n4 = await node(t1, n2, c4, "Larger step", NodeStatus.ACCEPTED, "With momentum a larger step is stable.")
        n5 = await node(t2, n1, c5, "Half the steps", NodeStatus.FLAGGED, "Fewer steps, same result?",
                        error="a guard raised an alert")
        n6 = await node(t1, n4, c6, "Nesterov look-ahead", NodeStatus.VALIDATING,
                        "Evaluating the gradient ahead of the step damps the oscillation.")
        n7 = await node(t2, n1, None, "merge #4 into #1", NodeStatus.FAILED, "combine #1 and #4", parent2=n4,
                        error="merge conflict in solution.py", origin={"kind": "merge", "with": n4})
        n8 = await node(t3, n1, c2, "Heavy-ball momentum", NodeStatus.CANCELLED, error="pruned")
        n9 = await node(t1, n4, c4, "Larger step, again", NodeStatus.QUEUED)
        n10 = await node(t4, n1, c3, "Sign descent", NodeStatus.RUNNING)
        metrics = {n1: (0.5, 0.01, 5), n2: (0.3, 0.012, 5), n3: (0.52, None, 1), n4: (0.21, 0.008, 5),
                   n5: (0.12, None, 1), n6: (0.18, 0.01, 3)}
        for nid, (m, sd, k) in metrics.items():
            await store.update_node(nid, metric=m, metric_std=sd, n_runs=k,
                                    p_value={n2: 0.001, n4: 0.004, n3: 0.9}.get(nid))
        await store.update_thread(t1, head_node_id=n4, pinned=1)
        await store.update_thread(t2, status="paused", note="paused")
        await store.update_thread(t3, status="pruned", note="pruned")
        await store.update_thread(t4, status="done", note="retired after 8 attempts")

        # runs: the baseline's five seeds, node 2's validation, node 6 validating (one running)
        await store.queue_runs(n1, [(s, "baseline") for s in range(5)])
        await store.queue_runs(n2, [(0, "explore")] + [(s, "validate") for s in (1, 2, 3, 4)])
        await store.queue_runs(n6, [(0, "explore"), (1, "validate"), (2, "validate")])
        await store.queue_runs(n10, [(0, "explore")])
        run_rows = await store.rows("SELECT id, node_id, seed FROM runs ORDER BY id")
        running = []
        for r in run_rows:
            run_dir = folder / "state.run" / "runs" / f"{r['id']}"
            if runs_dir:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "stdout.log").write_text("".join(f"step {i} loss {1.0 / (i + 1):.4f}\n" for i in range(5)))
                (run_dir / "stderr.log").write_text("")
            await store.start_run(r["id"], f"cpu{r['id'] % 2}", str(run_dir))
            if r["node_id"] == n6 and r["seed"] == 2 or r["node_id"] == n10:
                running.append(r["id"])
                continue
            value = metrics.get(r["node_id"], (0.4,))[0] + 0.001 * r["seed"]
            await store.finish_run(r["id"], status="done", metric=value, exit_code=0, error="", extra={},
                                   started_at=None, ended_at=T0)
            await store.add_samples(r["id"], [{"step": i, "name": "loss", "value": 1.0 / (i + 1), "t": T0}
                                              for i in range(20)])
        await store.add_samples(running[0], [{"step": i, "name": "loss", "value": 2.0 / (i + 2), "t": T0}
                                             for i in range(30)])
        await store.add_verdict(n2, True, "better than #1 on 5 seeds (p = 0.001 < 0.05)",
                                {"status": "accepted", "effect": 0.2})
        await store.add_verdict(n3, False, "worse than its parent on the exploration seed", {"status": "rejected"})
        await store.add_verdict(n4, True, "better than #2 on 5 seeds (p = 0.004 < 0.05)", {"status": "accepted"})
        await store.add_verdict(n5, False, "a guard raised an alert", {"status": "flagged"})
        await store.add_alert(n5, None, "budget_steps", "the candidate ran half the steps the budget allows",
                              {"steps": 20, "expected": 40})
        await store.add_alert(n3, None, "audit_gap", "val/audit gap far from the baseline's", {"gap": 0.3})
        await store.acknowledge_alert(2)
        for i, (kind, message) in enumerate([
            ("engine", "engine started on task bowl (profile smoke) with 2 slot(s): cpu0, cpu1"),
            ("accepted", "thread t1: #2 Heavy-ball momentum accepted"),
            ("accepted", "thread t1: #4 Larger step accepted"),
            ("thread", "thread t3: pruned"),
        ]):
            await store.add_event("info", kind, message, **({"slots": ["cpu0", "cpu1"]} if i == 0 else {}))
        # pin every time: the screens must not change from one run to the next
        async with store.write() as w:
            for table, cols in (("tasks", ["created_at"]), ("threads", ["created_at", "updated_at"]),
                                ("nodes", ["created_at", "updated_at"]), ("verdicts", ["created_at"]),
                                ("alerts", ["created_at"]), ("events", ["t"]), ("samples", ["t"])):
                for col in cols:
                    await w.execute(f"UPDATE {table} SET {col} = ? + id", (T0,))
            await w.execute("UPDATE runs SET queued_at = ? + id, started_at = ? + id * 2", (T0, T0))
            await w.execute("UPDATE runs SET ended_at = started_at + 3 + id WHERE status = 'done'")
            await w.execute("UPDATE session SET updated_at = ?, elapsed_s = 600", (T0,))
    finally:
        await store.close()
    return db
