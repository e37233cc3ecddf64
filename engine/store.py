"""state.db through aiosqlite: schema migrations, the engine lock, writes and the read API.

Rules (DESIGN.md, FIELD-NOTES.md): WAL with synchronous=NORMAL; the engine holds one
writer connection and every write is a short `BEGIN IMMEDIATE` transaction; viewers only
read, except for Command rows; every cursor is read to the end and closed, so no reader
pins an old snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from engine.errors import EngineLocked, NotFound, SchemaTooNew, StoreError
from engine.models import OPEN_NODE_STATUSES, CommandKind, NodeStatus, RunStatus
from engine.records import (
    AlertRow,
    CommandRow,
    EventRow,
    LessonRow,
    LockRow,
    NodeRow,
    RunRow,
    TaskRow,
    ThreadRow,
    VerdictRow,
)
from engine.schema import MIGRATIONS, SCHEMA_VERSION

# A lock whose heartbeat is older than this belongs to a dead engine.
LOCK_STALE_S = 15.0


def pid_alive(pid: int) -> bool:
    """Whether a process of this host runs; a zombie (killed, never reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill() said it exists


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


class Store:
    """One connection to state.db. The engine opens it as the writer; viewers as readers."""

    def __init__(self, db: aiosqlite.Connection, path: Path, writer: bool):
        self._db = db
        self.path = path
        self.writer = writer
        self._write_lock = asyncio.Lock()

    # ---- opening -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | os.PathLike, *, writer: bool = False, create: bool = False) -> Store:
        path = Path(path).expanduser().resolve()
        if not path.exists() and not create:
            raise StoreError(
                f"no database at {path}",
                hint="start a session with `threadlab run TASK`, or pass --db with the right path",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        try:
            return await cls._prepare(db, path, writer)
        except sqlite3.Error as exc:
            await db.close()
            raise StoreError(f"cannot use {path} as a threadlab database: {exc}",
                             hint="check the --db path; a database that is not threadlab's is never changed") from exc
        except BaseException:
            await db.close()
            raise

    @classmethod
    async def _prepare(cls, db: aiosqlite.Connection, path: Path, writer: bool) -> Store:
        """Check the schema version (before writing anything), then set up and migrate."""
        db.row_factory = sqlite3.Row
        version = await cls._scalar(db, "PRAGMA user_version")
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {version}, newer than this threadlab's {SCHEMA_VERSION}; "
                "it was left untouched",
                hint="upgrade threadlab (pip install -U threadlab) to open it",
            )
        await db.execute("PRAGMA busy_timeout = 30000")
        await db.execute("PRAGMA foreign_keys = ON")
        if writer:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await cls._migrate(db, version)
        elif version < SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}; this threadlab reads version {SCHEMA_VERSION}",
                hint="start the engine once (`threadlab engine`) to upgrade it",
            )
        return cls(db, path, writer)

    @staticmethod
    async def _scalar(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await db.execute_fetchall(sql, params)
        return rows[0][0] if rows else None

    @staticmethod
    async def _migrate(db: aiosqlite.Connection, version: int) -> None:
        for number in range(version, SCHEMA_VERSION):
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(MIGRATIONS[number]):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number + 1}")
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- primitives ----------------------------------------------------------------

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One short write transaction, taken with BEGIN IMMEDIATE."""
        async with self._write_lock:
            await self._settle("BEGIN IMMEDIATE", undo_on_cancel=True)
            try:
                yield self._db
            except BaseException:
                await self._settle("ROLLBACK")
                raise
            else:
                await self._settle("COMMIT")

    async def _settle(self, sql: str, undo_on_cancel: bool = False) -> None:
        """Run a transaction statement to its end even when the caller is cancelled.

        aiosqlite runs statements in order on its own thread: a statement whose awaiting task
        is cancelled still runs later. So a cancelled BEGIN is waited for and rolled back, and
        a cancelled COMMIT or ROLLBACK is waited for, before the cancellation goes on."""
        step = asyncio.ensure_future(self._db.execute(sql))
        try:
            await asyncio.shield(step)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await step
                if undo_on_cancel:
                    await self._db.execute("ROLLBACK")
            raise
        except sqlite3.OperationalError:
            if sql != "ROLLBACK":  # SQLite may have rolled back already (after some errors)
                raise

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        # On the writer's connection a read and a write must not interleave: a BEGIN run
        # between a SELECT's execute and its fetch would upgrade a stale snapshot, which
        # SQLite refuses at once ("database is locked") once a viewer has committed.
        if self.writer:
            async with self._write_lock:
                yield
        else:
            yield

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._reading():  # fetched in one worker call: a cancel leaves no cursor open
            return list(await self._db.execute_fetchall(sql, params))

    async def row(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._reading():
            rows = await self._db.execute_fetchall(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._reading():
            return await self._scalar(self._db, sql, params)

    async def data_version(self) -> int:
        """Changes whenever another connection commits (cheap; for viewers' polling)."""
        return await self.scalar("PRAGMA data_version")

    async def schema_version(self) -> int:
        return await self.scalar("PRAGMA user_version")

    # ---- the engine lock -----------------------------------------------------------

    async def acquire_lock(self, stale_after_s: float = LOCK_STALE_S) -> LockRow | None:
        """Take the engine lock, or raise EngineLocked naming the running engine.

        Returns the lock row taken over from a dead engine, if there was one.
        """
        host, pid, now = socket.gethostname(), os.getpid(), time.time()
        async with self.write() as db:
            async with db.execute("SELECT * FROM engine_lock WHERE id = 1") as cur:
                old_row = await cur.fetchone()
            old = LockRow.from_row(old_row) if old_row else None
            if old is not None and not (old.host == host and old.pid == pid):
                age = now - old.heartbeat_at
                dead = (old.host == host and not pid_alive(old.pid)) or age > stale_after_s
                if not dead:
                    raise EngineLocked(
                        f"an engine is already running on this database: pid {old.pid} on {old.host}, "
                        f"heartbeat {age:.1f}s ago",
                        hint="stop it with `threadlab stop`, or watch it with `threadlab status`",
                    )
            await db.execute(
                "INSERT OR REPLACE INTO engine_lock (id, pid, host, started_at, heartbeat_at) VALUES (1, ?, ?, ?, ?)",
                (pid, host, now, now),
            )
        return old

    async def heartbeat(self, elapsed_delta: float = 0.0) -> None:
        now = time.time()
        async with self.write() as db:
            await db.execute("UPDATE engine_lock SET heartbeat_at = ? WHERE id = 1 AND pid = ?", (now, os.getpid()))
            await db.execute(
                "UPDATE session SET elapsed_s = elapsed_s + ?, updated_at = ? WHERE id = 1", (elapsed_delta, now)
            )

    async def release_lock(self) -> None:
        async with self.write() as db:
            await db.execute("DELETE FROM engine_lock WHERE id = 1 AND pid = ?", (os.getpid(),))

    async def lock(self) -> LockRow | None:
        row = await self.row("SELECT * FROM engine_lock WHERE id = 1")
        return LockRow.from_row(row) if row else None

    async def engine_alive(self, stale_after_s: float = LOCK_STALE_S) -> LockRow | None:
        """The running engine's lock row, or None when no live engine holds the lock."""
        lock = await self.lock()
        if lock is None:
            return None
        if lock.host == socket.gethostname() and not pid_alive(lock.pid):
            return None
        if time.time() - lock.heartbeat_at > stale_after_s:
            return None
        return lock

    # ---- session -------------------------------------------------------------------

    async def save_session(self, config: dict[str, Any], task_id: int | None, reset_elapsed: bool) -> None:
        now = time.time()
        async with self.write() as db:
            await db.execute(
                "INSERT INTO session (id, task_id, config, elapsed_s, updated_at) VALUES (1, ?, ?, 0, ?) "
                "ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id, config = excluded.config, "
                "updated_at = excluded.updated_at"
                + (", elapsed_s = 0" if reset_elapsed else ""),
                (task_id, json.dumps(config), now),
            )

    async def session(self) -> tuple[dict[str, Any], float, int | None] | None:
        row = await self.row("SELECT config, elapsed_s, task_id FROM session WHERE id = 1")
        return (json.loads(row["config"]), row["elapsed_s"], row["task_id"]) if row else None

    # ---- tasks ---------------------------------------------------------------------

    async def upsert_task(
        self, name: str, path: str, profile: str, metric_name: str, direction: str, unit: str, repo_path: str
    ) -> TaskRow:
        async with self.write() as db:
            await db.execute(
                "INSERT INTO tasks (name, path, profile, metric_name, direction, unit, repo_path, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path, profile) DO UPDATE SET "
                "name = excluded.name, metric_name = excluded.metric_name, direction = excluded.direction, "
                "unit = excluded.unit",
                (name, path, profile, metric_name, direction, unit, repo_path, time.time()),
            )
        row = await self.row("SELECT * FROM tasks WHERE path = ? AND profile = ?", (path, profile))
        assert row is not None
        return TaskRow.from_row(row)

    async def set_task_root(self, task_id: int, node_id: int) -> None:
        async with self.write() as db:
            await db.execute("UPDATE tasks SET root_node_id = ? WHERE id = ?", (node_id, task_id))

    async def task(self, task_id: int) -> TaskRow:
        row = await self.row("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise NotFound(f"no task with id {task_id}")
        return TaskRow.from_row(row)

    async def tasks(self) -> list[TaskRow]:
        return [TaskRow.from_row(r) for r in await self.rows("SELECT * FROM tasks ORDER BY id")]

    # ---- threads -------------------------------------------------------------------

    async def add_thread(self, task_id: int, name: str, head_node_id: int, proposer: str, note: str = "") -> ThreadRow:
        now = time.time()
        async with self.write() as db:
            async with db.execute(
                "INSERT INTO threads (task_id, name, branch, head_node_id, proposer, status, note, created_at, "
                "updated_at) VALUES (?, ?, '', ?, ?, 'running', ?, ?, ?)",
                (task_id, name, head_node_id, proposer, note, now, now),
            ) as cur:
                thread_id = cur.lastrowid
            await db.execute("UPDATE threads SET branch = ? WHERE id = ?", (f"thread-{thread_id}", thread_id))
        return await self.thread(thread_id)

    async def thread(self, thread_id: int) -> ThreadRow:
        row = await self.row("SELECT * FROM threads WHERE id = ?", (thread_id,))
        if row is None:
            raise NotFound(f"no thread {thread_id}", hint="list threads with `threadlab status`")
        return ThreadRow.from_row(row)

    async def threads(self, task_id: int | None = None) -> list[ThreadRow]:
        if task_id is None:
            rows = await self.rows("SELECT * FROM threads ORDER BY id")
        else:
            rows = await self.rows("SELECT * FROM threads WHERE task_id = ? ORDER BY id", (task_id,))
        return [ThreadRow.from_row(r) for r in rows]

    async def update_thread(self, thread_id: int, **changes: Any) -> None:
        allowed = {"head_node_id", "status", "pinned", "stale_attempts", "note", "proposer", "name"}
        assert set(changes) <= allowed, changes
        sets = ", ".join(f"{k} = ?" for k in changes)
        async with self.write() as db:
            await db.execute(
                f"UPDATE threads SET {sets}, updated_at = ? WHERE id = ?", (*changes.values(), time.time(), thread_id)
            )

    # ---- nodes ---------------------------------------------------------------------

    async def add_node(
        self,
        *,
        task_id: int,
        thread_id: int | None,
        parent_id: int | None,
        commit_sha: str | None,
        title: str,
        hypothesis: str,
        origin: dict[str, Any],
        status: NodeStatus,
        parent2_id: int | None = None,
        error: str = "",
        seeds: Iterable[tuple[int, str]] = (),
        alerts: Iterable[tuple[str, str, dict[str, Any]]] = (),
    ) -> int:
        """Insert a Node with its first Runs (seed, purpose) and the Alerts (guard, message,
        evidence) that flagged it, in one transaction."""
        now = time.time()
        async with self.write() as db:
            async with db.execute(
                "INSERT INTO nodes (task_id, thread_id, parent_id, parent2_id, commit_sha, title, hypothesis, origin, "
                "status, error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, thread_id, parent_id, parent2_id, commit_sha, title, hypothesis, json.dumps(origin),
                 str(status), error, now, now),
            ) as cur:
                node_id = cur.lastrowid
            await db.executemany(
                "INSERT INTO runs (node_id, seed, purpose, status, queued_at) VALUES (?, ?, ?, 'queued', ?)",
                [(node_id, seed, purpose, now) for seed, purpose in seeds],
            )
            await db.executemany(
                "INSERT INTO alerts (node_id, guard, message, evidence, created_at) VALUES (?, ?, ?, ?, ?)",
                [(node_id, guard, message, json.dumps(evidence), now) for guard, message, evidence in alerts],
            )
        return node_id

    async def node(self, node_id: int) -> NodeRow:
        row = await self.row("SELECT * FROM nodes WHERE id = ?", (node_id,))
        if row is None:
            raise NotFound(f"no node {node_id}", hint="list nodes with `threadlab status` or the TUI")
        return NodeRow.from_row(row)

    async def nodes(self, task_id: int | None = None, thread_id: int | None = None) -> list[NodeRow]:
        where, params = [], []
        if task_id is not None:
            where.append("task_id = ?")
            params.append(task_id)
        if thread_id is not None:
            where.append("thread_id = ?")
            params.append(thread_id)
        sql = "SELECT * FROM nodes" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        return [NodeRow.from_row(r) for r in await self.rows(sql, params)]

    async def mark_node_running(self, node_id: int) -> None:
        """queued -> running, unless something (a prune) decided the node meanwhile."""
        async with self.write() as db:
            await db.execute(
                "UPDATE nodes SET status = 'running', updated_at = ? WHERE id = ? AND status = 'queued'",
                (time.time(), node_id),
            )

    async def start_validation(self, node_id: int, metric: float, seeds: Iterable[tuple[int, str]]) -> None:
        """Mark a node validating and queue its validation runs, in one transaction."""
        now = time.time()
        async with self.write() as db:
            await db.execute(
                "UPDATE nodes SET status = 'validating', metric = ?, updated_at = ? WHERE id = ?", (metric, now, node_id)
            )
            await db.executemany(
                "INSERT INTO runs (node_id, seed, purpose, status, queued_at) VALUES (?, ?, ?, 'queued', ?)",
                [(node_id, seed, purpose, now) for seed, purpose in seeds],
            )

    async def open_nodes(self, thread_id: int) -> list[NodeRow]:
        statuses = [str(s) for s in OPEN_NODE_STATUSES]
        rows = await self.rows(
            f"SELECT * FROM nodes WHERE thread_id = ? AND status IN ({_placeholders(statuses)}) ORDER BY id",
            (thread_id, *statuses),
        )
        return [NodeRow.from_row(r) for r in rows]

    async def update_node(self, node_id: int, **changes: Any) -> None:
        allowed = {"status", "metric", "metric_std", "n_runs", "p_value", "error", "thread_id"}
        assert set(changes) <= allowed, changes
        changes = {k: (str(v) if isinstance(v, NodeStatus) else v) for k, v in changes.items()}
        sets = ", ".join(f"{k} = ?" for k in changes)
        async with self.write() as db:
            await db.execute(
                f"UPDATE nodes SET {sets}, updated_at = ? WHERE id = ?", (*changes.values(), time.time(), node_id)
            )

    # ---- runs ----------------------------------------------------------------------

    async def queue_runs(self, node_id: int, seeds: Iterable[tuple[int, str]], attempt: int = 1) -> None:
        now = time.time()
        async with self.write() as db:
            await db.executemany(
                "INSERT INTO runs (node_id, seed, purpose, status, attempt, queued_at) VALUES (?, ?, ?, 'queued', ?, ?)",
                [(node_id, seed, purpose, attempt, now) for seed, purpose in seeds],
            )

    async def run(self, run_id: int) -> RunRow:
        row = await self.row("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise NotFound(f"no run {run_id}")
        return RunRow.from_row(row)

    async def runs_of(self, node_id: int) -> list[RunRow]:
        return [RunRow.from_row(r) for r in await self.rows("SELECT * FROM runs WHERE node_id = ? ORDER BY id", (node_id,))]

    async def runs(self, status: RunStatus | None = None) -> list[RunRow]:
        if status is None:
            rows = await self.rows("SELECT * FROM runs ORDER BY id")
        else:
            rows = await self.rows("SELECT * FROM runs WHERE status = ? ORDER BY id", (str(status),))
        return [RunRow.from_row(r) for r in rows]

    async def next_queued_runs(self, limit: int, purposes: Sequence[str]) -> list[RunRow]:
        """Queued runs whose thread may run now, baseline and validation first."""
        rows = await self.rows(
            "SELECT r.* FROM runs r JOIN nodes n ON n.id = r.node_id LEFT JOIN threads t ON t.id = n.thread_id "
            f"WHERE r.status = 'queued' AND r.purpose IN ({_placeholders(purposes)}) "
            # runs of a decided node measure it for someone else's decision (a fork, a merge)
            "AND (t.id IS NULL OR t.status = 'running' OR r.purpose = 'baseline' "
            "     OR n.status NOT IN ('queued', 'running', 'validating')) "
            "ORDER BY CASE r.purpose WHEN 'baseline' THEN 0 WHEN 'validate' THEN 1 ELSE 2 END, r.id LIMIT ?",
            (*purposes, limit),
        )
        return [RunRow.from_row(r) for r in rows]

    async def start_run(self, run_id: int, slot: str, run_dir: str) -> bool:
        """Mark a queued run running; False if it was cancelled meanwhile."""
        async with self.write() as db:
            async with db.execute(
                "UPDATE runs SET status = 'running', slot = ?, run_dir = ?, started_at = ? "
                "WHERE id = ? AND status = 'queued'",
                (slot, run_dir, time.time(), run_id),
            ) as cur:
                return cur.rowcount == 1

    async def finish_run(
        self,
        run_id: int,
        *,
        status: RunStatus,
        metric: float | None,
        exit_code: int | None,
        error: str,
        extra: dict[str, Any],
        started_at: float | None,
        ended_at: float,
        alerts: Sequence[tuple[int | None, str, str, dict[str, Any]]] = (),
    ) -> None:
        """Record a Run's outcome and the Alerts its audits raised, in one transaction."""
        now = time.time()
        async with self.write() as db:
            await db.execute(
                "UPDATE runs SET status = ?, metric = ?, exit_code = ?, error = ?, extra = ?, "
                "started_at = COALESCE(?, started_at), ended_at = ? WHERE id = ?",
                (str(status), metric, exit_code, error, json.dumps(extra), started_at, ended_at, run_id),
            )
            await db.executemany(
                "INSERT INTO alerts (node_id, run_id, guard, message, evidence, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(node_id, run_id, guard, message, json.dumps(evidence), now) for node_id, guard, message, evidence in alerts],
            )

    async def cancel_queued_runs(self, node_ids: Sequence[int]) -> int:
        if not node_ids:
            return 0
        async with self.write() as db:
            async with db.execute(
                f"UPDATE runs SET status = 'cancelled', ended_at = ? WHERE status = 'queued' "
                f"AND node_id IN ({_placeholders(node_ids)})",
                (time.time(), *node_ids),
            ) as cur:
                return cur.rowcount

    async def requeue_interrupted(self, run_ids: Sequence[int] | None = None,
                                  error: str = "the engine stopped during this run",
                                  counts: bool = True) -> list[int]:
        """Mark running runs interrupted and queue a fresh attempt of each; returns the old ids.
        `counts=False`: the run never started (its slot was gone), so the next one keeps its
        attempt number."""
        now = time.time()
        async with self.write() as db:
            if run_ids is None:
                async with db.execute("SELECT * FROM runs WHERE status = 'running'") as cur:
                    rows = [RunRow.from_row(r) for r in await cur.fetchall()]
            else:
                async with db.execute(
                    f"SELECT * FROM runs WHERE id IN ({_placeholders(run_ids)})", tuple(run_ids)
                ) as cur:
                    rows = [RunRow.from_row(r) for r in await cur.fetchall()]
            for r in rows:
                await db.execute(
                    "UPDATE runs SET status = 'interrupted', ended_at = ?, error = ? WHERE id = ?",
                    (now, error, r.id),
                )
                await db.execute(
                    "INSERT INTO runs (node_id, seed, purpose, status, attempt, queued_at) VALUES (?, ?, ?, 'queued', ?, ?)",
                    (r.node_id, r.seed, r.purpose, r.attempt + (1 if counts else 0), now),
                )
        return [r.id for r in rows]

    # ---- samples -------------------------------------------------------------------

    async def add_samples(self, run_id: int, batch: Sequence[dict[str, Any]]) -> None:
        async with self.write() as db:
            await db.executemany(
                "INSERT INTO samples (run_id, step, name, value, t) VALUES (?, ?, ?, ?, ?)",
                [(run_id, int(s["step"]), str(s["name"]), float(s["value"]), float(s["t"])) for s in batch],
            )

    async def samples(self, run_id: int, name: str | None = None, limit: int = 10_000) -> list[tuple[int, str, float]]:
        sql = "SELECT step, name, value FROM samples WHERE run_id = ?"
        params: list[Any] = [run_id]
        if name is not None:
            sql += " AND name = ?"
            params.append(name)
        rows = await self.rows(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [(r["step"], r["name"], r["value"]) for r in reversed(rows)]

    # ---- verdicts, alerts, lessons, events -------------------------------------------

    async def add_verdict(self, node_id: int, accepted: bool, summary: str, details: dict[str, Any]) -> None:
        async with self.write() as db:
            await db.execute(
                "INSERT INTO verdicts (node_id, accepted, summary, details, created_at) VALUES (?, ?, ?, ?, ?)",
                (node_id, int(accepted), summary, json.dumps(details), time.time()),
            )

    async def verdicts(self, node_id: int) -> list[VerdictRow]:
        rows = await self.rows("SELECT * FROM verdicts WHERE node_id = ? ORDER BY id", (node_id,))
        return [VerdictRow.from_row(r) for r in rows]

    async def add_alert(
        self, node_id: int | None, run_id: int | None, guard: str, message: str, evidence: dict[str, Any]
    ) -> None:
        async with self.write() as db:
            await db.execute(
                "INSERT INTO alerts (node_id, run_id, guard, message, evidence, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (node_id, run_id, guard, message, json.dumps(evidence), time.time()),
            )

    async def alerts(self, node_id: int | None = None) -> list[AlertRow]:
        if node_id is None:
            rows = await self.rows("SELECT * FROM alerts ORDER BY id")
        else:
            rows = await self.rows("SELECT * FROM alerts WHERE node_id = ? ORDER BY id", (node_id,))
        return [AlertRow.from_row(r) for r in rows]

    async def acknowledge_alert(self, alert_id: int) -> bool:
        async with self.write() as db:
            async with db.execute("UPDATE alerts SET acknowledged = 1 WHERE id = ?", (alert_id,)) as cur:
                return cur.rowcount == 1

    async def add_lesson(
        self,
        task_id: int,
        node_id: int | None,
        idea: str,
        positive: bool,
        effect: float | None,
        confidence: float | None,
        evidence: dict[str, Any],
    ) -> None:
        async with self.write() as db:
            await db.execute(
                "INSERT INTO lessons (task_id, node_id, idea, positive, effect, confidence, evidence, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, node_id, idea, int(positive), effect, confidence, json.dumps(evidence), time.time()),
            )

    async def lessons(self, task_id: int) -> list[LessonRow]:
        rows = await self.rows("SELECT * FROM lessons WHERE task_id = ? ORDER BY id", (task_id,))
        return [LessonRow.from_row(r) for r in rows]

    async def add_event(self, level: str, kind: str, message: str, **data: Any) -> None:
        async with self.write() as db:
            await db.execute(
                "INSERT INTO events (t, level, kind, message, data) VALUES (?, ?, ?, ?, ?)",
                (time.time(), level, kind, message, json.dumps(data)),
            )

    async def spent_usd(self, task_id: int | None = None) -> float:
        """Money proposers spent (USD): each proposal's `cost_usd` in its node's origin, plus
        what failed proposals spent, recorded in their `proposer`/`spend` events."""
        where, params = ("WHERE task_id = ?", (task_id,)) if task_id is not None else ("", ())
        nodes = await self.scalar(
            f"SELECT COALESCE(SUM(json_extract(origin, '$.cost_usd')), 0) FROM nodes {where}", params)
        failed = await self.scalar(
            "SELECT COALESCE(SUM(json_extract(data, '$.cost_usd')), 0) FROM events "
            "WHERE kind IN ('proposer', 'spend') AND json_extract(data, '$.cost_usd') IS NOT NULL")
        return float(nodes or 0) + float(failed or 0)

    async def engine_slots(self) -> list[str] | None:
        """The slots of the engine that started last (from its start event), or None."""
        data = await self.scalar(
            "SELECT json_extract(data, '$.slots') FROM events WHERE kind = 'engine' "
            "AND json_extract(data, '$.slots') IS NOT NULL ORDER BY id DESC LIMIT 1")
        return json.loads(data) if data else None

    async def events(self, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        rows = await self.rows("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [EventRow.from_row(r) for r in rows]

    # ---- commands ------------------------------------------------------------------

    async def add_command(self, kind: CommandKind | str, args: dict[str, Any] | None = None, source: str = "cli") -> int:
        """The one write a viewer makes: a Command for the engine to carry out."""
        kind = CommandKind(kind)
        async with self.write() as db:
            async with db.execute(
                "INSERT INTO commands (kind, args, source, created_at) VALUES (?, ?, ?, ?)",
                (str(kind), json.dumps(args or {}), source, time.time()),
            ) as cur:
                return cur.lastrowid

    async def pending_commands(self) -> list[CommandRow]:
        rows = await self.rows("SELECT * FROM commands WHERE status = 'pending' ORDER BY id")
        return [CommandRow.from_row(r) for r in rows]

    async def command(self, command_id: int) -> CommandRow:
        row = await self.row("SELECT * FROM commands WHERE id = ?", (command_id,))
        if row is None:
            raise NotFound(f"no command {command_id}")
        return CommandRow.from_row(row)

    async def finish_command(self, command_id: int, ok: bool, result: str) -> None:
        async with self.write() as db:
            await db.execute(
                "UPDATE commands SET status = ?, result = ?, done_at = ? WHERE id = ?",
                ("done" if ok else "failed", result, time.time(), command_id),
            )


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (none of ours holds a ';' inside a literal)."""
    statements, current = [], []
    for line in script.splitlines():
        code = line.split("--", 1)[0].rstrip()
        current.append(code)
        if code.endswith(";"):
            statement = "\n".join(current).strip()
            if statement.strip(";").strip():
                statements.append(statement)
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return statements
