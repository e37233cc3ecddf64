"""The `watch` proposer: a person or a coding agent edits a folder; each save is a proposal.

Two halves that meet in a spool folder beside the database, `<run root>/watch/thread-<id>/`:

- `threadlab watch THREAD DIR` (watch_folder below, a viewer process) checks the thread's
  head out into DIR, writes `watcher.json` (its pid and DIR), and watches DIR with
  watchfiles. After each debounced batch of saves it snapshots the editable files and, when
  they differ from what it last submitted, writes a submission into `inbox/` (atomically:
  written aside, then renamed). A save that changes a protected file (or adds a file that
  is not editable) is refused with one clear error and nothing is submitted until it is put
  back. It keeps `DIR/RESULTS.md` up to date from state.db: each submission, its node,
  status, metric and its parent's, and why it was decided so.
- The engine's WatchProposer takes the submissions of a thread out of its inbox, oldest
  first, and turns each into a Proposal against the thread's head *at that moment*: one
  whole-file SEARCH/REPLACE edit per editable file that differs, titled from the diff.
  While a watcher is attached to a thread, the engine asks the WatchProposer instead of the
  thread's own proposer; a thread started as `watch` always does. Its `waits` is true: a
  None means "nothing saved yet", never "no more ideas".

The viewer never writes state.db (DESIGN.md: viewers write only Commands); the spool is
files under the engine's run directory, so submissions made while the engine is stopped
wait there for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ThreadlabError
from engine.models import Edit, Proposal
from engine.proposers.base import Attempt, ProposalContext
from engine.store import pid_alive

RESULTS = "RESULTS.md"
WATCHER = "watcher.json"


def spool_dir(run_root: Path, thread_id: int) -> Path:
    return Path(run_root) / "watch" / f"thread-{thread_id}"


def read_watcher(run_root: Path, thread_id: int) -> dict[str, Any] | None:
    """The live watcher attached to a thread, or None (none, or its process is gone)."""
    try:
        info = json.loads((spool_dir(run_root, thread_id) / WATCHER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return None
    pid = info.get("pid")
    return info if isinstance(pid, int) and pid_alive(pid) else None


def title_from_diff(old: dict[str, str], new: dict[str, str], limit: int = 80) -> str:
    """`solution.py: LR = 0.02 -> LR = 0.05` for a one-line change, else files and line counts."""
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
    if not changed:
        return "no change"
    parts, one_liner = [], None
    for path in changed:
        a, b = old.get(path, "").splitlines(), new.get(path, "").splitlines()
        removed = added = 0
        minus: list[str] = []
        plus: list[str] = []
        for line in difflib.unified_diff(a, b, lineterm="", n=0):
            if line.startswith(("---", "+++", "@@")):
                continue
            if line.startswith("-"):
                removed += 1
                minus.append(line[1:].strip())
            elif line.startswith("+"):
                added += 1
                plus.append(line[1:].strip())
        parts.append(f"{path} +{added} -{removed}")
        if len(changed) == 1 and removed == 1 and added == 1:
            one_liner = f"{path}: {minus[0]} -> {plus[0]}"
    title = one_liner or "edit " + ", ".join(parts)
    return title if len(title) <= limit else title[: limit - 3] + "..."


class WatchProposer:
    name = "watch"
    waits = True  # None means "nothing saved yet"

    def __init__(self, run_root: Path, *, poll_s: float = 0.2, wait_s: float = 3.0):
        self.run_root = Path(run_root)
        self.poll_s = poll_s
        self.wait_s = wait_s

    def attached(self, thread_id: int) -> dict[str, Any] | None:
        return read_watcher(self.run_root, thread_id)

    def observe(self, attempt: Attempt) -> None:
        """The person watching reads the results; nothing to learn here."""

    def _inbox(self, thread_id: int) -> Path:
        return spool_dir(self.run_root, thread_id) / "inbox"

    def _next(self, thread_id: int) -> Path | None:
        inbox = self._inbox(thread_id)
        if not inbox.is_dir():
            return None
        waiting = sorted(p for p in inbox.iterdir() if p.suffix == ".json")
        return waiting[0] if waiting else None

    def _take(self, path: Path, outcome: str) -> None:
        taken = path.parent.parent / "taken"
        taken.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            path.rename(taken / f"{path.stem}.{outcome}.json")

    async def propose(self, ctx: ProposalContext) -> Proposal | None:
        deadline = time.monotonic() + self.wait_s
        while True:
            path = self._next(ctx.thread_id)
            if path is not None:
                try:
                    sub = json.loads(path.read_text())
                    proposal = self.proposal(ctx, sub)
                except (OSError, ValueError, TypeError, AttributeError):
                    self._take(path, "unreadable")
                    continue
                self._take(path, "proposed" if proposal is not None else "unchanged")
                if proposal is not None:
                    return proposal
                continue
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.poll_s)

    def proposal(self, ctx: ProposalContext, sub: dict[str, Any]) -> Proposal | None:
        """The submission's editable files as whole-file edits against the head; None when
        nothing differs."""
        files: dict[str, str] = {p: str(v) for p, v in dict(sub.get("files") or {}).items()}
        edits: list[Edit] = []
        new_files = dict(ctx.head_files)
        for path in ctx.task.editable:
            new, old = files.get(path), ctx.head_files.get(path)
            if new is None or new == old:
                continue  # a deleted editable file is not proposed (the watcher warns)
            edits.append(Edit(path, old or "", new))
            new_files[path] = new
        if not edits:
            return None
        folder = str(sub.get("dir", ""))
        return Proposal(
            title=title_from_diff(ctx.head_files, new_files),
            hypothesis=str(sub.get("hypothesis") or f"a change saved in {folder or 'the watched folder'}"),
            edits=tuple(edits),
            origin={"kind": "watch", "submission": str(sub.get("id", "")), "dir": folder,
                    "files": [e.file for e in edits], "saved_at": sub.get("created")},
        )


# ---- the viewer side: `threadlab watch THREAD DIR` -------------------------------------------

Say = Callable[[str, str], None]  # (level: info | error, one line)


def _ignored(rel: str) -> bool:
    parts = rel.split("/")
    name = parts[-1]
    return (rel == RESULTS or any(p.startswith(".") or p == "__pycache__" for p in parts)
            or name.endswith(("~", ".swp", ".swx", ".tmp", ".pyc")) or name.startswith(".#"))


def snapshot(folder: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if _ignored(rel):
            continue
        with contextlib.suppress(OSError):
            out[rel] = p.read_bytes()
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Watcher:
    """Checks a thread's head out into a folder and submits its saves."""

    def __init__(self, db: Path, run_root: Path, thread_id: int, folder: Path, say: Say):
        self.db, self.run_root, self.thread_id, self.folder, self.say = db, Path(run_root), thread_id, folder, say
        self.spool = spool_dir(self.run_root, thread_id)
        self.base: dict[str, bytes] = {}
        self.editable: tuple[str, ...] = ()
        self.last: dict[str, str] = {}
        self.submitted: list[dict[str, Any]] = []  # id, n, created, title
        self.refused = ""
        self.thread_name = ""
        self.head_id = 0
        self.metric_name = "metric"
        self.head_metric: float | None = None
        self._seen_status: dict[str, str] = {}

    async def prepare(self) -> None:
        """Every check before anything is written: the thread, the folder, the engine."""
        from engine.store import Store
        from engine.taskfile import load_task
        from engine.workspace import Workspace

        folder = self.folder
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ThreadlabError(f"{folder} is not empty",
                                 hint="watch into a new or empty folder: the thread's head is checked out there")
        async with await Store.open(self.db) as store:
            thread = await store.thread(self.thread_id)
            if thread.status not in ("running", "paused"):
                raise ThreadlabError(f"thread {thread.name} (id {thread.id}) is {thread.status}",
                                     hint="watch a running thread, or fork a new one with `threadlab fork NODE`")
            other = read_watcher(self.run_root, thread.id)
            if other is not None and other.get("pid") != os.getpid():
                raise ThreadlabError(f"thread {thread.name} is already watched from {other.get('dir')} "
                                     f"(pid {other.get('pid')})", hint="stop that watcher first (ctrl-c)")
            if await store.engine_alive() is None:
                raise ThreadlabError("no engine is running on this database",
                                     hint="start it with `threadlab run` (or `threadlab engine`) first")
            head = await store.node(thread.head_node_id)
            task_row = await store.task(thread.task_id)
        task = load_task(task_row.path, task_row.profile)
        self.editable = task.editable
        self.thread_name, self.head_id, self.head_metric = thread.name, head.id, head.metric
        self.metric_name = task.metric_name
        folder.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(Workspace(Path(task_row.repo_path), "").export, head.commit_sha, folder)
        self.base = snapshot(folder)
        self.last = {p: self.base[p].decode(errors="replace") for p in self.editable if p in self.base}
        (self.spool / "inbox").mkdir(parents=True, exist_ok=True)
        _write_atomic(self.spool / WATCHER, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "dir": str(folder), "thread": thread.id,
            "base": head.id, "started": time.time()}))
        self.write_results([])

    def detach(self) -> None:
        with contextlib.suppress(OSError):
            info = json.loads((self.spool / WATCHER).read_text())
            if info.get("pid") == os.getpid():
                (self.spool / WATCHER).unlink()

    def on_change(self) -> dict[str, Any] | None:
        """Look at the folder after a batch of saves; submit it when it is new and allowed."""
        now = snapshot(self.folder)
        editable = set(self.editable)
        touched = sorted(p for p in set(self.base) | set(now)
                         if p not in editable and self.base.get(p) != now.get(p))
        if touched:
            self.refused = (f"{', '.join(touched)} {'is' if len(touched) == 1 else 'are'} not editable (editable: "
                            f"{', '.join(self.editable)}); put {'it' if len(touched) == 1 else 'them'} back as "
                            "checked out: this save was not submitted")
            self.say("error", self.refused)
            return None
        self.refused = ""
        files = {}
        for p in self.editable:
            if p in now:
                try:
                    files[p] = now[p].decode()
                except UnicodeDecodeError:
                    self.say("error", f"{p} is not UTF-8 text; this save was not submitted")
                    return None
        deleted = [p for p in self.editable if p in self.base and p not in now]
        if deleted:
            self.say("error", f"{', '.join(deleted)} deleted: a deletion cannot be proposed; only the other "
                              "changes are submitted")
        if files == self.last or not any(files.get(p) != self.last.get(p) for p in files):
            return None
        old = {p: self.base[p].decode(errors="replace") for p in self.editable if p in self.base}
        sub = {
            "id": f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}", "thread": self.thread_id,
            "dir": str(self.folder), "created": time.time(), "files": files,
            "title": title_from_diff(old, {**old, **files}),
        }
        inbox = self.spool / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        _write_atomic(inbox / f"{sub['id']}.json", json.dumps(sub))
        self.last = files
        self.submitted.append({"id": sub["id"], "n": len(self.submitted) + 1, "created": sub["created"],
                               "title": sub["title"]})
        self.say("info", f"save {len(self.submitted)} submitted: {sub['title']}")
        return sub

    async def refresh(self, store: Any) -> None:
        """Read this watcher's nodes from state.db into RESULTS.md; say what changed."""
        ids = {s["id"] for s in self.submitted}
        rows = await store.rows(
            "SELECT n.*, p.metric AS parent_metric, "
            "(SELECT summary FROM verdicts v WHERE v.node_id = n.id ORDER BY v.id DESC LIMIT 1) AS verdict, "
            "(SELECT group_concat(guard || ': ' || message, '; ') FROM alerts a WHERE a.node_id = n.id) AS alerts "
            "FROM nodes n LEFT JOIN nodes p ON p.id = n.parent_id WHERE n.thread_id = ? "
            "AND json_extract(n.origin, '$.kind') = 'watch' ORDER BY n.id", (self.thread_id,))
        by_sub = {}
        for r in rows:
            sub = json.loads(r["origin"]).get("submission")
            if sub in ids:
                by_sub[sub] = r
                key = f"{r['status']}:{r['metric']}"
                if self._seen_status.get(sub) != key:
                    self._seen_status[sub] = key
                    self.say("info", f"#{r['id']} {r['title']}: {r['status']}"
                             + (f", {self.metric_name} {r['metric']:.6g}" if r["metric"] is not None else ""))
        self.write_results([(s, by_sub.get(s["id"])) for s in self.submitted])

    def write_results(self, entries: list[tuple[dict[str, Any], Any]]) -> None:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.6g}"

        lines = [
            f"# threadlab watch: thread {self.thread_name} (id {self.thread_id})", "",
            f"Checked out node #{self.head_id} ({self.metric_name} {fmt(self.head_metric)}) into this folder. "
            f"Each save of {', '.join(self.editable)} is submitted as a proposal against the thread's head; "
            "this file follows their runs. It is not part of any proposal.", "",
        ]
        if self.refused:
            lines += [f"**Last save refused:** {self.refused}", ""]
        lines += [f"| save | saved at | node | title | status | {self.metric_name} | parent | details |",
                  "|---|---|---|---|---|---|---|---|"]
        for sub, row in entries:
            saved = time.strftime("%H:%M:%S", time.localtime(sub["created"]))
            if row is None:
                lines.append(f"| {sub['n']} | {saved} | - | {sub['title']} | waiting for the engine | - | - | |")
                continue
            detail = row["error"] or row["verdict"] or ""
            if row["alerts"]:
                detail = f"ALERT {row['alerts']}" + (f"; {detail}" if detail else "")
            detail = " ".join(str(detail).split()).replace("|", "/")[:300]
            lines.append(f"| {sub['n']} | {saved} | #{row['id']} | {row['title'].replace('|', '/')} | {row['status']} "
                         f"| {fmt(row['metric'])} | {fmt(row['parent_metric'])} | {detail} |")
        if not entries:
            lines.append("| | | | no save yet | | | | |")
        _write_atomic(self.folder / RESULTS, "\n".join(lines) + "\n")


async def watch_folder(db: Path, run_root: Path, thread_id: int, folder: Path, say: Say, *,
                       stop: asyncio.Event | None = None, debounce_ms: int = 400, poll_s: float = 0.5,
                       ready: Callable[[Watcher], None] | None = None) -> Watcher:
    """`threadlab watch`: check out, then submit saves and follow results until stopped."""
    import watchfiles

    from engine.store import Store

    folder = Path(folder).expanduser().resolve()
    watcher = Watcher(Path(db), run_root, thread_id, folder, say)
    await watcher.prepare()
    stop = stop or asyncio.Event()
    say("info", f"thread {watcher.thread_name}: node #{watcher.head_id} checked out into {folder}; each save is "
                f"submitted; results in {folder / RESULTS} (ctrl-c stops)")
    if ready is not None:
        ready(watcher)

    class _Filter(watchfiles.DefaultFilter):
        def __call__(self, change: watchfiles.Change, path: str) -> bool:
            try:
                rel = Path(path).resolve().relative_to(folder).as_posix()
            except ValueError:
                return False
            return not _ignored(rel) and super().__call__(change, path)

    async def follow() -> None:
        async with await Store.open(db) as store:
            while not stop.is_set():
                await watcher.refresh(store)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_s)
            await watcher.refresh(store)

    follower = asyncio.create_task(follow())
    try:
        async for _ in watchfiles.awatch(folder, watch_filter=_Filter(), debounce=debounce_ms, step=50,
                                         stop_event=stop, rust_timeout=1000):
            watcher.on_change()
            if follower.done():
                break
    finally:
        stop.set()
        watcher.detach()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    return watcher
