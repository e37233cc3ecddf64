"""The research engine: Threads propose, the scheduler runs, the judge decides.

One asyncio process owns a state.db. Four loops run side by side:

- heartbeat: keeps the engine lock fresh and counts the session's research time;
- commands: carries out what people asked for (prune, fork, merge, pin, pause, stop);
- planner: keeps every running Thread `lookahead` candidates ahead, so a freed Slot
  always finds a queued Run;
- dispatcher: starts queued Runs on free Slots, baseline and validation runs first.

When a Run ends, the judge decides its Node: a candidate that beats its parent on the
exploration seed is re-run on the validation seeds and accepted only if a one-sided Welch
t-test says it is better. Every step is committed to state.db as it happens, so a killed
engine restarts where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import math
import shutil
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from engine import guards
from engine.config import SessionConfig
from engine.edits import normalize_path
from engine.errors import EditError, ExecutorError, ThreadlabError, WorkspaceError
from engine.models import (
    CommandKind,
    NodeStatus,
    Proposal,
    RunOutcome,
    RunPurpose,
    RunRequest,
    RunStatus,
    Slot,
    ThreadStatus,
)
from engine.proposers.base import Attempt, LessonView, ProposalContext, Proposer, ProposerError
from engine.records import NodeRow, RunRow, ThreadRow
from engine.stats import TargetTest, beyond_target, compare
from engine.store import Store
from engine.taskfile import TaskSpec, load_task
from engine.workspace import Workspace

log = logging.getLogger(__name__)

ACTIVE_RUN = (RunStatus.QUEUED, RunStatus.RUNNING)
MAX_PARENT_RETRIES = 2  # failed measurements of a parent seed before its children give up
MAX_RUN_ATTEMPTS = 3  # a run interrupted this often (its worker lost each time) fails
MACHINE_FAILURES_TO_STOP = 3  # runs in a row this machine cannot start before the engine stops
MACHINE_RETRY_S = 2.0  # a slot whose run could not start waits this long (times the count) first
PROPOSER_FAILURES_TO_PAUSE = 3  # failed proposals in a row (after the SDK's own retries) before a thread pauses


class Executor(Protocol):
    """Runs Runs on Slots. A candidate's failure is an outcome; this machine's failure
    raises ExecutorError. An INTERRUPTED outcome with extra["ran"] False never started (its
    slot was gone): it is queued again without counting an attempt. An executor whose slots
    change may also have `async refresh_slots()` (see engine/ray_executor.py)."""

    slots: list[Slot]

    async def execute(
        self, req: RunRequest, slot: Slot, on_samples: Callable[[list[dict[str, Any]]], Awaitable[None]]
    ) -> RunOutcome: ...

    async def cancel(self, run_id: int) -> bool: ...

    async def shutdown(self) -> None: ...


def _repo_path(path: str) -> str:
    try:
        return normalize_path(path)
    except EditError:
        return path  # an absolute or escaping path is outside the editable files too


def make_proposer(name: str, task: TaskSpec, seed: int, *, config: SessionConfig | None = None,
                  run_root: Path | None = None) -> Proposer:
    if name == "search":
        from engine.playbook import load_playbook
        from engine.proposers.search import SearchProposer

        return SearchProposer(load_playbook(task), seed=seed)
    if name == "claude":
        from engine.proposers.claude import ClaudeProposer

        return ClaudeProposer.from_extra(config.extra if config is not None else {})
    if name == "watch":
        from engine.proposers.watch import WatchProposer

        if run_root is None:
            raise ThreadlabError("the watch proposer needs the engine's run directory")
        return WatchProposer(run_root)
    from engine.config import PROPOSERS

    raise ThreadlabError(f"unknown proposer {name!r}", hint=f"available: {', '.join(PROPOSERS)}")


def _tail_text(path: Path, lines: int = 40, limit: int = 64_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.strip().splitlines()[-lines:])


def latest_good_runs(runs: list[RunRow]) -> dict[int, RunRow]:
    """seed -> its latest run that finished with a metric (runs in run order): the runs
    whose metrics the judge compares."""
    return {r.seed: r for r in runs if r.status == RunStatus.DONE and r.metric is not None}


def constraint_test(task: TaskSpec, runs: list[RunRow], seeds: tuple[int, ...]) -> TargetTest:
    """The task's [accept] constraint on the seeds' latest good runs: the mean of
    extra[key] beyond the target by a one-sample t-test."""
    rule = task.accept
    assert rule is not None
    good = latest_good_runs(runs)
    found = [good[s].extra.get(rule.key) if s in good else None for s in seeds]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in found):
        return TargetTest(math.nan, rule.target, 1.0, False,
                          f"the runs on seeds {list(seeds)} do not all report a finite {rule.key}: {found}")
    return beyond_target([float(v) for v in found], rule.target, rule.below, rule.alpha, rule.key)


def idea_of(origin: dict[str, Any], title: str) -> str:
    """A Lesson's idea key: the playbook idea, the knob set, or the title."""
    kind = origin.get("kind")
    if kind == "idea":
        return str(origin.get("idea"))
    if kind == "knobs":
        return "knobs: " + ", ".join(f"{k}={v}" for k, v in sorted(origin.get("values", {}).items()))
    if kind == "merge":
        return f"merge #{origin.get('with')}"
    return title


class Engine:
    def __init__(
        self,
        store: Store,
        config: SessionConfig,
        run_root: Path,
        executor: Executor,
        *,
        heartbeat_s: float = 1.0,
        command_poll_s: float = 0.2,
    ):
        self.store = store
        self.config = config
        self.run_root = Path(run_root)
        self.executor = executor
        self.heartbeat_s = heartbeat_s
        self.command_poll_s = command_poll_s
        self.task: TaskSpec = load_task(config.task, config.profile)
        self.task_id = 0
        self.root_id = 0
        self.ws: Workspace | None = None
        self.proposers: dict[str, Proposer] = {}
        self.free_slots: list[Slot] = list(executor.slots)
        self.running: dict[int, Slot] = {}  # run id -> the slot it holds
        self._run_tasks: set[asyncio.Task[None]] = set()  # until each run's result is recorded
        self.draining = False  # research time spent: finish validations, start nothing new
        self.stop_reason = ""
        self._stop = asyncio.Event()
        self._wake_dispatch = asyncio.Event()
        self._wake_plan = asyncio.Event()
        self._judge_lock = asyncio.Lock()
        # tree id -> the commit of the first node with that code (None until first used);
        # the lock makes "is it new?" and "it is known now" one step for concurrent proposals
        self._trees: dict[str, str] | None = None
        self._trees_lock = asyncio.Lock()
        self._materialize_locks: dict[int, asyncio.Lock] = {}
        self._elapsed = 0.0
        self._infra_failures = 0  # runs in a row that this machine could not start
        self._baseline_warned = False  # the evaluator's warning on the baseline, posted once
        # Proposals are made concurrently, one at a time per Thread: a slow proposer (Claude,
        # a person) never holds up the others.
        self._proposing: dict[int, asyncio.Task[None]] = {}  # thread id -> its proposal under way
        self._propose_after: dict[int, float] = {}  # thread id -> monotonic time it may ask again
        self._proposer_failures: dict[int, int] = {}  # thread id -> failed proposals in a row
        self._watched: dict[int, str] = {}  # thread id -> the folder a watcher edits
        self._watch: Proposer | None = None
        # Held from a proposal's last look at its thread's status until its node is added, and
        # while a command is carried out: a pause or prune never lands in between.
        self._thread_state_lock = asyncio.Lock()

    # ---- lifecycle -----------------------------------------------------------------

    async def run(self) -> str:
        """Own the database until stopped; returns why it stopped."""
        taken = await self.store.acquire_lock()
        try:
            if taken is not None:
                await self.store.add_event(
                    "warning", "lock", f"took over the lock of a dead engine (pid {taken.pid} on {taken.host})"
                )
            heartbeat = asyncio.create_task(self._guarded(self._heartbeat_loop(), "_heartbeat_loop"))
            try:
                await self._start()
            except ThreadlabError as exc:
                self.stop(str(exc))
                await self.store.add_event("error", "start", f"{exc}" + (f" ({exc.hint})" if exc.hint else ""))
                heartbeat.cancel()
                raise
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
                except (NotImplementedError, RuntimeError):
                    pass  # not the main thread (tests)
            loops = [heartbeat] + [
                asyncio.create_task(self._guarded(f(), f.__name__))
                for f in (self._command_loop, self._plan_loop, self._dispatch_loop)
            ]
            self._wake_dispatch.set()
            self._wake_plan.set()
            await self._stop.wait()
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    asyncio.get_running_loop().remove_signal_handler(sig)
            await self._shutdown()
            await self.store.release_lock()
        return self.stop_reason

    def stop(self, reason: str = "stopped") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    async def _guarded(self, coro: Awaitable[None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must stop the engine loudly, never leave it hung
            log.exception("engine loop %s crashed", name)
            self.stop(f"internal error in {name}: {exc!r}")
            try:
                await self.store.add_event("error", "crash", f"engine loop {name} crashed: {exc!r}")
            except Exception:  # noqa: BLE001 - the database itself may be what failed
                log.exception("could not record the crash")

    async def _start(self) -> None:
        from engine.sandbox import sandbox_warning

        task = self.task
        if task.prepare_command:
            await self._prepare()
        repo = self.run_root / "repos" / f"{task.name}-{task.profile}"
        self.ws = await asyncio.to_thread(Workspace.open_or_create, repo, task.path, task.private, task.include)
        changed = await asyncio.to_thread(self.ws.changed_since_root, task.path, task.private, task.include)
        if changed:  # its nodes were built on the old harness: never mix the two silently
            raise ThreadlabError(
                f"task {task.name} has changed since this database's sessions began: {', '.join(changed[:5])}",
                hint="start a new session with another --db, or put those files back as they were",
            )
        row = await self.store.upsert_task(
            task.name, str(task.path), task.profile, task.metric_name, str(task.direction), task.unit, str(repo)
        )
        self.task_id = row.id
        if row.root_node_id is None:
            self.root_id = await self.store.add_node(
                task_id=self.task_id, thread_id=None, parent_id=None, commit_sha=self.ws.root_sha,
                title="baseline", hypothesis="the task's seed code", origin={"kind": "baseline"},
                status=NodeStatus.QUEUED, seeds=[(s, str(RunPurpose.BASELINE)) for s in task.all_seeds],
            )
            await self.store.set_task_root(self.task_id, self.root_id)
        else:
            self.root_id = row.root_node_id
        await self.store.save_session(self.config.to_dict(), self.task_id, reset_elapsed=False)
        session = await self.store.session()
        self._elapsed = session[1] if session else 0.0

        warning = sandbox_warning()
        if warning:
            log.warning(warning)
            await self.store.add_event("warning", "sandbox", warning)
        requeued = await self.store.requeue_interrupted()
        if requeued:
            await self.store.add_event(
                "warning", "recovery", f"{len(requeued)} run(s) were left running by a stopped engine; queued again",
                runs=requeued,
            )
        nodes = await self.store.nodes(self.task_id)
        for node in nodes:  # decisions a crash may have cut short
            if node.status in (NodeStatus.QUEUED, NodeStatus.RUNNING, NodeStatus.VALIDATING):
                await self._judge(node.id)
        for name in sorted({self.config.proposer_for(i) for i in range(max(self.config.threads, 1))}):
            self.proposers[name] = self._make_proposer(name)
        attempts = [self._attempt(n) for n in nodes if n.status not in (NodeStatus.QUEUED, NodeStatus.RUNNING)]
        for proposer in self.proposers.values():
            warm = getattr(proposer, "warm_start", None)
            if warm:
                warm(attempts)
        await self._fill_threads()
        await self.store.add_event(
            "info", "engine", f"engine started on task {task.name} (profile {task.profile}) with "
            f"{len(self.executor.slots)} slot(s): {', '.join(s.name for s in self.executor.slots)}",
            slots=[s.name for s in self.executor.slots],
        )

    async def _prepare(self) -> None:
        """Run the task's prepare step (data, tokenizer); it caches, so a second call is cheap."""
        log_path = self.run_root / "prepare.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        await self.store.add_event("info", "prepare", f"preparing task {self.task.name}: {' '.join(self.task.prepare_command)}")
        with open(log_path, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *self.task.prepare_command, cwd=self.task.path, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **dict(self._task_env())},
            )
            code = await proc.wait()
        if code != 0:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise ThreadlabError(
                f"preparing task {self.task.name} failed: {lines[-1] if lines else f'exit code {code}'}",
                hint=f"see {log_path}; run `threadlab prepare {self.task.name}` to try it by hand",
            )

    def _task_env(self) -> tuple[tuple[str, str], ...]:
        task = self.task
        return (("THREADLAB_PARAMS", json.dumps(task.params)), ("THREADLAB_PROFILE", task.profile),
                ("THREADLAB_TASK_DIR", str(task.path)), ("THREADLAB_DATA_DIR", str(task.data_dir)))

    async def _shutdown(self) -> None:
        proposing = list(self._proposing.values())
        for task in proposing:
            task.cancel()
        await asyncio.gather(*proposing, return_exceptions=True)
        for proposer in {id(p): p for p in [*self.proposers.values(), self._watch] if p is not None}.values():
            close = getattr(proposer, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        await self.executor.shutdown()
        if self._run_tasks:
            _, stuck = await asyncio.wait(self._run_tasks, timeout=10)
            for task in stuck:  # a run whose processes would not die: requeued below
                log.error("a run did not end within 10 s of the stop; abandoning it")
                task.cancel()
            await asyncio.gather(*self._run_tasks, return_exceptions=True)
        # Nothing runs now: a run marked running by a dispatch that the stop cut short is
        # queued again too.
        await self.store.requeue_interrupted()
        await self.store.add_event("info", "engine", f"engine stopped: {self.stop_reason or 'stopped'}")

    # ---- loops ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            now = time.monotonic()
            await self.store.heartbeat(now - last)
            self._elapsed += now - last
            last = now
            await self._refresh_slots()
            budget = self.config.budget_s
            if budget is not None and self._elapsed >= budget and not self.draining:
                self.draining = True
                await self.store.add_event("info", "budget", f"research time of {budget:.0f}s spent; finishing validations")
                self._wake_dispatch.set()

    async def _refresh_slots(self) -> None:
        """Follow an executor whose slots change (Ray: nodes join and leave, the connection
        to the cluster is lost and found again): offer the added slots, stop offering the
        removed ones (a run going on on one ends by itself: INTERRUPTED, queued again)."""
        refresh = getattr(self.executor, "refresh_slots", None)
        if refresh is None:
            return
        change = await refresh()
        # Offer exactly the executor's slots that no run holds: a slot whose run ended while
        # it was briefly gone (a quick reconnect) is offered again too.
        present = {s.name for s in self.executor.slots}
        busy = {s.name for s in self.running.values()}
        self.free_slots = [s for s in self.free_slots if s.name in present]
        free = {s.name for s in self.free_slots}
        returned = [s for s in self.executor.slots if s.name not in busy and s.name not in free]
        if returned:
            self.free_slots += returned
            self._wake_dispatch.set()
        if change is None:
            return
        for level, message in change.events:
            await self.store.add_event(level, "executor", message, executor_status=change.status)
        if not (change.added or change.removed):
            return
        gone = {s.name for s in change.removed}
        names = [s.name for s in self.executor.slots]
        what = ", ".join(filter(None, [f"+{len(change.added)}" if change.added else "",
                                       f"-{len(change.removed)}" if change.removed else ""]))
        await self.store.add_event(
            "info", "engine", f"slots changed ({what}): {len(names)} slot(s); {change.status}", slots=names,
            added=[s.name for s in change.added], removed=sorted(gone), executor_status=change.status,
        )
        self._wake_dispatch.set()
        self._wake_plan.set()

    async def _command_loop(self) -> None:
        while True:
            for cmd in await self.store.pending_commands():
                if cmd.kind == CommandKind.STOP:
                    # recorded before stopping: stopping cancels this loop
                    await self.store.finish_command(cmd.id, True, "stopping")
                    self.stop("stopped by command")
                    return
                try:
                    async with self._thread_state_lock:
                        result = await self._carry_out(CommandKind(cmd.kind), cmd.args)
                    await self.store.finish_command(cmd.id, True, result)
                except ThreadlabError as exc:
                    await self.store.finish_command(cmd.id, False, str(exc))
                except (ValueError, KeyError, TypeError) as exc:
                    await self.store.finish_command(cmd.id, False, f"bad command: {exc}")
                except Exception as exc:  # noqa: BLE001 - one bad command must not stop the engine
                    log.exception("command %s failed", cmd.id)
                    await self.store.finish_command(cmd.id, False, f"internal error: {exc!r}")
            await asyncio.sleep(self.command_poll_s)

    async def _plan_loop(self) -> None:
        # Not `while True`: Python 3.11's wait_for can swallow a cancel that lands while the
        # event it waits on is set (a proposal finishing as the engine stops).
        while not self._stop.is_set():
            # the slots can change while the engine runs (Ray)
            lookahead = math.ceil(max(1, len(self.executor.slots)) / max(1, self.config.threads)) + 1
            if not self.draining:
                for thread in await self.store.threads(self.task_id):
                    if thread.status != ThreadStatus.RUNNING or self._stop.is_set() or thread.id in self._proposing:
                        continue
                    if time.monotonic() < self._propose_after.get(thread.id, 0.0):
                        continue
                    if len(await self.store.open_nodes(thread.id)) < lookahead:
                        task = asyncio.create_task(self._guarded(self._propose(thread), f"proposer of {thread.name}"))
                        self._proposing[thread.id] = task
                        task.add_done_callback(lambda _t, tid=thread.id: self._proposal_done(tid))
            try:
                await asyncio.wait_for(self._wake_plan.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self._wake_plan.clear()

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake_dispatch.wait()
            self._wake_dispatch.clear()
            while self.free_slots and not self._stop.is_set():
                purposes = ["baseline", "validate"] + ([] if self.draining else ["explore"])
                queued = await self.store.next_queued_runs(len(self.free_slots), purposes)
                if not queued:
                    break
                for run in queued:
                    await self._start_run(run)
            if self.draining and not self._run_tasks and not await self.store.next_queued_runs(1, ["baseline", "validate"]):
                self.stop("research time spent")

    def _proposal_done(self, thread_id: int) -> None:
        self._proposing.pop(thread_id, None)
        self._wake_plan.set()  # maybe more to prepare

    def _release(self, slot: Slot) -> None:
        offered = any(s.name == slot.name for s in self.free_slots)  # by _refresh_slots already
        if not offered and any(s.name == slot.name for s in self.executor.slots):  # else it left (Ray)
            self.free_slots.append(slot)
        self._wake_dispatch.set()

    def _run_done(self, task: asyncio.Task[None]) -> None:
        self._run_tasks.discard(task)
        self._wake_dispatch.set()  # a draining engine may be done now

    async def _start_run(self, run: RunRow) -> None:
        slot = self.free_slots.pop(0)
        run_dir = self.run_root / "runs" / str(run.id)
        if not await self.store.start_run(run.id, slot.name, str(run_dir)):
            self.free_slots.insert(0, slot)
            return
        self.running[run.id] = slot
        task = asyncio.create_task(self._guarded(self._execute(run, slot, run_dir), f"run {run.id}"))
        self._run_tasks.add(task)
        task.add_done_callback(self._run_done)

    # ---- one run -------------------------------------------------------------------

    def _files_dir(self, node_id: int) -> Path:
        return self.run_root / "nodes" / str(node_id) / "files"

    async def _materialize(self, node: NodeRow) -> Path:
        files = self._files_dir(node.id)
        async with self._materialize_locks.setdefault(node.id, asyncio.Lock()):
            if files.is_dir():
                return files
            tmp = files.with_name("files.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            assert self.ws is not None and node.commit_sha
            await asyncio.to_thread(self.ws.export, node.commit_sha, tmp)
            tmp.rename(files)
            return files

    async def _execute(self, run: RunRow, slot: Slot, run_dir: Path) -> None:
        task = self.task
        outcome: RunOutcome | None = None
        broken: Exception | None = None
        try:
            node = await self.store.node(run.node_id)
            if node.status == NodeStatus.QUEUED and run.purpose == RunPurpose.EXPLORE:
                await self.store.mark_node_running(node.id)
            files = await self._materialize(node)
            protected = tuple(
                str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()
                and str(p.relative_to(files)) not in task.editable
            )
            db = self.store.path
            req = RunRequest(
                run_id=run.id, node_id=node.id, seed=run.seed, files_dir=str(files), run_dir=str(run_dir),
                budget_s=task.budget_s, grace_s=task.grace_s, eval_timeout_s=task.eval_timeout_s,
                run_command=task.run_command, eval_command=task.eval_command, protected=protected,
                private_paths=task.private,
                sealed=(str(db), f"{db}-wal", f"{db}-shm", *(str(self.run_root / d) for d in ("runs", "nodes", "repos"))),
                env=self._task_env(), readable=(str(task.data_dir),),
                setup_s=task.setup_s, timed_paths=task.timed_paths,
            )

            async def on_samples(batch: list[dict[str, Any]]) -> None:
                await self.store.add_samples(run.id, batch)

            outcome = await self.executor.execute(req, slot, on_samples)
            self._infra_failures = 0
        except (ExecutorError, WorkspaceError, OSError) as exc:
            broken = exc
        finally:
            self.running.pop(run.id, None)
            if broken is None:
                self._release(slot)
        if broken is not None:
            try:
                await self._machine_failed(run, broken)
            finally:
                self._release(slot)
            return
        assert outcome is not None
        ran = outcome.extra.get("ran", True)  # False: the executor never started it (its slot was gone)
        if outcome.status == RunStatus.INTERRUPTED and ran and not self._stop.is_set() \
                and run.attempt >= MAX_RUN_ATTEMPTS:
            # interrupted again and again (a Ray worker killed each time: out of memory?)
            outcome = dataclasses.replace(outcome, status=RunStatus.FAILED, error=(
                f"interrupted {run.attempt} times; last: {outcome.error or 'no reason given'}"))
        if outcome.status == RunStatus.INTERRUPTED:
            error = outcome.error or "the engine stopped during this run"
            await self.store.requeue_interrupted([run.id], error=error, counts=ran is not False)
            if not self._stop.is_set():  # a Ray worker or the cluster lost, not our own stop
                await self.store.add_event("warning", "executor", f"run #{run.id} interrupted: {error}; queued again",
                                           run=run.id)
            return
        alerts = [
            (run.node_id, a.guard, a.message or f"audit {a.guard} failed", a.evidence) for a in outcome.audits if not a.ok
        ]
        if outcome.status == RunStatus.TIMEOUT and outcome.extra.get("killed_in") == "setup":
            alerts.append((run.node_id, "runtime.budget", f"run #{run.id} overran its untimed set-up of "
                           f"{task.setup_s:.0f}s and was killed", {"setup_s": outcome.extra.get("setup_s"),
                                                                   "limit_s": task.setup_s}))
        elif outcome.status == RunStatus.TIMEOUT:
            alerts.append((run.node_id, "runtime.budget", f"run #{run.id} overran its budget of {task.budget_s:.0f}s "
                           f"(+{task.grace_s:.0f}s grace) and was killed", {"run_s": outcome.extra.get("run_s"),
                                                                            "budget_s": task.budget_s}))
        alerts += await self._result_alerts(run, outcome)
        await self._baseline_warning(run, outcome)
        await self.store.finish_run(
            run.id, status=outcome.status, metric=outcome.metric, exit_code=outcome.exit_code, error=outcome.error,
            extra=dict(outcome.extra, audits=[a.guard for a in outcome.audits]), started_at=None,
            ended_at=outcome.ended_at, alerts=alerts,
        )
        await self._judge(run.node_id)
        self._wake_plan.set()

    async def _machine_failed(self, run: RunRow, exc: Exception) -> None:
        """A run this machine could not start (sandbox gone, disk full, ...) is not the
        candidate's failure: it is queued again, and the engine stops after a few in a row
        rather than charge every proposal with it."""
        self._infra_failures += 1
        message = f"run #{run.id} could not start: {exc}"
        await self.store.requeue_interrupted([run.id], error=message)
        await self.store.add_event("error", "machine", message, run=run.id, in_a_row=self._infra_failures)
        if self._infra_failures >= MACHINE_FAILURES_TO_STOP:
            self.stop(f"{self._infra_failures} runs in a row could not start on this machine; last: {exc}. "
                      "Nothing was charged to the candidates; fix the cause, then `threadlab run` resumes")
            return
        await asyncio.sleep(MACHINE_RETRY_S * self._infra_failures)  # before this slot takes another run

    async def _baseline_warning(self, run: RunRow, outcome: RunOutcome) -> None:
        """An evaluator's `extra.warning` on the unmodified baseline is about the task set-up
        (e.g. too little data for the profile): a warning event once, never an Alert."""
        warning = outcome.extra.get("warning")
        if run.node_id == self.root_id and isinstance(warning, str) and warning and not self._baseline_warned:
            self._baseline_warned = True
            await self.store.add_event("warning", "task", f"baseline run #{run.id}: {warning[:1000]}", run=run.id)

    async def _result_alerts(self, run: RunRow, outcome: RunOutcome) -> list[tuple]:
        """Guards on the evaluator's result: the audits it must report, and result keys far
        from the baseline's (a statistical guard, e.g. a training task's val/audit gap)."""
        alerts: list[tuple] = []
        if outcome.status != RunStatus.DONE:
            return alerts
        missing = sorted(set(self.task.required_audits) - {a.guard for a in outcome.audits})
        if missing:
            alerts.append((run.node_id, "audit.missing", f"the result lacks the audits {', '.join(missing)}: it did "
                           "not come from the task's evaluator as written", {"missing": missing}))
        if run.node_id == self.root_id:
            return alerts
        base_runs = [r for r in await self.store.runs_of(self.root_id) if r.status == RunStatus.DONE]
        for key, tolerance in self.task.baseline_relative.items():
            value = outcome.extra.get(key)
            base = [r.extra[key] for r in base_runs if isinstance(r.extra.get(key), (int, float))]
            if not base:
                continue
            if not isinstance(value, (int, float)):
                alerts.append((run.node_id, f"audit.{key}", f"the result lacks {key}, which the baseline reports",
                               {"value": value}))
                continue
            mean = statistics.fmean(base)
            if abs(value - mean) > tolerance:
                alerts.append((run.node_id, f"audit.{key}", f"{key} is {value:.4g}, the baseline's is {mean:.4g} "
                               f"(tolerance {tolerance:g})", {"value": value, "baseline": mean, "tolerance": tolerance}))
        return alerts

    # ---- the judge -----------------------------------------------------------------

    async def _metrics(self, node_id: int) -> tuple[dict[int, float], dict[int, int], bool, list[RunRow]]:
        """(seed -> metric of its latest good run, seed -> failed runs, any run active, runs)."""
        runs = await self.store.runs_of(node_id)
        metrics = {seed: r.metric for seed, r in latest_good_runs(runs).items()}
        failures: dict[int, int] = {}
        for r in runs:
            if r.status in (RunStatus.FAILED, RunStatus.TIMEOUT):
                failures[r.seed] = failures.get(r.seed, 0) + 1
        active = any(r.status in ACTIVE_RUN for r in runs)
        return metrics, failures, active, runs

    async def _ensure_measured(self, node_id: int, seeds: tuple[int, ...]) -> str | None:
        """Queue runs of node_id on the seeds it lacks; an error when it cannot be measured."""
        metrics, failures, _, runs = await self._metrics(node_id)
        pending = {r.seed for r in runs if r.status in ACTIVE_RUN}
        missing = [s for s in seeds if s not in metrics and s not in pending]
        hopeless = [s for s in missing if failures.get(s, 0) >= MAX_PARENT_RETRIES]
        if hopeless:
            return f"node #{node_id} has no metric on seed(s) {hopeless}"
        purpose = RunPurpose.BASELINE if node_id == self.root_id else RunPurpose.VALIDATE
        if missing:
            await self.store.queue_runs(node_id, [(s, str(purpose)) for s in missing])
            self._wake_dispatch.set()
        return None

    async def _judge(self, node_id: int) -> None:
        async with self._judge_lock:
            node = await self.store.node(node_id)
            if node.status not in (NodeStatus.QUEUED, NodeStatus.RUNNING, NodeStatus.VALIDATING):
                # a decided node measured again for its children (a fork or merge)
                await self._rejudge_children(node_id)
                return
            if node.id == self.root_id:
                await self._judge_baseline(node)
            else:
                await self._judge_candidate(node)

    async def _judge_baseline(self, node: NodeRow) -> None:
        metrics, failures, active, runs = await self._metrics(node.id)
        if active:
            return
        failed = [r for r in runs if r.status in (RunStatus.FAILED, RunStatus.TIMEOUT)]
        if failed and len(metrics) < len(self.task.all_seeds):
            error = f"the baseline failed on seed {failed[-1].seed}: {failed[-1].error}"
            await self.store.update_node(node.id, status=NodeStatus.FAILED, error=error)
            await self.store.add_event("error", "baseline", error + "; fix the task and start again")
            self.stop("the baseline failed: " + failed[-1].error.splitlines()[0] if failed[-1].error else "the baseline failed")
            return
        values = list(metrics.values())
        await self.store.update_node(
            node.id, status=NodeStatus.BASELINE, metric=statistics.fmean(values),
            metric_std=statistics.stdev(values) if len(values) > 1 else 0.0, n_runs=len(values),
        )
        await self._rejudge_children(node.id)

    async def _rejudge_children(self, node_id: int) -> None:
        for child in await self.store.rows(
            "SELECT id FROM nodes WHERE parent_id = ? AND status IN ('queued', 'running', 'validating')", (node_id,)
        ):
            await self._judge_candidate(await self.store.node(child["id"]))

    async def _judge_candidate(self, node: NodeRow) -> None:
        """Decide a candidate as far as its runs allow, and queue what the decision still needs.

        The exploration seeds select: a candidate no better than its parent there is rejected.
        The validation seeds, fresh ones, decide by the t-test, so the seed that selected the
        candidate does not also vouch for it.
        """
        task = self.task
        metrics, _, active, runs = await self._metrics(node.id)
        if await self.store.alerts(node.id):
            await self._finish(node, NodeStatus.FLAGGED, "a guard raised an alert", metrics)
            return
        broken = [r for r in runs if r.status in (RunStatus.FAILED, RunStatus.TIMEOUT)]
        if broken:
            r = broken[0]
            what = "ran past its budget" if r.status == RunStatus.TIMEOUT else "failed"
            await self._finish(node, NodeStatus.FAILED, f"run #{r.id} (seed {r.seed}) {what}: {r.error}", metrics)
            return
        validating = node.status == NodeStatus.VALIDATING
        seeds = task.validate_seeds if validating else task.explore_seeds
        if active:
            return
        missing = [s for s in seeds if s not in metrics]
        if missing:  # a crash cut the decision short after its status was written
            purpose = RunPurpose.VALIDATE if validating else RunPurpose.EXPLORE
            await self.store.queue_runs(node.id, [(s, str(purpose)) for s in missing])
            self._wake_dispatch.set()
            return
        assert node.parent_id is not None
        problem = await self._ensure_measured(node.parent_id, seeds)
        if problem:
            await self._finish(node, NodeStatus.FAILED, problem, metrics)
            return
        parent_metrics, _, _, _ = await self._metrics(node.parent_id)
        if any(s not in parent_metrics for s in seeds):
            return  # judged again when the parent's runs end (_judge rejudges children)
        cand = [metrics[s] for s in seeds]
        par = [parent_metrics[s] for s in seeds]
        if not validating:
            gain = task.improvement(statistics.fmean(cand), statistics.fmean(par))
            if gain <= task.noise_floor:
                await self._finish(
                    node, NodeStatus.REJECTED,
                    f"no better than its parent on the exploration seed(s): {statistics.fmean(cand):.6g} vs "
                    f"{statistics.fmean(par):.6g}", metrics, effect=gain,
                )
                return
            await self.store.start_validation(
                node.id, statistics.fmean(cand),
                [(s, str(RunPurpose.VALIDATE)) for s in task.validate_seeds if s not in metrics],
            )
            problem = await self._ensure_measured(node.parent_id, task.validate_seeds)
            if problem:
                await self._finish(node, NodeStatus.FAILED, problem, metrics)
                return
            self._wake_dispatch.set()
            # everything may be measured already (a fork measured this node's seeds)
            await self._judge_candidate(await self.store.node(node.id))
            return
        result = compare(cand, par, task.direction, task.confidence, task.noise_floor)
        accepted, reason = result.accepted, result.reason
        details: dict[str, Any] = {"candidate": cand, "parent": par, "seeds": list(seeds)}
        if task.accept is not None:  # the task's constraint, e.g. the speedrun's loss target
            check = constraint_test(task, runs, seeds)
            details["accept"] = dataclasses.asdict(check)
            if not check.passed:
                accepted = False
                reason = f"{check.reason}; {task.metric_name}: {result.reason}"
        status = NodeStatus.ACCEPTED if accepted else NodeStatus.REJECTED
        await self._finish(node, status, reason, metrics, effect=result.improvement, p_value=result.p_value,
                           details=details)

    async def _finish(
        self,
        node: NodeRow,
        status: NodeStatus,
        reason: str,
        metrics: dict[int, float],
        *,
        effect: float | None = None,
        p_value: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a Node's decision, its Verdict and Lesson, and move its Thread on."""
        values = list(metrics.values())
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else None
        accepted = status == NodeStatus.ACCEPTED
        await self.store.cancel_queued_runs([node.id])
        await self.store.update_node(
            node.id, status=status, metric=mean, metric_std=std, n_runs=len(values), p_value=p_value,
            error="" if status in (NodeStatus.ACCEPTED, NodeStatus.REJECTED) else reason,
        )
        await self.store.add_verdict(node.id, accepted, reason, dict(details or {}, status=str(status)))
        await self.store.add_lesson(
            self.task_id, node.id, idea_of(node.origin, node.title), accepted, effect,
            None if p_value is None else 1 - p_value, {"status": str(status), "reason": reason, "parent": node.parent_id},
        )
        decided = await self.store.node(node.id)
        for proposer in self.proposers.values():
            proposer.observe(self._attempt(decided))
        if node.thread_id is not None:
            await self._advance_thread(await self.store.thread(node.thread_id), decided)
        await self._rejudge_children(node.id)

    async def _advance_thread(self, thread: ThreadRow, node: NodeRow) -> None:
        if node.status == NodeStatus.ACCEPTED:
            head = await self.store.node(thread.head_node_id) if thread.head_node_id else None
            if head is None or head.metric is None or node.parent_id == head.id or (
                node.metric is not None and self.task.better(node.metric, head.metric)
            ):
                assert self.ws is not None and node.commit_sha
                await asyncio.to_thread(self.ws.set_branch, thread.branch, node.commit_sha)
                await self.store.update_thread(thread.id, head_node_id=node.id, stale_attempts=0)
                await self.store.add_event("info", "accepted", f"thread {thread.name}: #{node.id} {node.title} accepted; "
                                           f"{self.task.metric_name} {node.metric:.6g}")
                return
        stale = thread.stale_attempts + 1
        await self.store.update_thread(thread.id, stale_attempts=stale)
        if stale >= self.config.patience and not thread.pinned and thread.status == ThreadStatus.RUNNING:
            await self._close_thread(thread, ThreadStatus.DONE, f"retired after {stale} attempts without improvement")
            await self._fill_threads()

    # ---- threads -------------------------------------------------------------------

    async def _best_node(self) -> NodeRow:
        best = None
        for n in await self.store.nodes(self.task_id):
            if n.status in (NodeStatus.ACCEPTED, NodeStatus.BASELINE) and n.metric is not None:
                if best is None or self.task.better(n.metric, best.metric):
                    best = n
        return best or await self.store.node(self.root_id)

    async def _fill_threads(self) -> None:
        """Keep `config.threads` Threads running; new ones start from the best node."""
        threads = await self.store.threads(self.task_id)
        live = [t for t in threads if t.status in (ThreadStatus.RUNNING, ThreadStatus.PAUSED)]
        for i in range(len(threads), len(threads) + self.config.threads - len(live)):
            best = await self._best_node()
            await self._new_thread(best, self.config.proposer_for(i), f"t{i + 1}")

    async def _new_thread(self, at: NodeRow, proposer: str, name: str, note: str = "") -> ThreadRow:
        thread = await self.store.add_thread(self.task_id, name, at.id, proposer, note or f"started at #{at.id}")
        assert self.ws is not None and at.commit_sha
        await asyncio.to_thread(self.ws.set_branch, thread.branch, at.commit_sha)
        if proposer not in self.proposers:
            self.proposers[proposer] = self._make_proposer(proposer)
        self._wake_plan.set()
        return thread

    async def _close_thread(self, thread: ThreadRow, status: ThreadStatus, note: str) -> int:
        """Stop a Thread: cancel its queued runs and kill its running ones. Returns runs killed."""
        await self.store.update_thread(thread.id, status=str(status), note=note)
        open_nodes = await self.store.open_nodes(thread.id)
        await self.store.cancel_queued_runs([n.id for n in open_nodes])
        killed = 0
        for node in open_nodes:
            for r in await self.store.runs_of(node.id):
                if r.status == RunStatus.RUNNING and await self.executor.cancel(r.id):
                    killed += 1
            await self.store.update_node(node.id, status=NodeStatus.CANCELLED, error=note)
        await self.store.add_event("info", "thread", f"thread {thread.name}: {note}")
        return killed

    # ---- proposing -----------------------------------------------------------------

    def _attempt(self, n: NodeRow) -> Attempt:
        return Attempt(n.id, n.thread_id, n.parent_id, n.title, n.status, n.metric, n.origin, n.error)

    async def _context(self, thread: ThreadRow, head: NodeRow) -> ProposalContext:
        assert self.ws is not None and head.commit_sha
        nodes = await self.store.nodes(self.task_id)
        by_id = {n.id: n for n in nodes}
        ancestors: set[int] = set()
        stack = [head.id]
        while stack:
            nid = stack.pop()
            if nid in ancestors or nid not in by_id:
                continue
            ancestors.add(nid)
            stack += [p for p in (by_id[nid].parent_id, by_id[nid].parent2_id) if p is not None]
        lineage, cur = [], head
        while cur is not None:
            lineage.append(cur.id)
            cur = by_id.get(cur.parent_id) if cur.parent_id is not None else None
        head_files = await asyncio.to_thread(self.ws.read_files, head.commit_sha, list(self.task.editable))
        lessons = [
            LessonView(les.idea, les.effect, bool(les.positive), les.confidence, les.node_id)
            for les in await self.store.lessons(self.task_id)
        ]
        alerts = await self.store.rows(
            "SELECT a.node_id, a.guard, a.message FROM alerts a JOIN nodes n ON n.id = a.node_id "
            "WHERE n.task_id = ? ORDER BY a.id DESC LIMIT 50", (self.task_id,))
        return ProposalContext(
            task=self.task, thread_id=thread.id, head_id=head.id, head_metric=head.metric, head_files=head_files,
            lineage=tuple(reversed(lineage)), attempts=tuple(self._attempt(n) for n in nodes),
            lessons=tuple(lessons),
            accepted_elsewhere=tuple(
                self._attempt(n) for n in nodes
                if n.status == NodeStatus.ACCEPTED and n.thread_id != thread.id and n.id not in ancestors
            ),
            pending_origins=tuple(
                n.origin for n in nodes
                if n.parent_id == head.id and n.status in (NodeStatus.QUEUED, NodeStatus.RUNNING, NodeStatus.VALIDATING)
            ),
            thread_name=thread.name,
            alerts=tuple((a["node_id"], a["guard"], a["message"]) for a in alerts),
            spent_usd=await self.store.spent_usd(self.task_id),
            inspect_node=self.node_report,
        )

    def _make_proposer(self, name: str) -> Proposer:
        if name == "search":  # the tests replace make_proposer with a three-argument one
            return make_proposer(name, self.task, self.config.seed)
        if name == "watch":
            return self._watch_proposer()
        return make_proposer(name, self.task, self.config.seed, config=self.config, run_root=self.run_root)

    def _watch_proposer(self) -> Proposer:
        if self._watch is None:
            self._watch = make_proposer("watch", self.task, self.config.seed, config=self.config,
                                        run_root=self.run_root)
        return self._watch

    async def _proposer_of(self, thread: ThreadRow) -> Proposer | None:
        """The thread's proposer, or the watch proposer while a watcher edits its head."""
        from engine.proposers.watch import read_watcher

        watcher = read_watcher(self.run_root, thread.id)
        folder = str(watcher.get("dir", "")) if watcher else None
        if folder != self._watched.get(thread.id):
            if folder:
                self._watched[thread.id] = folder
                await self.store.update_thread(thread.id, note=f"watched from {folder}")
                await self.store.add_event("info", "watch", f"thread {thread.name}: a watcher edits its head in "
                                           f"{folder}; its saves are its proposals now", folder=folder)
            else:
                self._watched.pop(thread.id, None)
                await self.store.update_thread(thread.id, note="the watcher detached")
                await self.store.add_event("info", "watch", f"thread {thread.name}: the watcher detached; back to "
                                           f"its {thread.proposer} proposer")
        if folder or thread.proposer == "watch":
            return self._watch_proposer()
        return self.proposers.get(thread.proposer)

    async def _proposer_failed(self, thread: ThreadRow, exc: ProposerError) -> None:
        """Record a failed proposal (and what it spent); pause the thread when retrying
        cannot help, or after a few failures in a row."""
        message = f"{exc}" + (f" ({exc.hint})" if exc.hint else "")
        cost = {k: exc.cost[k] for k in ("cost_usd", "usage", "model", "requests") if k in exc.cost}
        failures = self._proposer_failures.get(thread.id, 0) + 1
        self._proposer_failures[thread.id] = failures
        current = await self.store.thread(thread.id)
        pause = exc.fatal or failures >= PROPOSER_FAILURES_TO_PAUSE
        if pause:
            note = f"proposer error: {exc}" if exc.fatal else \
                f"paused after {failures} failed proposals in a row; last: {exc}"
            # The event first: whoever sees the thread paused can read why.
            level = "warning" if exc.kind == "spend_cap" else "error"
            await self.store.add_event(level, "spend" if exc.kind == "spend_cap" else "proposer",
                                       f"thread {thread.name}: {message}; thread paused", thread=thread.id,
                                       proposer=thread.proposer, error=exc.kind, fatal=exc.fatal, **cost)
            if current.status == ThreadStatus.RUNNING:
                await self.store.update_thread(thread.id, status=str(ThreadStatus.PAUSED), note=note)
            self._proposer_failures.pop(thread.id, None)
            return
        self._propose_after[thread.id] = time.monotonic() + exc.retry_after_s
        if current.status == ThreadStatus.RUNNING:
            await self.store.update_thread(
                thread.id, note=f"proposer: {exc} (failure {failures} in a row; trying again in {exc.retry_after_s:g}s)")
        await self.store.add_event("warning", "proposer", f"thread {thread.name}: {message}; trying again in "
                                   f"{exc.retry_after_s:g}s", thread=thread.id, proposer=thread.proposer,
                                   error=exc.kind, fatal=False, in_a_row=failures, **cost)

    async def _propose(self, thread: ThreadRow) -> None:
        assert self.ws is not None
        head = await self.store.node(thread.head_node_id)
        proposer = await self._proposer_of(thread)
        if proposer is None:
            return
        ctx = await self._context(thread, head)
        if (await self.store.thread(thread.id)).status != ThreadStatus.RUNNING:
            return  # paused or pruned meanwhile
        try:
            proposal = await proposer.propose(ctx)
        except ProposerError as exc:
            await self._proposer_failed(thread, exc)
            return
        except ThreadlabError as exc:
            await self.store.update_thread(thread.id, status=str(ThreadStatus.PAUSED), note=f"proposer error: {exc}")
            await self.store.add_event("error", "proposer", f"thread {thread.name}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a proposer's bug costs its thread, not the engine
            log.exception("proposer %s of thread %s failed", thread.proposer, thread.name)
            await self._proposer_failed(thread, ProposerError(f"{type(exc).__name__}: {exc}", kind="bug"))
            return
        if self._proposer_failures.pop(thread.id, None):
            await self.store.update_thread(thread.id, note=f"{proposer.name} proposing again")
        async with self._thread_state_lock:
            thread = await self.store.thread(thread.id)
            if thread.status != ThreadStatus.RUNNING:
                return  # paused or pruned while the proposer was thinking
            if proposal is None:
                if getattr(proposer, "waits", False):
                    return  # nothing saved yet: asked again at the next pass
                if not await self.store.open_nodes(thread.id):  # else: nothing *now*; ask again later
                    async with self._judge_lock:
                        await self._close_thread(thread, ThreadStatus.DONE, "the proposer has no more ideas")
                return
            await self.add_candidate(thread, head, proposal)

    async def add_candidate(self, thread: ThreadRow, parent: NodeRow, proposal: Proposal) -> int:
        """Turn a Proposal into a Node: commit it, guard it, queue its exploration run."""
        assert self.ws is not None and parent.commit_sha
        task = self.task
        common = dict(task_id=self.task_id, thread_id=thread.id, parent_id=parent.id, title=proposal.title,
                      hypothesis=proposal.hypothesis, origin=dict(proposal.origin, proposer=thread.proposer))
        other: NodeRow | None = None
        protected = sorted({_repo_path(e.file) for e in proposal.edits} - set(task.editable))
        if protected:
            message = f"the proposal edits protected file(s) {', '.join(protected)}; editable: {', '.join(task.editable)}"
            node_id = await self.store.add_node(**common, commit_sha=None, status=NodeStatus.FLAGGED,
                                                alerts=[("static.protected_file", message, {"files": protected})])
            await self._finish(await self.store.node(node_id), NodeStatus.FLAGGED, message, {})
            return node_id
        try:
            if proposal.merge_with is not None:
                other = await self.store.node(proposal.merge_with)
                if not other.commit_sha:
                    raise WorkspaceError(f"node #{other.id} has no code to merge")
                sha = await asyncio.to_thread(
                    self.ws.merge, parent.commit_sha, other.commit_sha, f"merge #{other.id} into #{parent.id}"
                )
            else:
                sha = await asyncio.to_thread(
                    self.ws.commit_edits, parent.commit_sha, list(proposal.edits), list(task.editable), proposal.title
                )
        except (EditError, WorkspaceError) as exc:
            node_id = await self.store.add_node(
                **common, commit_sha=None, status=NodeStatus.FAILED, error=str(exc),
                parent2_id=other.id if other else None,
            )
            await self._finish(await self.store.node(node_id), NodeStatus.FAILED, str(exc), {})
            return node_id
        duplicate = await self._same_code_as(sha)
        if duplicate is not None:  # e.g. one idea picked by two threads, or a merge that adds nothing
            node_id = await self.store.add_node(**common, commit_sha=sha, status=NodeStatus.FAILED, error=duplicate,
                                                parent2_id=other.id if other else None)
            await asyncio.to_thread(self.ws.keep, node_id, sha)
            await self._finish(await self.store.node(node_id), NodeStatus.FAILED, duplicate, {})
            return node_id
        before = await asyncio.to_thread(self.ws.read_files, parent.commit_sha, list(task.editable))
        after = await asyncio.to_thread(self.ws.read_files, sha, list(task.editable))
        findings = guards.check_change(before, after, task.forbidden)
        seeds = [] if findings else [(s, str(RunPurpose.EXPLORE)) for s in task.explore_seeds]
        node_id = await self.store.add_node(
            **common, commit_sha=sha, status=NodeStatus.FLAGGED if findings else NodeStatus.QUEUED,
            parent2_id=other.id if other else None, seeds=seeds,
            alerts=[(f.guard, f.message, f.evidence) for f in findings],
        )
        await asyncio.to_thread(self.ws.keep, node_id, sha)
        if findings:
            await self._finish(await self.store.node(node_id), NodeStatus.FLAGGED,
                               "static guard: " + "; ".join(f.message for f in findings), {})
            return node_id
        await self._materialize(await self.store.node(node_id))
        self._wake_dispatch.set()
        return node_id

    async def _same_code_as(self, sha: str) -> str | None:
        """Why sha is not worth running: its code is an existing node's (None if it is new).
        The same code on the same seeds says nothing new, and twice the runs."""
        assert self.ws is not None
        async with self._trees_lock:
            if self._trees is None:
                rows = await self.store.rows(
                    "SELECT commit_sha FROM nodes WHERE task_id = ? AND commit_sha IS NOT NULL ORDER BY id",
                    (self.task_id,))
                shas = [r["commit_sha"] for r in rows]
                self._trees = {}
                for known, tree in zip(shas, await asyncio.to_thread(self.ws.trees, shas), strict=True):
                    self._trees.setdefault(tree, known)
            (tree,) = await asyncio.to_thread(self.ws.trees, [sha])
            first = self._trees.get(tree)
            if first is None:
                self._trees[tree] = sha
                return None
        rows = await self.store.rows("SELECT id, title, status FROM nodes WHERE commit_sha = ? ORDER BY id LIMIT 1",
                                     (first,))
        what = f"node #{rows[0]['id']} ({rows[0]['title']!r}, {rows[0]['status']})" if rows else "a node being added"
        return f"the same code as {what}: not run again"

    async def node_report(self, node_id: int) -> str:
        """A past node as text for proposers: what it changed, how it ran, how it was decided."""
        node = await self.store.node(node_id)
        if node.task_id != self.task_id:
            raise ThreadlabError(f"node #{node_id} belongs to another task")
        metric = self.task.metric_name
        parent = await self.store.node(node.parent_id) if node.parent_id else None
        lines = [f"node #{node.id} {node.title!r} [{node.status}]" + (f", parent #{parent.id}" if parent else "")
                 + (f", merged with #{node.parent2_id}" if node.parent2_id else "")]
        if node.hypothesis:
            lines.append(f"hypothesis: {node.hypothesis}")
        fmt = (lambda v: "-" if v is None else f"{v:.6g}")
        lines.append(f"{metric}: {fmt(node.metric)} (std {fmt(node.metric_std)}, {node.n_runs} run(s), p = "
                     f"{fmt(node.p_value)}); parent: {fmt(parent.metric if parent else None)}")
        if node.error:
            lines.append(f"error: {node.error[:2000]}")
        for v in await self.store.verdicts(node.id):
            lines.append(f"verdict: {'accepted' if v.accepted else 'not accepted'}: {v.summary}")
        for a in await self.store.alerts(node.id):
            lines.append(f"ALERT {a.guard}: {a.message}")
        runs = await self.store.runs_of(node.id)
        for r in runs:
            lines.append(f"run #{r.id} seed {r.seed} {r.purpose} [{r.status}] {metric} {fmt(r.metric)}"
                         + (f" error: {r.error.strip().splitlines()[0][:200]}" if r.error.strip() else ""))
        if node.commit_sha and parent is not None and parent.commit_sha and self.ws is not None:
            diff = await asyncio.to_thread(self.ws.diff, parent.commit_sha, node.commit_sha)
            lines += ["diff against the parent:", diff[:20_000] + ("\n[... diff cut]" if len(diff) > 20_000 else "")]
        for r in reversed(runs):
            if not r.run_dir:
                continue
            # not eval.log: what the evaluator runs of the candidate's saw the private data
            for name in ("stderr.log", "stdout.log"):
                path = Path(r.run_dir) / name
                tail = await asyncio.to_thread(_tail_text, path)
                if tail:
                    lines += [f"last lines of run #{r.id}'s {name}:", tail]
            break
        return "\n".join(lines)

    # ---- commands ------------------------------------------------------------------

    def _check_usable(self, node: NodeRow, what: str) -> None:
        if node.task_id != self.task_id or not node.commit_sha:
            raise ThreadlabError(f"node #{node.id} has no code to {what}")
        if node.status == NodeStatus.FLAGGED:
            raise ThreadlabError(f"node #{node.id} is flagged by a guard; its code cannot be built on",
                                 hint="look at its alerts with `threadlab show`")

    async def _thread_arg(self, args: dict[str, Any]) -> ThreadRow:
        thread = await self.store.thread(int(args["thread"]))
        if thread.task_id != self.task_id:
            raise ThreadlabError(f"thread {thread.id} belongs to another task")
        return thread

    async def _carry_out(self, kind: CommandKind, args: dict[str, Any]) -> str:
        if kind == CommandKind.ACKNOWLEDGE:
            if not await self.store.acknowledge_alert(int(args["alert"])):
                raise ThreadlabError(f"no alert {args['alert']}")
            return f"alert {args['alert']} acknowledged"
        if kind == CommandKind.FORK:
            node = await self.store.node(int(args["node"]))
            self._check_usable(node, "fork from")
            count = len(await self.store.threads(self.task_id))
            proposer = args.get("proposer") or self.config.proposer_for(count)
            thread = await self._new_thread(node, proposer, f"t{count + 1}", f"forked at #{node.id}")
            problem = await self._ensure_measured(node.id, self.task.all_seeds)
            return f"thread {thread.name} (id {thread.id}) forked at #{node.id}" + (f"; {problem}" if problem else "")
        if kind == CommandKind.MERGE:
            a, b = await self.store.node(int(args["node"])), await self.store.node(int(args["other"]))
            self._check_usable(a, "merge into")
            self._check_usable(b, "merge")
            thread = await self.store.thread(a.thread_id) if a.thread_id else None
            if thread is None or thread.status != ThreadStatus.RUNNING:
                count = len(await self.store.threads(self.task_id))
                thread = await self._new_thread(a, self.config.proposer_for(count), f"t{count + 1}", f"merge of #{a.id}")
            await self._ensure_measured(a.id, self.task.all_seeds)
            node_id = await self.add_candidate(
                thread, a, Proposal(f"merge #{b.id} into #{a.id}", f"combine #{a.id} and #{b.id}", merge_with=b.id,
                                    origin={"kind": "merge", "with": b.id, "by": "person"}),
            )
            node = await self.store.node(node_id)
            if node.status == NodeStatus.FAILED:
                raise ThreadlabError(f"merge failed: {node.error}")
            return f"merge node #{node_id} queued on thread {thread.name}"
        thread = await self._thread_arg(args)
        if kind in (CommandKind.PIN, CommandKind.UNPIN):
            await self.store.update_thread(thread.id, pinned=int(kind == CommandKind.PIN))
            return f"thread {thread.name} {'pinned' if kind == CommandKind.PIN else 'unpinned'}"
        if kind == CommandKind.PAUSE:
            if thread.status != ThreadStatus.RUNNING:
                raise ThreadlabError(f"thread {thread.name} is {thread.status}, not running")
            await self.store.update_thread(thread.id, status=str(ThreadStatus.PAUSED), note="paused")
            return f"thread {thread.name} paused"
        if kind == CommandKind.RESUME:
            if thread.status != ThreadStatus.PAUSED:
                raise ThreadlabError(f"thread {thread.name} is {thread.status}, not paused")
            await self.store.update_thread(thread.id, status=str(ThreadStatus.RUNNING), note="resumed")
            self._wake_plan.set()
            self._wake_dispatch.set()
            return f"thread {thread.name} resumed"
        if kind == CommandKind.PRUNE:
            if thread.status == ThreadStatus.PRUNED:
                raise ThreadlabError(f"thread {thread.name} is already pruned")
            async with self._judge_lock:
                killed = await self._close_thread(thread, ThreadStatus.PRUNED, "pruned")
            await self._fill_threads()
            return f"thread {thread.name} pruned; {killed} run(s) killed"
        raise ThreadlabError(f"unknown command {kind}")

