"""The `threadlab` command line. Every error is one line and a hint, never a traceback."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from engine.config import SessionConfig, parse_duration, parse_proposers, threads_for
from engine.errors import NotFound, ThreadlabError
from engine.models import CommandKind
from engine.store import Store
from engine.taskfile import find_task, list_builtin_tasks, load_task

T = TypeVar("T")
DEFAULT_DB = "state.db"
DEFAULT_TASK = "nanochat"
console = Console(highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def run_root(db: Path) -> Path:
    """Logs, repositories and run directories of a database live beside it."""
    return db.parent / f"{db.stem}.run"


def _db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db", "db", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_DB, show_default=True,
        envvar="THREADLAB_DB", help="the session's state.db",
    )(f)


def _async(f: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    @wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(f(*args, **kwargs))

    return wrapper


def _cuda_available() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@click.group()
@click.version_option(package_name="threadlab")
def cli() -> None:
    """threadlab: many research threads propose, run, audit and validate code changes."""


# ---- starting and stopping ----------------------------------------------------------


@cli.command()
@click.argument("task", required=False, default=DEFAULT_TASK)
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="research threads (default: the sum of the --proposer counts, else 2)")
@click.option("--proposer", default="search", show_default=True,
              help="NAME or NAME:COUNT,NAME:COUNT: search, claude, watch (e.g. claude:2,search:2)")
@click.option("--budget", default=None, help="research time, e.g. 60s, 30m, 8h (default: until stopped)")
@click.option("--profile", default=None, help="task profile (default: the task's GPU profile on a GPU, else its default)")
@click.option("--slots", "cpu_slots", type=click.IntRange(1, 1024), default=2, show_default=True,
              help="CPU slots when there is no GPU")
@click.option("--patience", type=click.IntRange(1), default=8, show_default=True,
              help="attempts without improvement before a thread retires")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where runs execute: this machine's slots, or a Ray cluster's (README: Scaling out on Ray)")
@click.option("--address", default=None,
              help="--executor ray: the cluster (HEAD_IP:6379 or auto; default: the one `ray start` left here, "
                   "else a new local instance)")
@click.option("--no-tui", is_flag=True, help="print progress lines instead of opening the TUI")
@click.option("--detach", is_flag=True, help="start the engine and return at once")
@click.option("--claude-model", default=None, help="claude threads: the model (default: claude-sonnet-5-5)")
@click.option("--claude-max-tokens", type=click.IntRange(1), default=None, help="claude threads: max_tokens")
@click.option("--claude-temperature", type=click.FloatRange(0, 1), default=None,
              help="claude threads: temperature (default: the model's own; current models refuse others)")
@click.option("--spend-cap", type=click.FloatRange(min=0, min_open=True), default=None,
              help="claude threads: pause proposing once the session has spent this many US dollars")
@click.option("--claude-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML: [claude] settings, [claude.threads.t1] per thread, [prices.\"MODEL\"]")
@click.option("--claude-prices", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML price table ([prices.\"MODEL\"], USD per million tokens) over the built-in one")
@_db_option
def run(task: str, threads: int | None, proposer: str, budget: str | None, profile: str | None, cpu_slots: int,
        patience: int, seed: int, executor: str, address: str | None, no_tui: bool, detach: bool, claude_model: str | None,
        claude_max_tokens: int | None, claude_temperature: float | None, spend_cap: float | None,
        claude_config: Path | None, claude_prices: Path | None, db: Path) -> None:
    """Start a research session on TASK in the background and follow it."""
    db = db.resolve()
    claude = dict(config_file=claude_config, prices_file=claude_prices, model=claude_model,
                  max_tokens=claude_max_tokens, temperature=claude_temperature, spend_cap_usd=spend_cap)
    asyncio.run(_start_session(task, threads, proposer, budget, profile, cpu_slots, patience, seed, db, claude,
                               executor=executor, address=address))
    if detach:
        _print_follow_hint(db)
    elif not no_tui and sys.stdin.isatty() and sys.stdout.isatty():
        _attach_tui(db, read_only=False)
    else:
        _print_follow_hint(db)
        asyncio.run(_follow(db))


async def _start_session(task: str, threads: int | None, proposer: str, budget: str | None, profile: str | None,
                         cpu_slots: int, patience: int, seed: int, db: Path,
                         claude: dict[str, Any] | None = None, executor: str = "local",
                         address: str | None = None) -> None:
    """Store the session in the database and start its engine detached."""
    if address is not None and executor != "ray":
        raise ThreadlabError("--address is for --executor ray", hint="add --executor ray, or leave --address out")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ThreadlabError("--executor ray needs Ray, which is not installed", hint="pip install 'threadlab[ray]'")
    proposers = parse_proposers(proposer, threads or 0)
    threads = threads_for(proposers, threads)
    extra: dict[str, Any] = {}
    if any(name == "claude" for name, _ in proposers):
        from engine.proposers.claude import build_claude_extra, check_claude_session

        extra["claude"] = build_claude_extra(**(claude or {}))
        check_claude_session(extra)
    folder = find_task(task)
    if profile is None:
        spec = load_task(folder)
        profile = spec.gpu_profile if spec.gpu_profile and _cuda_available() else spec.default_profile
    spec = load_task(folder, profile)
    from engine.playbook import load_playbook

    load_playbook(spec)  # a broken playbook is said here, not in the engine's log
    config = SessionConfig(
        task=str(spec.path), profile=spec.profile, threads=threads, proposers=proposers,
        budget_s=parse_duration(budget) if budget else None, cpu_slots=cpu_slots, patience=patience, seed=seed,
        executor=executor, extra=dict(extra, ray={"address": address}) if executor == "ray" else extra,
    )
    async with await Store.open(db, writer=True, create=True) as store:
        alive = await store.engine_alive()
        if alive:
            raise ThreadlabError(
                f"an engine is already running on {db} (pid {alive.pid} on {alive.host})",
                hint="follow it with `threadlab status`, or stop it with `threadlab stop`",
            )
        await store.save_session(config.to_dict(), None, reset_elapsed=True)
    pid = _spawn_engine(db)
    console.print(f"engine started (pid {pid}) on {spec.name} [{spec.profile}], database {db}")


def _attach_tui(db: Path, read_only: bool, keymap: Path | None = None) -> None:
    # The one place engine/ reaches tui/: the command line starts the viewer. Nothing of
    # the engine proper depends on it (tests/test_layout.py allows this module alone).
    from tui import run_tui

    run_tui(db, read_only=read_only, keymap_path=keymap)


def _print_follow_hint(db: Path) -> None:
    console.print(
        f"follow with `threadlab status --db {db}`; the engine's log is {run_root(db) / 'engine.log'}; "
        f"stop it with `threadlab stop --db {db}`"
    )


def _spawn_engine(db: Path) -> int:
    root = run_root(db)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "engine.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "engine", "--db", str(db)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise ThreadlabError(
                f"the engine exited at start: {' / '.join(tail) or 'no output'}", hint=f"see {log_path}"
            )
        if _lock_pid(db) == proc.pid:
            return proc.pid
        time.sleep(0.05)
    raise ThreadlabError("the engine did not take its lock within 60 s", hint=f"see {log_path}")


def _lock_pid(db: Path) -> int | None:
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT pid FROM engine_lock WHERE id = 1").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


async def _follow(db: Path) -> None:
    """Print engine events until the engine stops; ctrl-c detaches."""
    last = 0
    try:
        async with await Store.open(db) as store:
            seen_alive = False
            while True:
                for ev in await store.events(after_id=last):
                    last = ev.id
                    stamp = time.strftime("%H:%M:%S", time.localtime(ev.t))
                    console.print(f"{stamp} {ev.level:<7} {ev.kind:<9} {ev.message}")
                alive = await store.engine_alive()
                seen_alive = seen_alive or alive is not None
                if seen_alive and alive is None:
                    for ev in await store.events(after_id=last):
                        console.print(f"{time.strftime('%H:%M:%S', time.localtime(ev.t))} {ev.level:<7} "
                                      f"{ev.kind:<9} {ev.message}")
                    console.print(f"engine stopped; see `threadlab status --db {db}`")
                    return
                await asyncio.sleep(0.5)
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("detached; the engine keeps running (`threadlab stop` stops it)")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("task")
@click.option("--profile", default=None, help="the profile whose params to prepare for")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def prepare(task: str, profile: str | None, args: tuple[str, ...]) -> None:
    """Prepare TASK's data (downloads, tokenizer); extra ARGS go to its prepare step.

    For example: threadlab prepare nanochat --source dir:~/texts
    """
    spec = load_task(find_task(task), profile)
    if not spec.prepare_command:
        console.print(f"task {spec.name} needs no preparation")
        return
    env = {**os.environ, "THREADLAB_PARAMS": json.dumps(spec.params), "THREADLAB_DATA_DIR": str(spec.data_dir)}
    code = subprocess.run([*spec.prepare_command, *args], cwd=spec.path, env=env).returncode
    if code != 0:
        sys.exit(code)  # the prepare step printed its own one-line error


@cli.command()
@_db_option
@click.option("--slots", "cpu_slots", type=click.IntRange(1, 1024), default=None, help="override the CPU slots")
def engine(db: Path, cpu_slots: int | None) -> None:
    """Run the engine in the foreground on the session stored in the database."""
    db = db.resolve()
    root = run_root(db)
    root.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(root / "engine.log")] + ([logging.StreamHandler()] if sys.stderr.isatty() else []),
    )
    reason = asyncio.run(_serve(db, cpu_slots))
    click.echo(f"engine stopped: {reason}")


async def _serve(db: Path, cpu_slots: int | None) -> str:
    from engine.executor import LocalExecutor, detect_slots
    from engine.loop import Engine

    async with await Store.open(db, writer=True) as store:
        session = await store.session()
        if session is None:
            raise ThreadlabError(f"{db} holds no session", hint="start one with `threadlab run TASK`")
        config = SessionConfig.from_dict(session[0])
        if cpu_slots is not None:
            config = SessionConfig.from_dict(dict(config.to_dict(), cpu_slots=cpu_slots))
        spec = load_task(config.task, config.profile)
        if config.executor == "ray":
            from engine.ray_executor import RayExecutor

            executor = await RayExecutor.connect(  # ExecutorError (one line + hint) when unreachable
                (config.extra.get("ray") or {}).get("address"), device=spec.device,
                log_path=run_root(db) / "ray-bridge.log")
        else:
            # A task with an untimed set-up gets two slots per GPU: one run sets up (and the
            # one before it is evaluated) while another trains, so the GPU seldom waits.
            executor = LocalExecutor(detect_slots(config.cpu_slots, spec.device, per_gpu=2 if spec.setup_s else 1))
        return await Engine(store, config, run_root(db), executor).run()


@cli.command()
@click.option("--read-only", is_flag=True, help="hide every action that changes anything")
@click.option("--keymap", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="a TOML file with a [keys] table: binding id = \"key,key\"")
@_db_option
def tui(read_only: bool, keymap: Path | None, db: Path) -> None:
    """Open the supervision screen on a session (any number may attach; quitting never stops the engine)."""
    _attach_tui(db.resolve(), read_only, keymap)


@cli.command()
@_db_option
@click.option("--timeout", type=float, default=60, show_default=True, help="seconds to wait for the engine to exit")
@_async
async def stop(db: Path, timeout: float) -> None:
    """Stop the engine cleanly (running runs are queued again for next time)."""
    async with await Store.open(db) as store:
        alive = await store.engine_alive()
        if alive is None:
            console.print("no engine is running on this database")
            return
        await store.add_command(CommandKind.STOP, {}, source="cli")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await store.lock() is None:
                console.print(f"engine (pid {alive.pid}) stopped")
                return
            await asyncio.sleep(0.1)
    raise ThreadlabError(f"the engine (pid {alive.pid}) did not stop within {timeout:.0f}s",
                         hint=f"look at {run_root(db.resolve()) / 'engine.log'}; `kill {alive.pid}` ends it")


# ---- commands carried out by the engine -------------------------------------------------


async def _send(db: Path, kind: CommandKind, args: dict[str, Any], wait: float = 15.0) -> None:
    async with await Store.open(db) as store:
        if await store.engine_alive() is None:
            raise ThreadlabError("no engine is running on this database",
                                 hint="start it with `threadlab engine` (or `threadlab run`) first")
        cid = await store.add_command(kind, args, source="cli")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            cmd = await store.command(cid)
            if cmd.status == "done":
                console.print(cmd.result)
                return
            if cmd.status == "failed":
                raise ThreadlabError(cmd.result, hint="check the ids with `threadlab status`")
            await asyncio.sleep(0.05)
    raise ThreadlabError(f"the engine has not carried out the {kind} command yet", hint="check `threadlab status`")


def _thread_command(kind: CommandKind, doc: str) -> None:
    @cli.command(name=str(kind), help=doc)
    @click.argument("thread", type=int)
    @_db_option
    @_async
    async def command(thread: int, db: Path) -> None:
        await _send(db, kind, {"thread": thread})


for _kind, _doc in (
    (CommandKind.PRUNE, "Stop THREAD for good and kill its runs."),
    (CommandKind.PIN, "Pin THREAD: it is never retired automatically."),
    (CommandKind.UNPIN, "Unpin THREAD."),
    (CommandKind.PAUSE, "Pause THREAD: it proposes and starts nothing until resumed."),
    (CommandKind.RESUME, "Resume a paused THREAD."),
):
    _thread_command(_kind, _doc)


@cli.command()
@click.argument("node", type=int)
@click.option("--proposer", default=None, help="the new thread's proposer")
@_db_option
@_async
async def fork(node: int, proposer: str | None, db: Path) -> None:
    """Start a new thread at NODE."""
    await _send(db, CommandKind.FORK, {"node": node, "proposer": proposer})


@cli.command()
@click.argument("node", type=int)
@click.argument("other", type=int)
@_db_option
@_async
async def merge(node: int, other: int, db: Path) -> None:
    """Three-way merge OTHER into NODE as a new candidate on NODE's thread."""
    await _send(db, CommandKind.MERGE, {"node": node, "other": other})


@cli.command()
@click.argument("thread", type=int)
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@_db_option
def watch(thread: int, folder: Path, db: Path) -> None:
    """Check THREAD's head out into DIR; every save there is proposed, results in DIR/RESULTS.md."""
    from engine.proposers.watch import watch_folder

    db = db.resolve()

    def say(level: str, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if level == "error":
            err_console.print(f"{stamp} error: {line}", markup=False)
        else:
            console.print(f"{stamp} {line}", markup=False)

    async def main() -> None:
        if not db.exists():
            raise ThreadlabError(f"no database at {db}", hint="pass --db with the session's state.db")
        await watch_folder(db, run_root(db), thread, folder, say)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        console.print("stopped watching; the thread goes back to its own proposer")


# ---- reading ---------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="list retired and pruned threads too")
@_db_option
@_async
async def status(show_all: bool, db: Path) -> None:
    """Threads, heads, best metric, runs, alerts and slots of a session."""
    async with await Store.open(db) as store:
        alive = await store.engine_alive()
        lock = await store.lock()
        session = await store.session()
        config = SessionConfig.from_dict(session[0]) if session else None
        if alive:
            console.print(f"engine: running, pid {alive.pid} on {alive.host}, heartbeat "
                          f"{time.time() - alive.heartbeat_at:.1f}s ago")
        else:
            console.print("engine: stopped" + (" (its lock is stale: it died)" if lock else ""))
        if session:
            budget = f"{config.budget_s:.0f}s" if config and config.budget_s else "none"
            console.print(f"research time: {session[1]:.0f}s of budget {budget}")
        for task in await store.tasks():
            nodes = {n.id: n for n in await store.nodes(task.id)}
            runs = await store.rows(
                "SELECT r.status, COUNT(*) AS n FROM runs r JOIN nodes n ON n.id = r.node_id WHERE n.task_id = ? "
                "GROUP BY r.status", (task.id,))
            counts = {r["status"]: r["n"] for r in runs}
            better = (lambda a, b: a < b) if task.direction == "minimize" else (lambda a, b: a > b)
            best = None
            for n in nodes.values():
                if n.status in ("accepted", "baseline") and n.metric is not None and (
                        best is None or better(n.metric, best.metric)):
                    best = n
            base = nodes.get(task.root_node_id) if task.root_node_id else None
            alerts = await store.scalar(
                "SELECT COUNT(*) FROM alerts a JOIN nodes n ON n.id = a.node_id WHERE n.task_id = ?", (task.id,))
            console.print(
                f"\ntask {task.name} [{task.profile}]: {task.metric_name} ({task.direction}); baseline "
                f"{_fmt(base.metric if base else None)}, best {_fmt(best.metric if best else None)}"
                + (f" at #{best.id} {best.title}" if best else "")
            )
            slots = len(await store.engine_slots() or []) or (config.cpu_slots if config else 0)
            if config and config.executor == "ray":
                line = await store.scalar(
                    "SELECT json_extract(data, '$.executor_status') FROM events "
                    "WHERE json_extract(data, '$.executor_status') IS NOT NULL ORDER BY id DESC LIMIT 1")
                if line:
                    console.print(f"executor: {line}")
            console.print(
                "runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
                f"; slots busy {counts.get('running', 0) if alive else 0}/{slots}; alerts {alerts}; "
                f"accepted {sum(n.status == 'accepted' for n in nodes.values())}"
            )
            spent = await store.spent_usd(task.id)
            priced = await store.scalar(
                "SELECT COUNT(*) FROM nodes WHERE task_id = ? AND json_extract(origin, '$.cost_usd') IS NOT NULL",
                (task.id,))
            if priced or spent:
                cap = ((config.extra.get("claude") or {}).get("spend_cap_usd") if config else None)
                hours = session[1] / 3600 if session and session[1] > 0 else 0
                console.print(
                    f"spend: ${spent:.2f} on {priced} proposal(s)"
                    + (f", ${spent / priced:.3f} each" if priced else "")
                    + (f", ${spent / hours:.2f} per research hour" if hours >= 0.01 else "")
                    + (f"; cap ${cap:.2f}" if cap else "; no cap"))
            threads = await store.threads(task.id)
            shown = [t for t in threads if show_all or t.pinned or t.status in ("running", "paused")]
            table = Table("id", "thread", "proposer", "status", "pin", "head", "head metric", "nodes", "stale", "note")
            for t in shown:
                head = nodes.get(t.head_node_id)
                table.add_row(
                    str(t.id), t.name, t.proposer, t.status, "yes" if t.pinned else "", f"#{t.head_node_id}",
                    _fmt(head.metric if head else None), str(sum(n.thread_id == t.id for n in nodes.values())),
                    str(t.stale_attempts), t.note,
                )
            console.print(table)
            if len(shown) < len(threads):
                console.print(f"{len(threads) - len(shown)} retired or pruned thread(s) not shown (--all lists them)")


@cli.command()
@click.argument("node_id", type=int)
@click.option("--no-diff", is_flag=True)
@_db_option
@_async
async def show(node_id: int, no_diff: bool, db: Path) -> None:
    """A node: its diff against its parent, runs, metrics and verdict."""
    from engine.workspace import Workspace

    async with await Store.open(db) as store:
        node = await store.node(node_id)
        task = await store.task(node.task_id)
        console.print(f"node #{node.id} {node.title}  [{node.status}]")
        console.print(f"thread {node.thread_id}; parent #{node.parent_id}"
                      + (f", merged with #{node.parent2_id}" if node.parent2_id else "")
                      + f"; commit {node.commit_sha or '-'}")
        console.print(f"{task.metric_name}: {_fmt(node.metric)} ± {_fmt(node.metric_std, 3)} over {node.n_runs} "
                      f"run(s); p = {_fmt(node.p_value, 3)}")
        if node.hypothesis:
            console.print(f"hypothesis: {node.hypothesis}")
        if node.error:
            console.print(f"error: {node.error}")
        for v in await store.verdicts(node.id):
            console.print(f"verdict: {'accepted' if v.accepted else v.details.get('status', 'not accepted')}: {v.summary}")
        for a in await store.alerts(node.id):
            console.print(f"ALERT {a.guard}: {a.message} {json.dumps(a.evidence)[:200]}")
        table = Table("run", "seed", "purpose", "status", "slot", task.metric_name, "seconds", "exit", "error")
        for r in await store.runs_of(node.id):
            secs = f"{r.ended_at - r.started_at:.2f}" if r.started_at and r.ended_at else "-"
            table.add_row(str(r.id), str(r.seed), r.purpose, r.status, r.slot or "-", _fmt(r.metric), secs,
                          "-" if r.exit_code is None else str(r.exit_code), (r.error or "").splitlines()[0][:60]
                          if r.error else "")
        console.print(table)
        if not no_diff and node.commit_sha and node.parent_id:
            parent = await store.node(node.parent_id)
            ws = Workspace(Path(task.repo_path), "")
            console.print(ws.diff(parent.commit_sha, node.commit_sha), markup=False)


@cli.command(name="export")
@click.argument("node_id", type=int)
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@_db_option
@_async
async def export_node(node_id: int, dest: Path, db: Path) -> None:
    """Write NODE's files into DEST."""
    from engine.workspace import Workspace

    async with await Store.open(db) as store:
        node = await store.node(node_id)
        if not node.commit_sha:
            raise NotFound(f"node #{node_id} has no code (its edits did not apply)")
        task = await store.task(node.task_id)
    if dest.exists() and any(dest.iterdir()):
        raise ThreadlabError(f"{dest} is not empty", hint="export into a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    Workspace(Path(task.repo_path), "").export(node.commit_sha, dest)
    console.print(f"node #{node_id} written to {dest}")


@cli.command()
def tasks() -> None:
    """The built-in tasks."""
    table = Table("task", "profiles", "metric", "description")
    for folder in list_builtin_tasks():
        try:
            spec = load_task(folder)
            table.add_row(spec.name, ", ".join(spec.profiles), f"{spec.metric_name} ({spec.direction})",
                          spec.description)
        except ThreadlabError as exc:
            table.add_row(folder.name, "-", "-", f"invalid: {exc}")
    console.print(table)
    console.print("any folder with a task.toml is a task too: `threadlab run PATH`")


@cli.group()
def bench() -> None:
    """Measured benchmarks (tables and JSON; not pass/fail)."""


@bench.command("kernels")
@click.option("--problem", "names", multiple=True, help="only this problem (repeatable; default: all)")
@click.option("--mode", type=click.Choice(["cpu", "gpu"]), default=None,
              help="gpu: time and score on CUDA; cpu: the TRITON_INTERPRET=1 correctness pass (default: gpu if present)")
@click.option("--no-compile", is_flag=True, help="T_b from eager PyTorch only (skip torch.compile)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the full results here")
def bench_kernels(names: tuple[str, ...], mode: str | None, no_compile: bool, json_path: Path | None) -> None:
    """The GPU-kernel suite's shipped solutions: T_k, T_b, T_SOL and the SOL score S per problem."""
    from kernels import bench as kbench
    from kernels.problem import problems

    unknown = sorted(set(names) - set(problems()))
    if unknown:
        raise ThreadlabError(f"no kernel problem {unknown[0]!r}", hint=f"known: {', '.join(sorted(problems()))}")
    table_rows: list[list[str]] = []

    def progress(name: str, report: Any, entry: dict[str, Any]) -> None:
        rows = kbench.line(name, report, entry)
        table_rows.extend(rows)
        console.print(f"{name}: {rows[0][6]} ({entry['seconds']:.0f}s)", markup=False)

    summary = kbench.run(list(names) or None, mode, compile_baseline=not no_compile, on_report=progress)
    table = Table(*kbench.HEADER)
    for row in table_rows:
        table.add_row(*row)
    console.print(table)
    if summary.get("mean_S") is not None:
        console.print(f"mean S over {summary['correct']} correct problems: {summary['mean_S']:.3f}")
    if summary.get("note"):
        console.print(summary["note"], markup=False)
    console.print(f"{summary['correct']}/{summary['total']} problems correct and unflagged")
    console.print(json.dumps({k: v for k, v in summary.items() if k != "problems"}), markup=False, soft_wrap=True)
    if json_path:
        json_path.write_text(json.dumps(summary, indent=1))
    if summary["correct"] != summary["total"]:
        raise ThreadlabError(f"{summary['total'] - summary['correct']} kernel problem(s) failed or were flagged",
                             hint="see the table above; `python -m kernels.evaluate --problem NAME` shows one in full")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="threadlab", standalone_mode=False)
    except ThreadlabError as exc:
        err_console.print(f"error: {exc}", markup=False)
        if exc.hint:
            err_console.print(f"hint: {exc.hint}", markup=False)
        sys.exit(1)
    except (OSError, sqlite3.Error) as exc:
        err_console.print(f"error: {exc}", markup=False)
        err_console.print("hint: check the paths and the free disk space", markup=False)
        sys.exit(1)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
