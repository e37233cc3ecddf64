"""Screens of a deterministic database (fixed rows, timestamps and git dates; a frozen
clock) at 80x24 and 160x48, compared with the accepted SVGs in __snapshots__/.

Update them after a deliberate change of the screen with
`pytest tests/tui/test_snapshots.py --snapshot-update`, and look at the report.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.tui.conftest import loaded, make_app
from tests.tui.static_db import build_static_db


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return asyncio.run(build_static_db(tmp_path / "session"))


def _on_node(node_id: int | None, *keys: str):
    async def run_before(pilot) -> None:
        app = pilot.app
        await loaded(app)
        if node_id is not None:
            app.thread_tree.select_entry("node", node_id)
            await loaded(app, lambda s: s.detail is not None and s.detail.node.id == node_id)
        await pilot.press(*keys)
        await loaded(app)
        await pilot.pause()

    return run_before


def test_80x24_the_whole_session(db, snap_compare):
    assert snap_compare(make_app(db), terminal_size=(80, 24), run_before=_on_node(None))


def test_160x48_a_validating_node_its_diff_and_the_alerts(db, snap_compare):
    assert snap_compare(make_app(db), terminal_size=(160, 48), run_before=_on_node(6, "2", "a"))


def test_80x24_runs_of_a_node(db, snap_compare):
    assert snap_compare(make_app(db), terminal_size=(80, 24), run_before=_on_node(6, "3"))


def test_80x24_metrics_in_ascii(db, snap_compare):
    assert snap_compare(make_app(db, ascii=True), terminal_size=(80, 24), run_before=_on_node(4, "5"))


def test_80x24_the_prune_confirmation(db, snap_compare):
    async def run_before(pilot) -> None:
        await _on_node(6)(pilot)
        await pilot.press("d")
        for _ in range(100):
            if pilot.app.screen.__class__.__name__ == "ConfirmScreen":
                break
            await pilot.pause(0.02)
        await pilot.pause()

    assert snap_compare(make_app(db), terminal_size=(80, 24), run_before=run_before)
