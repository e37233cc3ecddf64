"""Fixtures of the TUI tests: a deterministic static database, and helpers to wait on the
app's Snapshots and read its screen as text."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.tui.static_db import build_static_db, clock
from tui.app import ThreadlabApp


@pytest.fixture
async def static_db(tmp_path: Path) -> Path:
    return await build_static_db(tmp_path / "session")


def make_app(db: Path, **kwargs) -> ThreadlabApp:
    """An app on db with the frozen clock, Unicode glyphs, and no file watcher by default."""
    kwargs.setdefault("clock", clock)
    kwargs.setdefault("ascii", False)
    kwargs.setdefault("watch", False)
    app = ThreadlabApp(db, **kwargs)
    app.animation_level = "none"  # no tab underline or scroll animations to wait for
    return app


async def loaded(app: ThreadlabApp, predicate=None, timeout: float = 10.0, what: str = "a snapshot"):
    """Wait until the app applied a ready Snapshot (showing the selected node's detail) that
    satisfies predicate(snapshot)."""

    def ok():
        snap = app.snapshot
        if snap is None or not snap.ready:
            return None
        if app.selection.node_id is not None and (snap.detail is None or
                                                   snap.detail.node.id != app.selection.node_id):
            return None
        return snap if predicate is None or predicate(snap) else None

    return await wait_for(ok, timeout, what, interval=0.01)


async def fresh(app: ThreadlabApp, pilot, predicate=None, timeout: float = 10.0, what: str = "a fresh snapshot"):
    """Ask for a reload and wait until one newer than now was applied (and predicate holds)."""
    before = app.loads
    app.refresh_now()
    await wait_for(lambda: app.loads > before, timeout, what, interval=0.01)
    snap = await loaded(app, predicate, timeout, what)
    await pilot.pause()
    return snap


async def select(app: ThreadlabApp, kind: str, item_id: int, timeout: float = 5.0) -> None:
    """Put the tree's cursor on a line and wait until the cursor really is there (a thread
    just expanded gets its lines at the next layout, under load a while later)."""
    assert app.thread_tree.select_entry(kind, item_id), f"{kind} {item_id} is not in the tree"

    def there() -> bool:
        entry = app.thread_tree.entry
        if entry is not None and (entry.kind, entry.id) == (kind, item_id):
            return True
        app.thread_tree.select_entry(kind, item_id)  # moved before its line existed: again
        return False

    await wait_for(there, timeout, f"the cursor on {kind} {item_id}", interval=0.02)


async def send_keys(app: ThreadlabApp, *keys: str, gap: float = 0.05) -> None:
    """Press keys the way the terminal driver does, without Pilot.press's wait for an idle
    CPU: an in-process engine keeps the process busy, so that wait costs up to 1 s a key.
    Callers then wait on what the key must change."""
    from textual import events

    chars = {"space": " ", "enter": "\r", "tab": "\t", "escape": "\x1b"}
    for key in keys:
        app.post_message(events.Key(key, chars.get(key, key if len(key) == 1 else None)))
        await asyncio.sleep(gap)


def record_notifications(app) -> list[tuple[str, str, str]]:
    """(title, message, severity) of every app.notify from now on."""
    seen: list[tuple[str, str, str]] = []
    original = app.notify

    def notify(message, *, title="", severity="information", **kwargs):
        seen.append((title, str(message), severity))
        return original(message, title=title, severity=severity, **kwargs)

    app.notify = notify
    return seen


def screen_text(app: ThreadlabApp) -> str:
    """The main screen as plain text, one line per row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def cursor_entry(app: ThreadlabApp):
    entry = app.thread_tree.entry
    return None if entry is None else (entry.kind, entry.id)


def _sqlite_threads() -> set:
    import threading

    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


@pytest.fixture(autouse=True)
def no_leaked_connections():
    """Every aiosqlite connection a test opens is closed by its end: a leaked one keeps a
    thread that stops the interpreter from exiting."""
    import time

    before = _sqlite_threads()
    yield
    deadline = time.monotonic() + 5
    while (leaked := _sqlite_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not leaked, f"{len(leaked)} aiosqlite connection(s) left open"
