"""`threadlab watch THREAD DIR`: saves in a checked-out folder become proposals and runs.

A real Engine runs in-process on the bowl fixture; the watcher (engine.proposers.watch.
watch_folder, what the command runs) runs beside it in the same event loop, and the
command's one-line errors are checked through the installed `threadlab` script.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from engine.config import SessionConfig
from engine.executor import LocalExecutor, detect_slots
from engine.loop import Engine
from engine.proposers.watch import RESULTS, title_from_diff, watch_folder
from engine.store import Store

from tests.conftest import EngineSession, _call_failed, assert_clean_error, make_task, threadlab, wait_for


@pytest.fixture
async def engine_with(tmp_path: Path, request: pytest.FixtureRequest):
    sessions: list[EngineSession] = []

    async def start(proposers: tuple[tuple[str, int], ...], threads: int = 1) -> EngineSession:
        task_dir = make_task(tmp_path / "bowl")
        db = tmp_path / "state.db"
        store = await Store.open(db, writer=True, create=True)
        reader = await Store.open(db)
        config = SessionConfig(task=str(task_dir), profile="smoke", threads=threads, proposers=proposers,
                               cpu_slots=2, patience=100)
        engine = Engine(store, config, tmp_path / "state.run", LocalExecutor(detect_slots(2, "cpu")),
                        heartbeat_s=0.2)
        s = EngineSession(engine, store, reader, asyncio.create_task(engine.run()), db, tmp_path / "state.run")
        sessions.append(s)
        await s.wait(lambda: s.scalar("SELECT status = 'baseline' FROM nodes WHERE id = 1"), 30, "the baseline")
        return s

    yield start

    problems = []
    for s in sessions:
        s.engine.stop("test over")
        try:
            await asyncio.wait_for(asyncio.shield(s.task), 30)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"engine.run() raised {exc!r}")
        try:
            problems += [r["message"] for r in await s.reader.rows("SELECT message FROM events WHERE kind = 'crash'")]
        finally:
            await s.reader.close()
            await s.store.close()
    if problems and not _call_failed(request):
        pytest.fail("engine problems: " + "; ".join(problems))


class Watching:
    def __init__(self, s: EngineSession, thread: int, folder: Path):
        self.lines: list[tuple[str, str]] = []
        self.stop = asyncio.Event()
        self.folder = folder
        self.task = asyncio.create_task(watch_folder(
            s.db, s.run_root, thread, folder, lambda level, line: self.lines.append((level, line)),
            stop=self.stop, debounce_ms=100, poll_s=0.2))

    def results(self) -> str:
        path = self.folder / RESULTS
        return path.read_text() if path.exists() else ""

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 20)


async def _watch_nodes(s: EngineSession) -> list[Any]:
    return await s.rows("SELECT * FROM nodes WHERE json_extract(origin, '$.kind') = 'watch' ORDER BY id")


async def test_a_saved_edit_becomes_a_run_and_results_md_shows_its_metric(engine_with, tmp_path):
    s = await engine_with((("watch", 1),))
    folder = tmp_path / "work"
    w = Watching(s, 1, folder)
    try:
        await wait_for(lambda: (folder / "solution.py").exists() and (folder / RESULTS).exists(), 20, "the checkout")
        assert (folder / "run.py").exists(), "the whole head is checked out, harness included"
        assert "no save yet" in w.results()
        await s.wait(lambda: s.scalar("SELECT note LIKE 'watched from %' FROM threads WHERE id = 1"), 20,
                     "the engine to see the watcher")

        # A person saves a change: a larger step.
        sol = folder / "solution.py"
        sol.write_text(sol.read_text().replace("LR = 0.02", "LR = 0.05"))

        nodes = await s.wait(lambda: _watch_nodes(s), 30, "the save to become a node")
        node = nodes[0]
        origin = json.loads(node["origin"])
        assert node["title"] == "solution.py: LR = 0.02 -> LR = 0.05" and node["thread_id"] == 1
        assert origin["proposer"] == "watch" and origin["dir"] == str(folder.resolve())
        assert origin["files"] == ["solution.py"]

        async def metric_in_results() -> Any:
            row = (await s.rows("SELECT * FROM nodes WHERE id = ?", (node["id"],)))[0]
            if row["metric"] is None:
                return None
            line = next((ln for ln in w.results().splitlines() if f"| #{node['id']} |" in ln), "")
            return (row, line) if f"{row['metric']:.6g}" in line else None

        row, line = await wait_for(metric_in_results, 40, "RESULTS.md to show the node's metric")
        assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ? AND status = 'done'", (node["id"],)) >= 1
        assert "solution.py: LR = 0.02 -> LR = 0.05" in line and re.search(r"\| 1 \| \d\d:\d\d:\d\d \|", line)
        assert any("submitted" in text for level, text in w.lines if level == "info")

        # Saving the same content again proposes nothing new.
        sol.write_text(sol.read_text())
        await asyncio.sleep(0)  # (the debounce window passes inside the watcher)
    finally:
        await w.close()
    assert not (s.run_root / "watch" / "thread-1" / "watcher.json").exists(), "the watcher detached"
    assert len(await _watch_nodes(s)) == 1


async def test_a_save_that_touches_a_protected_file_is_refused_with_one_clear_error(engine_with, tmp_path):
    s = await engine_with((("watch", 1),))
    folder = tmp_path / "work"
    w = Watching(s, 1, folder)
    try:
        await wait_for(lambda: (folder / RESULTS).exists(), 20, "the checkout")
        run = folder / "run.py"
        original = run.read_text()
        run.write_text(original.replace("import json", "import json  # faster"))
        errors = await wait_for(lambda: [t for lvl, t in w.lines if lvl == "error"], 20, "the refusal")
        assert len(errors) == 1 and errors[0].startswith("run.py is not editable (editable: solution.py)")
        assert "not submitted" in errors[0]
        await wait_for(lambda: "Last save refused" in w.results(), 20, "RESULTS.md to say so")
        inbox = s.run_root / "watch" / "thread-1" / "inbox"
        assert list(inbox.iterdir()) == [] and await _watch_nodes(s) == []

        # Put back, the next save of the editable file goes through.
        run.write_text(original)
        sol = folder / "solution.py"
        sol.write_text(sol.read_text().replace("STEPS = 40", "STEPS = 60"))
        nodes = await s.wait(lambda: _watch_nodes(s), 30, "the good save to become a node")
        assert nodes[0]["title"] == "solution.py: STEPS = 40 -> STEPS = 60"
        assert len([t for lvl, t in w.lines if lvl == "error"]) == 1
    finally:
        await w.close()


async def test_watching_a_search_thread_replaces_its_proposer_until_the_watcher_leaves(engine_with, tmp_path):
    s = await engine_with((("search", 1),))
    folder = tmp_path / "work"
    w = Watching(s, 1, folder)
    try:
        await s.wait(lambda: s.scalar("SELECT note LIKE 'watched from %' FROM threads WHERE id = 1"), 20,
                     "the engine to see the watcher")
        sol = folder / "solution.py"
        sol.write_text(sol.read_text().replace("STEPS = 40", "STEPS = 50"))
        node = (await s.wait(lambda: _watch_nodes(s), 30, "the save to become a node"))[0]
        assert json.loads(node["origin"])["proposer"] == "search"  # the thread's own proposer, by name
        assert node["title"] == "solution.py: STEPS = 40 -> STEPS = 50"
    finally:
        await w.close()
    await s.wait(lambda: s.scalar("SELECT note = 'the watcher detached' FROM threads WHERE id = 1"), 20,
                 "the engine to see the watcher go")


async def test_watch_command_errors(engine_with, tmp_path):
    s = await engine_with((("watch", 1),))
    missing = await asyncio.to_thread(threadlab, "watch", "99", tmp_path / "new", "--db", s.db)
    assert_clean_error(missing, "no thread 99")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine\n")
    not_empty = await asyncio.to_thread(threadlab, "watch", "1", full, "--db", s.db)
    assert_clean_error(not_empty, "is not empty")
    assert (full / "notes.txt").read_text() == "mine\n" and len(list(full.iterdir())) == 1


def test_titles_come_from_the_diff():
    old = {"a.py": "x = 1\ny = 2\n"}
    assert title_from_diff(old, {"a.py": "x = 3\ny = 2\n"}) == "a.py: x = 1 -> x = 3"
    assert title_from_diff(old, {"a.py": "x = 1\ny = 2\nz = 3\nw = 4\n"}) == "edit a.py +2 -0"
    assert title_from_diff(old, old) == "no change"
