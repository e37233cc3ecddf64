"""The TUI's data layer: a reader of state.db that produces immutable Snapshots.

The UI never touches SQLite itself. It asks a `StateSource` to wait for a change and to
load a `Snapshot` (frozen dataclasses) of what the screen shows, and it sends Commands
through it. Rules from DESIGN.md and FIELD-NOTES.md:

- change detection polls `PRAGMA data_version` on this reader's own connection every
  0.25 s (about 35 µs a poll), woken early by watchfiles on the database's directory,
  filtered to the database and its -wal file;
- every cursor is read to the end (the Store helpers fetchall), so the reader never pins
  an old snapshot;
- the database may not exist yet (the Snapshot says so and the source keeps trying), the
  engine may restart, and the file may be replaced (the inode is checked and the
  database reopened);
- memory stays bounded: only what is shown is loaded (the newest nodes of each thread,
  the newest alerts and events, the samples of one run, the tail of one run's logs);
- a load costs what changed, not the session's size: the threads' nodes are kept between
  loads and only the node rows written since are read again (`ThreadNodes`).

Queries the Store's read API does not offer are written here as read-only SELECTs
through `store.rows()` / `store.scalar()`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import NotFound, ThreadlabError
from engine.models import CommandKind, NodeStatus, RunStatus
from engine.records import AlertRow, CommandRow, EventRow, NodeRow, RunRow, VerdictRow
from engine.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_S = 0.25  # data_version poll interval, and the least time between two loads
NODE_LIMIT = 300  # newest nodes shown per thread
ALERT_LIMIT = 200
EVENT_LIMIT = 100
SAMPLE_LIMIT = 2000  # points of the selected run's training curve
HEAD_CURVE_LIMIT = 500
LOG_TAIL_BYTES = 32 * 1024
LOG_TAIL_LINES = 200
DIFF_CACHE = 64  # diffs kept (a node's diff never changes)
DIFF_MAX_LINES = 3000
REREAD_S = 5.0  # node rows updated this long before the newest update seen are read again

# node columns the tree needs (not the hypothesis or the origin JSON)
_NODE_COLUMNS = "id, task_id, thread_id, parent_id, parent2_id, commit_sha, title, status, metric, metric_std, n_runs"
_FINISHED_RUNS = ("done", "failed", "timeout")


# ---- what a Snapshot holds ---------------------------------------------------------------


@dataclass(frozen=True)
class TaskView:
    id: int
    name: str
    profile: str
    metric_name: str
    direction: str
    unit: str
    repo_path: str
    root_node_id: int | None
    best_node_id: int | None = None
    best_metric: float | None = None


@dataclass(frozen=True)
class NodeView:
    """A Node as the tree shows it."""

    id: int
    task_id: int
    thread_id: int | None
    parent_id: int | None
    parent2_id: int | None
    has_code: bool
    title: str
    status: str
    metric: float | None
    metric_std: float | None
    n_runs: int
    is_best: bool = False
    is_head: bool = False

    @property
    def merged(self) -> bool:
        return self.parent2_id is not None


@dataclass(frozen=True)
class ThreadView:
    id: int
    task_id: int
    name: str
    proposer: str
    status: str
    pinned: bool
    note: str
    head_node_id: int | None
    head_metric: float | None
    stale_attempts: int
    node_count: int
    counts: tuple[tuple[str, int], ...]  # (node status, how many), over all its nodes
    nodes: tuple[NodeView, ...]  # lineage order (every node after its parent), newest NODE_LIMIT
    nodes_hidden: int  # older nodes not loaded

    def count(self, status: str) -> int:
        return dict(self.counts).get(status, 0)


@dataclass(frozen=True)
class BestMetric:
    task_id: int
    task_name: str
    metric_name: str
    direction: str
    value: float | None
    node_id: int | None


@dataclass(frozen=True)
class EngineState:
    alive: bool
    pid: int | None = None
    host: str | None = None
    heartbeat_age: float | None = None  # seconds since the lock's heartbeat (alive or not)
    stale_lock: bool = False  # a lock row is there but its engine is dead


@dataclass(frozen=True)
class StatusFigures:
    engine: EngineState
    busy_slots: int = 0
    total_slots: int | None = None
    queued_runs: int = 0
    runs_last_hour: int = 0
    # runs_last_hour over the part of the hour that had runs: a session ten minutes old
    # that ran 7 runs does 42 an hour, not 7
    runs_per_hour: float = 0.0
    best: tuple[BestMetric, ...] = ()
    spend_usd: float = 0.0
    elapsed_s: float | None = None
    budget_s: float | None = None
    unacked_alerts: int = 0


@dataclass(frozen=True)
class LogTail:
    run_id: int | None
    text: str
    note: str = ""


@dataclass(frozen=True)
class Curve:
    label: str
    values: tuple[float, ...] = ()
    first_step: int | None = None
    last_step: int | None = None
    note: str = ""


@dataclass(frozen=True)
class NodeDetail:
    node: NodeRow
    task: TaskView | None
    thread_name: str | None
    parent_metric: float | None
    runs: tuple[RunRow, ...]
    verdicts: tuple[VerdictRow, ...]
    alerts: tuple[AlertRow, ...]
    diff: str
    diff_note: str
    log: LogTail
    run_curve: Curve
    head_curve: Curve


@dataclass(frozen=True)
class Selection:
    """What the screen has selected: the detail pane's node and, in its Runs tab, a run."""

    node_id: int | None = None
    run_id: int | None = None


@dataclass(frozen=True)
class Snapshot:
    db_path: str
    ready: bool
    message: str = ""  # when not ready: what the viewer waits for
    tasks: tuple[TaskView, ...] = ()
    threads: tuple[ThreadView, ...] = ()
    baselines: tuple[NodeView, ...] = ()  # each task's root node (it belongs to no thread)
    detail: NodeDetail | None = None
    alerts: tuple[AlertRow, ...] = ()  # newest first
    events: tuple[EventRow, ...] = ()  # oldest first, the newest EVENT_LIMIT
    status: StatusFigures = field(default_factory=lambda: StatusFigures(EngineState(alive=False)))
    commands: tuple[CommandRow, ...] = ()  # the commands the viewer asked about
    loaded_at: float = 0.0

    def thread(self, thread_id: int | None) -> ThreadView | None:
        return next((t for t in self.threads if t.id == thread_id), None)

    def node(self, node_id: int | None) -> NodeView | None:
        for n in self.baselines:
            if n.id == node_id:
                return n
        for t in self.threads:
            for n in t.nodes:
                if n.id == node_id:
                    return n
        return None

    def task(self, task_id: int | None) -> TaskView | None:
        return next((t for t in self.tasks if t.id == task_id), None)


# ---- pure helpers -------------------------------------------------------------------------


def lineage_order(nodes: Sequence[NodeView]) -> list[NodeView]:
    """Nodes in lineage order: a depth-first walk from the thread's roots (nodes whose parent
    is not in the thread), children by id. Every node comes after its parent, and a new node
    never moves the ones already listed."""
    by_id = {n.id: n for n in nodes}
    children: dict[int | None, list[NodeView]] = {}
    for n in sorted(nodes, key=lambda n: n.id):
        parent = n.parent_id if n.parent_id in by_id else None
        children.setdefault(parent, []).append(n)
    out: list[NodeView] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(children.get(n.id, [])))
    return out


def tail_text(path: Path, max_bytes: int = LOG_TAIL_BYTES, max_lines: int = LOG_TAIL_LINES) -> str | None:
    """The last lines of a text file, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return None
    text = data.decode("utf-8", "replace")
    lines = text.splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line was cut
    return "\n".join(lines[-max_lines:])


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _node_view(r: sqlite3.Row, best_ids: set[int] | frozenset[int] = frozenset()) -> NodeView:
    return NodeView(
        id=r["id"], task_id=r["task_id"], thread_id=r["thread_id"], parent_id=r["parent_id"],
        parent2_id=r["parent2_id"], has_code=r["commit_sha"] is not None, title=r["title"], status=r["status"],
        metric=r["metric"], metric_std=r["metric_std"], n_runs=r["n_runs"], is_best=r["id"] in best_ids,
    )


class ThreadNodes:
    """The newest `limit` nodes of each thread, kept between loads and brought up to date
    from the node rows written since the last read, so a load costs what changed, not the
    session's size.

    The engine sets a node's `updated_at` on every write and new nodes get higher ids, so
    the rows to read again are `updated_at >= newest seen - REREAD_S OR id > highest seen`.
    The REREAD_S margin catches a write whose timestamp was taken before another's but
    committed after it; rows read again unchanged change nothing. The safety net for what
    the deltas cannot see (a wall clock stepped back): each update also reads one thread
    in full, in turn, so every thread is read again within as many loads as there are
    threads. Everything is read again at the start and when a node moved to another
    thread. Nodes are kept without their best/head flags; `view()` sets them and keeps each
    thread's ordered tuple until its nodes or flags change (the tree skips a thread whose
    tuple is the one it drew)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: dict[int, dict[int, NodeView]] = {}  # thread id -> node id -> node (flags unset)
        self.counts: dict[int, dict[str, int]] = {}  # thread id -> node status -> how many, over all
        self.mark: tuple[int, float] | None = None  # (highest id, newest updated_at) read; None: read all
        self.full_reads = 0
        self._turn = 0  # which thread is read in full next
        self._ordered: dict[int, tuple[tuple[Any, ...], tuple[NodeView, ...]]] = {}

    async def update(self, store: Store, thread_ids: Sequence[int]) -> set[int]:
        """Read what changed; the ids of the threads whose nodes or counts changed."""
        if self.mark is None:
            return await self._read_all(store)
        max_id, newest = self.mark
        rows = await store.rows(f"SELECT {_NODE_COLUMNS}, updated_at FROM nodes WHERE updated_at >= ? OR id > ?",
                                (newest - REREAD_S, max_id))
        changed: dict[int, NodeView] = {}
        for r in rows:
            n = _node_view(r)
            if n.id <= max_id and n.id not in self.kept.get(n.thread_id, {}):  # type: ignore[arg-type]
                if any(n.id in kept for tid, kept in self.kept.items() if tid != n.thread_id):
                    return await self._read_all(store)  # it moved to another thread
            if n.thread_id is not None and self.kept.get(n.thread_id, {}).get(n.id) != n:
                changed[n.id] = n
        checked = thread_ids[self._turn % len(thread_ids)] if thread_ids else None
        fresh = {r["id"]: _node_view(r) for r in await store.rows(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE thread_id = ? ORDER BY id DESC LIMIT ?",
            (checked, self.limit))} if checked is not None else {}
        threads = {n.thread_id for n in changed.values() if n.thread_id is not None}
        counts = await self._counts(store, threads | ({checked} if checked is not None else set()))
        # every read is done: now change what is kept
        self._turn += 1
        if rows:
            self.mark = (max(max_id, *(r["id"] for r in rows)), max(newest, *(r["updated_at"] for r in rows)))
        for n in sorted(changed.values(), key=lambda n: n.id):
            kept = self.kept.setdefault(n.thread_id, {})  # type: ignore[arg-type]
            if n.id in kept or len(kept) < self.limit or n.id > min(kept):  # else an older node, not shown
                kept[n.id] = n
                while len(kept) > self.limit:
                    del kept[min(kept)]
        if checked is not None and (fresh != self.kept.get(checked, {})
                                    or counts.get(checked, {}) != self.counts.get(checked, {})):
            self.kept[checked] = fresh  # read after the deltas: as new as they are, or newer
            threads.add(checked)
        for tid in threads:
            self.counts[tid] = counts.get(tid, {})
            self._ordered.pop(tid, None)
        return threads

    async def _read_all(self, store: Store) -> set[int]:
        mark = await store.row("SELECT (SELECT MAX(id) FROM nodes) AS id, (SELECT MAX(updated_at) FROM nodes) AS t")
        rows = await store.rows(
            f"SELECT {_NODE_COLUMNS} FROM (SELECT {_NODE_COLUMNS}, ROW_NUMBER() OVER "
            "(PARTITION BY thread_id ORDER BY id DESC) AS rn FROM nodes WHERE thread_id IS NOT NULL) "
            "WHERE rn <= ? ORDER BY id", (self.limit,))
        counts = await self._counts(store, None)
        kept: dict[int, dict[int, NodeView]] = {}
        for r in rows:
            kept.setdefault(r["thread_id"], {})[r["id"]] = _node_view(r)
        changed = {tid for tid in kept.keys() | self.kept.keys() | counts.keys() | self.counts.keys()
                   if kept.get(tid) != self.kept.get(tid) or counts.get(tid) != self.counts.get(tid)}
        self.kept, self.counts = kept, counts
        for tid in changed:
            self._ordered.pop(tid, None)
        self.mark = (mark["id"] or 0, mark["t"] if mark["t"] is not None else -math.inf) if mark else (0, -math.inf)
        self.full_reads += 1
        return changed

    @staticmethod
    async def _counts(store: Store, threads: set[int] | None) -> dict[int, dict[str, int]]:
        where = "thread_id IS NOT NULL" if threads is None else f"thread_id IN ({_placeholders(list(threads))})"
        counts: dict[int, dict[str, int]] = {}
        for r in await store.rows(f"SELECT thread_id, status, COUNT(*) AS n FROM nodes WHERE {where} "
                                  "GROUP BY thread_id, status", list(threads or ())):
            counts.setdefault(r["thread_id"], {})[r["status"]] = r["n"]
        return counts

    def view(self, thread_id: int, head_id: int | None, best_ids: set[int]) -> tuple[NodeView, ...]:
        """The thread's kept nodes in lineage order, its head and best flagged. The same tuple
        as last time while nothing it shows changed."""
        kept = self.kept.get(thread_id, {})
        head = head_id if head_id in kept else None
        best = tuple(sorted(b for b in best_ids if b in kept))
        flags = (head, best)
        cached = self._ordered.get(thread_id)
        if cached is not None and cached[0] == flags:
            return cached[1]
        nodes = [replace(n, is_head=n.id == head, is_best=n.id in best) if n.id == head or n.id in best else n
                 for n in kept.values()]
        ordered = tuple(lineage_order(nodes))
        self._ordered[thread_id] = (flags, ordered)
        return ordered

    def count(self, thread_id: int) -> dict[str, int]:
        return self.counts.get(thread_id, {})


# ---- the source ----------------------------------------------------------------------------


class StateSource:
    """One reader connection to state.db, its change detection, and Snapshot loading."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        watch: bool = True,
        poll_s: float = POLL_S,
        node_limit: int = NODE_LIMIT,
    ) -> None:
        self.path = Path(db_path).expanduser().absolute()
        self.clock = clock
        self.poll_s = poll_s
        self.node_limit = node_limit
        self.problem = ""  # why the database is not open, said plainly
        self._removed = False
        self.opens = 0  # how many times a connection was opened (a replaced file reopens)
        self._watch_enabled = watch
        self._store: Store | None = None
        self._inode: tuple[int, int] | None = None
        self._loaded_token: tuple[Any, ...] | None = None
        self._last_load = 0.0
        self._forced = False
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._diffs: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._nodes = ThreadNodes(node_limit)  # the threads' nodes, kept between loads
        self._spend_cache: tuple[float, float] = (-1e18, 0.0)

    # -- lifecycle

    async def _whole(self, coro: Awaitable[T]) -> T:
        """Run a read (or the Command write) to its end even when the caller is cancelled.

        A SELECT cut off between its first step and its close leaves a cursor open on the
        connection: the reader would stay on that old snapshot (frozen data, a WAL that
        grows) and its next BEGIN IMMEDIATE fails with SQLITE_BUSY_SNAPSHOT. So the awaiting
        task may be cancelled, but the database work finishes; close() waits for it."""
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        if self._watch_enabled and self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch(), name="threadlab-tui-watch")

    async def close(self) -> None:
        """Close the watcher and the connection; safe to call twice, and it finishes even
        when the caller is cancelled (a connection left open keeps a thread that stops the
        interpreter from exiting)."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=10)
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
            self._watch_task = None
        await self._close_store()

    async def __aenter__(self) -> StateSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _close_store(self) -> None:
        store, self._store, self._inode = self._store, None, None
        self._nodes = ThreadNodes(self.node_limit)  # another database, maybe: read it all again
        if store is not None:
            try:
                await store.close()
            except Exception:  # noqa: BLE001 - a broken connection still counts as closed
                log.debug("closing the reader failed", exc_info=True)

    @property
    def store(self) -> Store | None:
        return self._store

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    async def ensure_open(self) -> bool:
        """Open (or reopen after the file was replaced) the reader; False while there is none."""
        if self._closed:
            self.problem = "the viewer is closing"
            return False
        inode = self._stat()
        if self._store is not None:
            if inode == self._inode:
                return True
            await self._close_store()
            self._removed = inode is None
        if inode is None:
            self.problem = (f"{self.path} was removed; waiting for a new database" if self._removed else
                            f"waiting for {self.path}: there is no database yet "
                            "(start a session with `threadlab run TASK`)")
            return False
        self._removed = False
        # opened in a task of its own: a connect cut off by cancellation would leak its thread
        return await self._whole(self._open(inode))

    async def _open(self, inode: tuple[int, int]) -> bool:
        try:
            store = await Store.open(self.path)
        except ThreadlabError as exc:
            self.problem = f"waiting for {self.path}: {exc}"
            return False
        except (sqlite3.Error, OSError) as exc:
            self.problem = f"waiting for {self.path}: cannot open it yet ({exc})"
            return False
        if self._closed or self._store is not None or self._stat() != inode:
            await store.close()  # closing meanwhile, opened twice, or replaced while opening
            return self._store is not None and not self._closed
        self._store, self._inode = store, inode
        self.problem = ""
        self.opens += 1
        return True

    # -- change detection

    async def _token(self) -> tuple[Any, ...]:
        if not await self.ensure_open():
            return ("waiting", self.problem)
        assert self._store is not None
        try:
            version = await self._whole(self._store.data_version())
        except (sqlite3.Error, ValueError) as exc:
            await self._close_store()
            self.problem = f"lost {self.path}: {exc}; reopening"
            return ("waiting", self.problem)
        return ("open", self._inode, self.opens, version)

    async def changed(self) -> bool:
        """One poll: is there something the last Snapshot does not show?"""
        return (await self._token()) != self._loaded_token

    def poke(self) -> None:
        """Make the next wait_for_change return at once (the selection changed)."""
        self._forced = True
        if self._wake is not None:
            self._wake.set()

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait until the database changed (True) or timeout seconds passed (False).

        Polls data_version every poll_s, woken early by the file watcher; loads are at
        least poll_s apart unless poke() asked for one."""
        if self._wake is None:
            await self.start()
        assert self._wake is not None
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()
            if self._forced:
                self._forced = False
                return True
            too_soon = time.monotonic() - self._last_load < self.poll_s
            if not too_soon and await self.changed():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._wake.wait(), min(self.poll_s, left))
            except TimeoutError:
                pass

    async def _watch(self) -> None:
        """Wake the poller as soon as the database or its WAL is written."""
        from watchfiles import awatch

        names = {self.path.name, f"{self.path.name}-wal", f"{self.path.name}-journal"}
        directory = self.path.parent
        assert self._stop is not None and self._wake is not None
        while not directory.is_dir():
            await asyncio.sleep(1.0)
        try:
            async for _changes in awatch(
                directory, watch_filter=lambda _change, p: Path(p).name in names, stop_event=self._stop,
                debounce=100, step=10, recursive=False,
            ):
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - polling alone still works
            log.warning("watching %s failed; polling only", directory, exc_info=True)

    # -- loading

    async def load(self, selection: Selection = Selection(), command_ids: Iterable[int] = ()) -> Snapshot:
        """A Snapshot of what the screen shows. Never raises for a missing database."""
        token = await self._token()
        self._loaded_token = token
        self._last_load = time.monotonic()
        if token[0] != "open":
            return Snapshot(db_path=str(self.path), ready=False, message=self.problem, loaded_at=self.clock())
        try:
            return await self._whole(self._load(selection, tuple(command_ids)))
        except (sqlite3.Error, ValueError) as exc:
            # the file went away under us, or the connection broke: reopen next time
            await self._close_store()
            self._loaded_token = None
            self.problem = f"lost {self.path} while reading it ({exc}); reopening"
            return Snapshot(db_path=str(self.path), ready=False, message=self.problem, loaded_at=self.clock())

    async def _load(self, selection: Selection, command_ids: tuple[int, ...]) -> Snapshot:
        store = self._store
        assert store is not None
        now = self.clock()
        tasks = await self._tasks(store)
        best_ids = {t.best_node_id for t in tasks if t.best_node_id is not None}
        threads = await self._threads(store, best_ids)
        roots = [t.root_node_id for t in tasks if t.root_node_id is not None]
        baselines = tuple(
            _node_view(r, best_ids)
            for r in (await store.rows(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id IN ({_placeholders(roots)}) "
                                       "ORDER BY id", roots) if roots else [])
        )
        alerts = tuple(AlertRow.from_row(r) for r in await store.rows(
            "SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (ALERT_LIMIT,)))
        events = tuple(reversed([EventRow.from_row(r) for r in await store.rows(
            "SELECT * FROM events ORDER BY id DESC LIMIT ?", (EVENT_LIMIT,))]))
        status = await self._status(store, tasks, now)
        commands = tuple(CommandRow.from_row(r) for r in await store.rows(
            f"SELECT * FROM commands WHERE id IN ({_placeholders(command_ids)}) ORDER BY id", command_ids)
        ) if command_ids else ()
        snapshot = Snapshot(
            db_path=str(self.path), ready=True, tasks=tasks, threads=threads, baselines=baselines,
            alerts=alerts, events=events, status=status, commands=commands, loaded_at=now,
        )
        if selection.node_id is not None:
            detail = await self._detail(store, snapshot, selection, now)
            snapshot = replace(snapshot, detail=detail)
        return snapshot

    async def _tasks(self, store: Store) -> tuple[TaskView, ...]:
        out = []
        for t in await store.tasks():
            order = "DESC" if t.direction == "maximize" else "ASC"
            best = await store.row(
                "SELECT id, metric FROM nodes WHERE task_id = ? AND status IN ('accepted', 'baseline') "
                f"AND metric IS NOT NULL ORDER BY metric {order}, id LIMIT 1", (t.id,))
            out.append(TaskView(
                id=t.id, name=t.name, profile=t.profile, metric_name=t.metric_name, direction=t.direction,
                unit=t.unit, repo_path=t.repo_path, root_node_id=t.root_node_id,
                best_node_id=best["id"] if best else None, best_metric=best["metric"] if best else None,
            ))
        return tuple(out)

    async def _threads(self, store: Store, best_ids: set[int]) -> tuple[ThreadView, ...]:
        threads = await store.threads()
        await self._nodes.update(store, [t.id for t in threads])
        if not threads:
            return ()
        heads = [t.head_node_id for t in threads if t.head_node_id is not None]
        head_metric = {r["id"]: r["metric"] for r in await store.rows(
            f"SELECT id, metric FROM nodes WHERE id IN ({_placeholders(heads)})", heads)} if heads else {}
        out = []
        for t in threads:
            nodes = self._nodes.view(t.id, t.head_node_id, best_ids)
            counts = self._nodes.count(t.id)
            total = sum(counts.values())
            out.append(ThreadView(
                id=t.id, task_id=t.task_id, name=t.name, proposer=t.proposer, status=t.status,
                pinned=bool(t.pinned), note=t.note, head_node_id=t.head_node_id,
                head_metric=head_metric.get(t.head_node_id), stale_attempts=t.stale_attempts, node_count=total,
                counts=tuple(sorted(counts.items())), nodes=nodes, nodes_hidden=max(0, total - len(nodes)),
            ))
        return tuple(out)

    async def _status(self, store: Store, tasks: tuple[TaskView, ...], now: float) -> StatusFigures:
        lock = await store.lock()
        alive = await store.engine_alive()
        engine = EngineState(
            alive=alive is not None,
            pid=lock.pid if lock else None,
            host=lock.host if lock else None,
            heartbeat_age=(now - lock.heartbeat_at) if lock else None,
            stale_lock=lock is not None and alive is None,
        )
        counts = {r["status"]: r["n"] for r in await store.rows(
            "SELECT status, COUNT(*) AS n FROM runs WHERE status IN ('running', 'queued') GROUP BY status")}
        (hour,) = await store.rows(  # one pass over runs: this is the refresh path
            f"SELECT COALESCE(SUM(ended_at >= ? AND status IN ({_placeholders(_FINISHED_RUNS)})), 0) AS n, "
            "MIN(started_at) AS first_start FROM runs", (now - 3600, *_FINISHED_RUNS))
        last_hour, first_start = hour["n"], hour["first_start"]
        window = min(3600.0, now - first_start) if first_start is not None else 3600.0
        per_hour = (last_hour or 0) * 3600.0 / max(window, 60.0)  # under a minute: the count itself
        session = await store.session()
        config = session[0] if session else {}
        total = await self._total_slots(store, config)
        unacked = await store.scalar("SELECT COUNT(*) FROM alerts WHERE acknowledged = 0")
        best = tuple(BestMetric(t.id, t.name, t.metric_name, t.direction, t.best_metric, t.best_node_id)
                     for t in tasks)
        return StatusFigures(
            engine=engine, busy_slots=counts.get("running", 0), total_slots=total,
            queued_runs=counts.get("queued", 0), runs_last_hour=last_hour or 0, runs_per_hour=per_hour, best=best,
            spend_usd=await self._spend(store), elapsed_s=session[1] if session else None,
            budget_s=config.get("budget_s"), unacked_alerts=unacked or 0,
        )

    async def _total_slots(self, store: Store, config: dict[str, Any]) -> int | None:
        """Slots of the engine (its latest start or slots-changed event); else the session's
        CPU slots. Read on every load: on Ray they follow the cluster."""
        slots = await store.engine_slots()
        return len(slots) if slots else config.get("cpu_slots")

    async def _spend(self, store: Store) -> float:
        """Money spent by proposers (Store.spent_usd). Recomputed at most every 5 s."""
        stamp, value = self._spend_cache
        if time.monotonic() - stamp < 5.0:
            return value
        value = await store.spent_usd()
        self._spend_cache = (time.monotonic(), value)
        return value

    # -- the selected node

    async def _detail(self, store: Store, snap: Snapshot, selection: Selection, now: float) -> NodeDetail | None:
        try:
            node = await store.node(selection.node_id)  # type: ignore[arg-type]
        except NotFound:
            return None
        task = snap.task(node.task_id)
        thread = snap.thread(node.thread_id)
        parent = None
        if node.parent_id is not None:
            try:
                parent = await store.node(node.parent_id)
            except NotFound:
                parent = None
        runs = tuple(await store.runs_of(node.id))
        diff, diff_note = await self._diff(node, parent, task)
        shown_run = self._shown_run(runs, selection.run_id)
        return NodeDetail(
            node=node, task=task, thread_name=thread.name if thread else None,
            parent_metric=parent.metric if parent else None, runs=runs,
            verdicts=tuple(await store.verdicts(node.id)), alerts=tuple(await store.alerts(node.id)),
            diff=diff, diff_note=diff_note, log=await self._log(shown_run),
            run_curve=await self._run_curve(store, shown_run, task),
            head_curve=await self._head_curve(store, node, thread, task),
        )

    @staticmethod
    def _shown_run(runs: Sequence[RunRow], run_id: int | None) -> RunRow | None:
        """The run whose log and curve are shown: the chosen one, else a running one, else the
        newest that started."""
        for r in runs:
            if r.id == run_id:
                return r
        running = [r for r in runs if r.status == RunStatus.RUNNING]
        if running:
            return running[-1]
        started = [r for r in runs if r.run_dir]
        return started[-1] if started else (runs[-1] if runs else None)

    async def _diff(self, node: NodeRow, parent: NodeRow | None, task: TaskView | None) -> tuple[str, str]:
        if node.id in self._diffs:
            self._diffs.move_to_end(node.id)
            return self._diffs[node.id]
        if node.status == NodeStatus.BASELINE or node.parent_id is None:
            result = ("", "the baseline: the task's seed code, nothing to compare it with")
        elif not node.commit_sha:
            result = ("", "no code: its edits did not apply (see Info)")
        elif parent is None or not parent.commit_sha or task is None:
            result = ("", "its parent's code is unknown")
        else:
            from engine.workspace import Workspace

            try:
                text = await asyncio.to_thread(
                    Workspace(Path(task.repo_path), "").diff, parent.commit_sha, node.commit_sha)
            except (ThreadlabError, OSError) as exc:
                return "", f"cannot read the diff: {exc}"  # not cached: the repository may come back
            lines = text.splitlines()
            if len(lines) > DIFF_MAX_LINES:
                text = "\n".join(lines[:DIFF_MAX_LINES])
                note = f"first {DIFF_MAX_LINES} of {len(lines)} lines; `threadlab show {node.id}` prints all"
            else:
                note = "" if text.strip() else "no change against its parent"
            against = f"#{parent.id}" + (f" (merged with #{node.parent2_id})" if node.parent2_id else "")
            result = (text, note or f"against its parent {against}")
        self._diffs[node.id] = result
        while len(self._diffs) > DIFF_CACHE:
            self._diffs.popitem(last=False)
        return result

    async def _log(self, run: RunRow | None) -> LogTail:
        if run is None:
            return LogTail(None, "", "no runs yet")
        if not run.run_dir:
            return LogTail(run.id, "", f"run {run.id} has not started ({run.status})")
        run_dir = Path(run.run_dir)

        def read() -> str:
            parts = []
            for name in ("stdout.log", "stderr.log"):
                text = tail_text(run_dir / name)
                if text is not None:
                    parts.append(f"── {name} ──\n{text}" if text else f"── {name} (empty) ──")
            return "\n".join(parts)

        text = await asyncio.to_thread(read)
        note = f"run {run.id} ({run.status}), {run_dir}"
        return LogTail(run.id, text, note if text else f"{note}: no log files yet")

    async def _run_curve(self, store: Store, run: RunRow | None, task: TaskView | None) -> Curve:
        if run is None:
            return Curve("training curve", note="no runs yet")
        names = [r["name"] for r in await store.rows(
            "SELECT DISTINCT name FROM samples WHERE run_id = ? ORDER BY name", (run.id,))]
        if not names:
            return Curve(f"run {run.id}", note=f"run {run.id} streamed no samples")
        preferred = [n for n in names if task and n == task.metric_name] + [n for n in names if "loss" in n]
        name = (preferred or names)[0]
        points = await store.samples(run.id, name, limit=SAMPLE_LIMIT)
        return Curve(
            f"run {run.id} {name}", tuple(v for _, _, v in points),
            points[0][0] if points else None, points[-1][0] if points else None,
            note=(f"other samples: {', '.join(n for n in names if n != name)}" if len(names) > 1 else ""),
        )

    async def _head_curve(self, store: Store, node: NodeRow, thread: ThreadView | None,
                          task: TaskView | None) -> Curve:
        metric = task.metric_name if task else "metric"
        if thread is None:
            return Curve(f"head {metric}", note="the baseline belongs to no thread")
        start = await store.scalar(
            "SELECT p.metric FROM nodes n JOIN nodes p ON p.id = n.parent_id WHERE n.thread_id = ? "
            "ORDER BY n.id LIMIT 1", (thread.id,))
        accepted = [r["metric"] for r in reversed(await store.rows(
            "SELECT metric FROM nodes WHERE thread_id = ? AND status = 'accepted' AND metric IS NOT NULL "
            "ORDER BY id DESC LIMIT ?", (thread.id, HEAD_CURVE_LIMIT)))]
        values = ([start] if start is not None else []) + accepted
        return Curve(f"thread {thread.name} head {metric} over accepted nodes", tuple(values),
                     note="" if accepted else "no accepted node yet")

    # -- what the viewer writes: Command rows, and the one count a confirmation needs

    async def send(self, kind: CommandKind | str, args: dict[str, Any]) -> int:
        """Write a Command for the engine (its own short BEGIN IMMEDIATE transaction)."""
        if not await self.ensure_open():
            raise ThreadlabError(self.problem or f"no database at {self.path}")
        assert self._store is not None
        return await self._whole(self._store.add_command(kind, args, source="tui"))

    async def running_runs_of_thread(self, thread_id: int) -> int:
        if not await self.ensure_open():
            return 0
        assert self._store is not None
        return await self._whole(self._store.scalar(
            "SELECT COUNT(*) FROM runs r JOIN nodes n ON n.id = r.node_id WHERE n.thread_id = ? "
            "AND r.status = 'running'", (thread_id,))) or 0
