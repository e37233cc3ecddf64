"""Shared fixtures for the engine, store and CLI behaviour tests.

- `wait_for(predicate, timeout, what)`: polls a (sync or async) predicate every 50 ms
  until it returns something truthy, and fails with `what` on timeout. Never sleep to
  synchronise; wait on a condition that state.db shows.
- `make_task(...)`: a copy of the bowl fixture task in tmp_path, optionally with its own
  playbook, a slow run (a `SLEEP` constant in solution.py that run.py honours), or a
  broken task.toml.
- `start_engine`: an in-process Engine on tmp_path/"state.db", driven the way the TUI and
  CLI drive it, through Commands written by a second Store connection.
- `ScriptedProposer` / `script_proposals`: hand the engine fixed Proposals first (then
  fall back to the task's real search proposer), so a test knows which nodes will exist.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.config import SessionConfig
from engine.executor import LocalExecutor, detect_slots
from engine.loop import Engine
from engine.models import Proposal
from engine.records import CommandRow
from engine.store import Store

FIXTURES = Path(__file__).parent / "fixtures"
BOWL = FIXTURES / "bowl"
THREADLAB = Path(sys.executable).parent / "threadlab"

# run.py of the slow variants: the answer is saved only after `solution.SLEEP` seconds,
# and the samples stream before that, so a sleeping run already has samples in state.db.
_SLOW_HOOK = """
import time as _time
_time.sleep(float(getattr(solution, "SLEEP", 0)))
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--offline", action="store_true", default=False,
                     help="skip the tests marked `network` (they reach the Python package index, as CI can)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network: reaches the Python package index; --offline skips it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--offline"):
        return
    skip = pytest.mark.skip(reason="--offline: needs the Python package index")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _call_failed(request: pytest.FixtureRequest) -> bool:
    """True when the test body failed (or xfailed): its teardown adds no second report."""
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed or hasattr(report, "wasxfail")


async def wait_for(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = 20.0,
    what: str | None = None,
    *,
    interval: float = 0.05,
    alive: Callable[[], str | None] | None = None,
) -> Any:
    """Poll predicate every `interval` s until it is truthy; return its value.

    `alive` is checked on every poll: a non-None answer (why the thing we wait on died)
    fails at once instead of waiting for the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if alive is not None:
            dead = alive()
            if dead:
                pytest.fail(f"while waiting for {what or predicate}: {dead}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


# ---- task folders ---------------------------------------------------------------------


def make_task(
    dest: Path,
    *,
    playbook: str | None = None,
    sleep: float | None = None,
    task_toml: Callable[[str], str] | None = None,
) -> Path:
    """A copy of the bowl fixture at dest.

    playbook: replaces playbook.toml. sleep: makes the run slow: run.py sleeps
    `solution.SLEEP` seconds after solving, and solution.py starts with `SLEEP = sleep`
    (0 keeps the baseline fast while a playbook knob on SLEEP slows the candidates).
    task_toml: a function rewriting task.toml's text.
    """
    shutil.copytree(BOWL, dest)
    if playbook is not None:
        (dest / "playbook.toml").write_text(playbook)
    if sleep is not None:
        run = (dest / "run.py").read_text()
        anchor = "x = solution.solve("
        start = run.index(anchor)
        end = run.index("\n", start) + 1
        (dest / "run.py").write_text(run[:end] + _SLOW_HOOK + run[end:])
        sol = (dest / "solution.py").read_text()
        sol = sol.replace("# knobs\n", f"# knobs\nSLEEP = {sleep!r}\n", 1)
        assert f"SLEEP = {sleep!r}" in sol
        (dest / "solution.py").write_text(sol)
    if task_toml is not None:
        path = dest / "task.toml"
        path.write_text(task_toml(path.read_text()))
    return dest


def slow_playbook(low: float, high: float) -> str:
    """Every candidate sets SLEEP in [low, high]: candidates are slow, the baseline is not."""
    return f"""
[[knob]]
name = "SLEEP"
file = "solution.py"
low = {low}
high = {high}
"""


@pytest.fixture
def bowl(tmp_path: Path) -> Path:
    return make_task(tmp_path / "bowl")


# ---- scripted proposals ---------------------------------------------------------------


class ScriptedProposer:
    """Hands out `script` first, one Proposal per call, then asks the real proposer.

    It can also hold a thread's proposals at a gate: `hold(thread_id)` makes that thread's
    next propose() calls wait until `release(thread_id)`; `waiting` holds the thread ids
    whose call waits at the gate now, `calls` every finished call (thread_id, start, end).
    The engine's planner is sequential, so a call held at the gate freezes it.
    """

    name = "search"

    def __init__(self, script: Iterable[Proposal], fallback: Any | None):
        self.script = list(script)
        self.fallback = fallback
        self.handed_out: list[Proposal] = []
        self.waiting: set[int] = set()
        self.calls: list[tuple[int, float, float]] = []
        self._gates: dict[int, asyncio.Event] = {}

    def hold(self, thread_id: int) -> None:
        self._gates.setdefault(thread_id, asyncio.Event())

    def release(self, thread_id: int | None = None) -> None:
        for tid in [thread_id] if thread_id is not None else list(self._gates):
            gate = self._gates.pop(tid, None)
            if gate is not None:
                gate.set()

    async def propose(self, ctx: Any) -> Proposal | None:
        start = time.time()
        gate = self._gates.get(ctx.thread_id)
        if gate is not None:
            self.waiting.add(ctx.thread_id)
            try:
                await gate.wait()
            finally:
                self.waiting.discard(ctx.thread_id)
        try:
            if self.script:
                proposal = self.script.pop(0)
                self.handed_out.append(proposal)
                return proposal
            return await self.fallback.propose(ctx) if self.fallback is not None else None
        finally:
            self.calls.append((ctx.thread_id, start, time.time()))

    def observe(self, attempt: Any) -> None:
        if self.fallback is not None:
            self.fallback.observe(attempt)

    def warm_start(self, attempts: Any) -> None:
        if self.fallback is not None:
            self.fallback.warm_start(attempts)


@pytest.fixture
def script_proposals(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ScriptedProposer]:
    """script_proposals([Proposal, ...], fallback=True): the engine's search proposer
    hands these out first (then the playbook's ideas and knobs, or nothing)."""
    import engine.loop as loop_mod

    made: dict[str, ScriptedProposer] = {}

    def install(script: Iterable[Proposal], fallback: bool = True) -> ScriptedProposer:
        real = loop_mod.make_proposer
        scripted = ScriptedProposer(script, None)

        def make(name: str, task: Any, seed: int) -> Any:
            if "p" not in made:
                scripted.fallback = real(name, task, seed) if fallback else None
                made["p"] = scripted
            return made["p"]

        monkeypatch.setattr(loop_mod, "make_proposer", make)
        return scripted

    return install


# ---- an in-process engine ---------------------------------------------------------------


@dataclass
class EngineSession:
    engine: Engine
    store: Store  # the engine's writer connection
    reader: Store  # a viewer's connection: commands and every read go through it
    task: asyncio.Task[str]
    db: Path
    run_root: Path
    closed: bool = False
    commands: list[int] = field(default_factory=list)

    def dead(self) -> str | None:
        if self.task.done():
            if self.task.cancelled():
                return "the engine task was cancelled"
            exc = self.task.exception()
            return f"the engine stopped: {exc!r}" if exc else f"the engine stopped: {self.task.result()}"
        return None

    async def wait(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str | None = None) -> Any:
        """wait_for that fails at once if the engine stops meanwhile."""
        return await wait_for(predicate, timeout, what, alive=self.dead)

    async def rows(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return await self.reader.rows(sql, tuple(params))

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return await self.reader.scalar(sql, tuple(params))

    async def send(self, kind: str, timeout: float = 15.0, **args: Any) -> CommandRow:
        """Write a Command as a viewer does and wait until the engine carried it out."""
        cid = await self.reader.add_command(kind, args, source="test")
        self.commands.append(cid)

        async def finished() -> CommandRow | None:
            cmd = await self.reader.command(cid)
            return cmd if cmd.status != "pending" else None

        return await self.wait(finished, timeout, f"the engine to carry out {kind} {args}")

    async def stop(self, timeout: float = 30.0) -> str:
        self.engine.stop("test over")
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


@pytest.fixture
async def start_engine(tmp_path: Path, request: pytest.FixtureRequest):
    """start_engine(task_dir, threads=2, patience=100, ...) -> EngineSession.

    On teardown every engine is stopped and awaited, and a test that passed gets an error
    if an engine raised or one of its loops crashed (an `error`/`crash` event).
    """
    sessions: list[EngineSession] = []

    async def start(
        task_dir: Path,
        *,
        threads: int = 2,
        patience: int = 100,
        budget_s: float | None = None,
        cpu_slots: int = 2,
        before: Callable[[Store], Awaitable[None]] | None = None,
    ) -> EngineSession:
        db = tmp_path / "state.db"
        store = await Store.open(db, writer=True, create=True)
        reader = await Store.open(db)
        if before is not None:
            await before(reader)
        config = SessionConfig(
            task=str(task_dir), profile="smoke", threads=threads, budget_s=budget_s, cpu_slots=cpu_slots,
            patience=patience,
        )
        executor = LocalExecutor(detect_slots(cpu_slots, "cpu"))
        engine = Engine(store, config, tmp_path / "state.run", executor, heartbeat_s=0.2)
        task = asyncio.create_task(engine.run())
        session = EngineSession(engine, store, reader, task, db, tmp_path / "state.run")
        sessions.append(session)
        return session

    yield start

    problems = []
    for s in sessions:
        s.engine.stop("test over")
        for proposer in s.engine.proposers.values():
            if isinstance(proposer, ScriptedProposer):
                proposer.release()
        try:
            await asyncio.wait_for(asyncio.shield(s.task), 30)
        except Exception as exc:  # noqa: BLE001 - reported below
            problems.append(f"engine.run() raised {exc!r}")
        try:
            crashes = await s.reader.rows("SELECT message FROM events WHERE kind = 'crash'")
            problems += [r["message"] for r in crashes]
        finally:
            await s.reader.close()
            await s.store.close()
    if problems and not _call_failed(request):
        pytest.fail("engine problems: " + "; ".join(problems))


# ---- engine subprocesses ------------------------------------------------------------------


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


@pytest.fixture
def processes(tmp_path: Path):
    """spawn(argv, name) -> Proc in its own process group; every group is killed at the end.

    `adopt(pid)` adds a process group started elsewhere (a detached engine) to the cleanup.
    """
    procs: list[Proc] = []
    adopted: list[int] = []
    logs = tmp_path / "proc-logs"
    logs.mkdir(exist_ok=True)

    def spawn(argv: list[str], name: str) -> Proc:
        out, err = logs / f"{name}.out", logs / f"{name}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e, start_new_session=True,
                                     cwd=tmp_path)
        proc = Proc(popen, out, err)
        procs.append(proc)
        return proc

    def adopt(pid: int) -> None:
        adopted.append(pid)

    spawn.adopt = adopt  # type: ignore[attr-defined]
    yield spawn
    for pgid in [p.pid for p in procs] + adopted:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def threadlab(*args: str | os.PathLike, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed `threadlab` console script to completion."""
    return subprocess.run(
        [str(THREADLAB), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


def only_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_clean_error(result: subprocess.CompletedProcess, *must_contain: str) -> str:
    """Exit 1, stderr exactly one `error:` line (holding must_contain) and one `hint:` line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = only_lines(result.stderr)
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: "), lines
    assert lines[1].startswith("hint: ") and len(lines[1]) > len("hint: "), lines
    for text in must_contain:
        assert re.search(text, lines[0]), (text, lines[0])
    return lines[0]
