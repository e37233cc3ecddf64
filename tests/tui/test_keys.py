"""Every binding and its effect, on the static database (no engine): moving, panes, tabs,
filter, help, command palette, alerts, quit, read-only, keymaps, and in-place updates.

The bindings that send Commands are exercised against a real engine in test_commands.py;
here they are checked for what the viewer does before the engine (marks, confirmations,
refusals) and that they write their Command row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, Log

from engine.models import NodeStatus
from engine.store import Store
from tests.conftest import wait_for
from tests.tui.conftest import cursor_entry, fresh, loaded, make_app, record_notifications, screen_text, select
from tui.screens import ConfirmScreen, HelpScreen
from tui.widgets.detail import RunsTable

SIZE = (120, 40)


async def commands_in(db: Path) -> list[tuple[str, dict, str]]:
    async with await Store.open(db) as store:
        return [(r["kind"], json.loads(r["args"]), r["source"])
                for r in await store.rows("SELECT * FROM commands ORDER BY id")]


# ---- moving -------------------------------------------------------------------------------


async def test_j_k_arrows_g_and_G_move_the_cursor_and_the_detail_follows(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        assert cursor_entry(app) == ("baseline", 1) and app.selection.node_id == 1
        await pilot.press("j")
        assert cursor_entry(app) == ("thread", 1)
        await loaded(app, lambda s: s.detail.node.id == 4)  # a thread shows its head
        assert app.selection.node_id == 4
        await pilot.press("down")
        assert cursor_entry(app) == ("node", 2)
        await loaded(app, lambda s: s.detail.node.id == 2)
        assert "Heavy-ball momentum" in screen_text(app)
        await pilot.press("j", "j")
        assert cursor_entry(app) == ("node", 4)
        await pilot.press("k")
        assert cursor_entry(app) == ("node", 3)
        await pilot.press("up", "up")
        assert cursor_entry(app) == ("thread", 1)
        await pilot.press("pagedown")
        assert cursor_entry(app) != ("thread", 1)
        await pilot.press("pageup")
        assert cursor_entry(app) == ("baseline", 1)
        await pilot.press("G")
        assert cursor_entry(app) == ("thread", 4)
        await pilot.press("g")
        assert cursor_entry(app) == ("baseline", 1)
        await pilot.press("end")
        assert cursor_entry(app) == ("thread", 4)
        await pilot.press("home")
        assert cursor_entry(app) == ("baseline", 1)


async def test_h_l_and_enter_collapse_expand_and_open(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        t1 = app.thread_tree.item("thread", 1)
        await pilot.press("j")
        assert t1.is_expanded
        await pilot.press("h")
        assert not t1.is_expanded and cursor_entry(app) == ("thread", 1)
        await pilot.press("l")
        assert t1.is_expanded and cursor_entry(app) == ("thread", 1)
        await pilot.press("l")  # expanded: into its first node
        assert cursor_entry(app) == ("node", 2)
        await pilot.press("h")  # a node: up to its thread
        assert cursor_entry(app) == ("thread", 1) and t1.is_expanded
        await pilot.press("left")
        assert not t1.is_expanded
        await pilot.press("right")
        assert t1.is_expanded
        await pilot.press("enter")  # enter toggles a thread
        assert not t1.is_expanded
        await pilot.press("enter")
        assert t1.is_expanded
        await pilot.press("j", "enter")  # on a node it opens the detail pane
        assert cursor_entry(app) == ("node", 2) and app._pane_of(app.focused) == "detail"


async def test_tab_switches_panes_and_numbers_and_h_l_switch_detail_tabs(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        assert app.focused is app.thread_tree
        await pilot.press("tab")
        assert app._pane_of(app.focused) == "detail" and app.focused.id == "info-scroll"
        await pilot.press("tab")
        assert app.focused is app.thread_tree
        await pilot.press("shift+tab")
        assert app._pane_of(app.focused) == "detail"
        await pilot.press("shift+tab")
        assert app.focused is app.thread_tree
        for key, tab in zip("123456", ("info", "diff", "runs", "log", "metrics", "events")):
            await pilot.press(key)
            assert app.detail.active_tab == tab
        await pilot.press("tab")  # into the detail: h and l step through its tabs
        await pilot.press("l")
        assert app.detail.active_tab == "info"  # events wraps round
        await pilot.press("right")
        assert app.detail.active_tab == "diff"
        await pilot.press("h", "left")
        assert app.detail.active_tab == "events"
        await pilot.press("escape")  # back to the tree
        assert app.focused is app.thread_tree


async def test_the_detail_tabs_show_diff_runs_log_and_metrics_of_the_node(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        app.thread_tree.select_entry("node", 6)
        await loaded(app, lambda s: s.detail.node.id == 6)
        await pilot.pause()
        await pilot.press("2")
        assert "+        g = grad([xi - LR * 0.9 * vi" in screen_text(app)
        await pilot.press("3")
        table = app.detail.query_one(RunsTable)
        assert table.row_count == 3 and "▶ running" in screen_text(app)
        await pilot.press("4")
        log = app.detail.query_one("#log", Log)
        assert any("step 4 loss 0.2000" in line for line in log.lines)
        await pilot.press("5")
        text = screen_text(app)
        assert "thread t1 head loss over accepted nodes: 0.5 → 0.21" in text and "run 13 loss" in text
        # enter on a run in the Runs tab chooses it: the log and curve follow it
        await pilot.press("3", "tab")
        assert app.focused is table
        await pilot.press("k", "k", "enter")
        assert app.selection.run_id == 11 and app.detail.active_tab == "log"
        await loaded(app, lambda s: s.detail.log.run_id == 11)


# ---- filter, help, command palette ---------------------------------------------------------


async def test_slash_filters_the_tree_and_escape_clears_it_keeping_expansion(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        t2 = app.thread_tree.item("thread", 2)
        t2.collapse()
        await pilot.press("slash")
        assert isinstance(app.focused, Input) and app.focused.id == "filter"
        await pilot.press(*"sign")
        tree = app.thread_tree
        shown = {(n.data.kind, n.data.id) for n in tree._tree_nodes.values() if n.data is not None}
        assert shown == {("thread", 1), ("node", 3), ("thread", 4), ("node", 10)}
        assert "filter: sign" in screen_text(app)
        await pilot.press("enter")  # keeps the filter, back to the tree
        assert app.focused is tree and app._filter == "sign"
        await pilot.press("slash", "escape")
        assert app._filter == "" and app.focused is tree
        assert tree.item("node", 7) is not None and not tree.item("thread", 2).is_expanded
        assert tree.item("thread", 1).is_expanded


async def test_question_mark_lists_every_binding_and_escape_closes_it(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.pause()
        text = screen_text(app)
        for words in ("Prune the selected thread", "Fork", "Filter the thread tree", "j, ↓", "space", "prune"):
            assert words in text, words
        await pilot.press("end")  # the list scrolls
        await pilot.pause()
        assert "Quit the viewer" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_colon_and_ctrl_p_open_the_command_palette_and_run_an_action(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press("escape")
        assert not isinstance(app.screen, CommandPalette)
        await pilot.press("colon")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"alerts")
        await wait_for(lambda: isinstance(app.screen, CommandPalette) and app.screen.query_one(CommandList).option_count,
                       5, "the palette's hits", interval=0.02)
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(lambda: app.alerts_panel.shown, 5, "the palette's alerts command to run")


@pytest.mark.parametrize("read_only", [False, True])
async def test_the_palette_offers_each_action_and_hides_changes_when_read_only(static_db, read_only):
    from tui.commands import ThreadlabCommands

    app = make_app(static_db, read_only=read_only)
    async with app.run_test(size=SIZE):
        await loaded(app)
        provider = ThreadlabCommands(app.screen, None)
        found = [hit.text async for hit in provider.discover()]
        assert any("Prune the selected thread" in t for t in found) == (not read_only)
        assert any("Fork" in t for t in found) == (not read_only)
        for always in ("Filter the thread tree", "Show or hide the alerts panel", "List the keys", "Quit",
                       "Move down", "Switch pane"):
            assert any(always in t for t in found), always
        hits = [hit async for hit in provider.search("prune")]
        assert bool(hits) == (not read_only)


# ---- alerts -------------------------------------------------------------------------------


async def test_a_toggles_the_alerts_panel_x_acknowledges_and_enter_goes_to_the_node(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        assert not app.alerts_panel.shown and app.check_action("acknowledge", ()) is False
        await pilot.press("a")
        assert app.alerts_panel.shown and app.focused is app.alerts_panel.table
        text = screen_text(app)
        assert "budget_steps" in text and "the candidate ran half the steps" in text and '"expected": 40' in text
        assert "⚠ new" in text and "✓ acked" in text
        await pilot.press("j", "k")  # the newest first: alert 2 (acknowledged), then alert 1
        assert app.alerts_panel.highlighted_alert() == 2
        await pilot.press("j")
        assert app.alerts_panel.highlighted_alert() == 1
        await pilot.press("x")
        await wait_for(lambda: app._pending, 5, "the acknowledge command to be written")
        assert await commands_in(static_db) == [("acknowledge", {"alert": 1}, "tui")]
        assert "⚠ new" not in screen_text(app)  # acknowledged here at once, before the engine
        await pilot.press("enter")
        assert cursor_entry(app) == ("node", 5) and app.focused is app.thread_tree
        await pilot.press("a")
        assert not app.alerts_panel.shown


async def test_a_new_alert_is_notified(static_db):
    app = make_app(static_db)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        async with await Store.open(static_db, writer=True) as writer:
            await writer.add_alert(6, None, "causality", "future tokens changed earlier predictions", {"max": 0.4})
        await fresh(app, pilot, lambda s: len(s.alerts) == 3)
        assert any("causality on #6: future tokens changed earlier predictions" in m and s == "warning"
                   for _t, m, s in seen)
        assert "⚠ 2 alerts" in screen_text(app)


# ---- acting without an engine: marks, confirmations, refusals -------------------------------


async def test_m_marks_a_node_and_m_on_another_asks_to_merge(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        await select(app, "node", 3)
        await pilot.press("m")
        assert app.marked == 3 and "[merge?]" in screen_text(app) and "merge: #3 marked" in screen_text(app)
        await pilot.press("m")  # again on the same node: unmarked
        assert app.marked is None and "[merge?]" not in screen_text(app)
        await pilot.press("m", "escape")  # esc clears a mark too
        assert app.marked is None
        await pilot.press("m", "j")
        assert cursor_entry(app) == ("node", 4)
        await pilot.press("m")
        assert isinstance(app.screen, ConfirmScreen) and "Merge #3 into #4?" in app.screen.title_text
        await pilot.press("escape")  # declined: nothing sent, the mark stays
        assert await commands_in(static_db) == [] and app.marked == 3
        await pilot.press("m")
        await pilot.press("enter")  # the merge button has the focus
        await wait_for(lambda: app._pending, 5, "the merge command")
        assert await commands_in(static_db) == [("merge", {"node": 4, "other": 3}, "tui")]
        assert app.marked is None


async def test_d_asks_with_the_running_runs_and_starts_on_cancel(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        await select(app, "node", 6)  # thread t1 has one running run (#13)
        await pilot.press("d")
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), 5, "the prune confirmation")
        screen = app.screen
        assert screen.title_text == "Prune thread t1?" and "1 running run will be killed" in screen.message
        await wait_for(lambda: screen.focused is not None, 5, "a focused button")  # set in on_mount
        assert screen.focused.id == "cancel"
        await pilot.press("enter")
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.pause()
        assert await commands_in(static_db) == []


async def test_actions_refuse_what_does_not_apply(static_db):
    app = make_app(static_db)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        await pilot.press("p", "space", "d")  # the baseline belongs to no thread
        assert sum("select a thread" in m for _t, m, _s in seen) == 3
        await select(app, "node", 7)  # a failed merge: no code
        await pilot.press("f", "m")
        assert sum("has no code" in m for _t, m, _s in seen) == 2
        await select(app, "thread", 3)  # pruned
        await pilot.press("space", "d")
        assert any("can be neither paused nor resumed" in m for _t, m, _s in seen)
        assert any("already pruned" in m for _t, m, _s in seen)
        assert await commands_in(static_db) == []


async def test_commands_sent_while_the_engine_is_stopped_say_so(static_db):
    app = make_app(static_db)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        await pilot.press("j", "p", "f", "space")
        await wait_for(lambda: len(app._pending) == 3, 5, "three commands")
        assert await commands_in(static_db) == [
            ("unpin", {"thread": 1}, "tui"), ("fork", {"node": 4}, "tui"), ("pause", {"thread": 1}, "tui")]
        assert sum("the engine is not running" in m for _t, m, _s in seen) == 3
        await fresh(app, pilot)
        assert "3 command(s) pending" in screen_text(app) and "ENGINE STOPPED" in screen_text(app)
        # the engine (here: a stand-in writer) finishes one: its result is announced
        async with await Store.open(static_db, writer=True) as writer:
            await writer.finish_command(1, True, "thread t1 unpinned")
            await writer.finish_command(2, False, "node #4 has no code to fork from")
        await fresh(app, pilot, lambda s: len(app._pending) == 1)
        assert ("unpin thread t1: done", "thread t1 unpinned", "information") in seen
        assert ("fork at #4: failed", "node #4 has no code to fork from", "error") in seen


async def test_read_only_hides_every_action_that_changes_anything(static_db):
    app = make_app(static_db, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        for action in ("fork", "merge", "pin", "prune", "pause", "acknowledge"):
            assert app.check_action(action, ()) is False, action
        assert app.check_action("filter", ()) and app.check_action("help", ())
        await pilot.press("j", "p", "f", "m", "d", "space", "a", "x")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and app.marked is None
        text = screen_text(app)
        assert "read-only" in text and "Prune" not in text.splitlines()[-1] and "Help" in text.splitlines()[-1]
        assert await commands_in(static_db) == []


async def test_q_quits_and_says_the_engine_keeps_running(static_db):
    app = make_app(static_db)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        await pilot.press("q")
        await pilot.pause()
    assert app._exit and any("viewer closed" in m for _t, m, _s in seen)
    assert app.return_code == 0


# ---- keymaps -------------------------------------------------------------------------------


async def test_a_keymap_file_remaps_bindings_by_id(static_db, tmp_path):
    keymap = tmp_path / "keys.toml"
    keymap.write_text('[keys]\ncursor_down = "n"\nprune = "D"\nhelp = "f1"\nbogus = "z"\n')
    app = make_app(static_db, keymap_path=keymap)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        assert any("bogus" in m for _t, m, _s in seen)
        await pilot.press("n")
        assert cursor_entry(app) == ("thread", 1)
        await pilot.press("j")  # j no longer moves down
        assert cursor_entry(app) == ("thread", 1)
        await pilot.press("d")  # d no longer prunes
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("D")
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), 5, "the prune confirmation on D")
        await pilot.press("escape", "f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.pause()
        text = screen_text(app)
        assert "D " in text and "F1" in text.upper()


# ---- live updates in place ------------------------------------------------------------------


async def test_the_tree_keeps_cursor_and_expansion_through_updates(static_db):
    app = make_app(static_db, watch=True)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        tree = app.thread_tree
        tree.item("thread", 2).collapse()
        tree.item("thread", 4).expand()
        await select(app, "node", 4)
        line = tree.cursor_line
        async with await Store.open(static_db, writer=True) as writer:
            # a node listed above the cursor (a child of #3, which comes before #4), a new thread, relabels
            new = await writer.add_node(task_id=1, thread_id=1, parent_id=3, commit_sha=None, title="Inserted above",
                                        hypothesis="", origin={}, status=NodeStatus.QUEUED)
            await writer.add_thread(1, "t5", 1, "search")
            await writer.update_node(3, metric=0.49)
            await writer.update_thread(1, pinned=0)
        snap = await loaded(app, lambda s: s.thread(5) is not None, what="the new rows")
        await pilot.pause()
        assert cursor_entry(app) == ("node", 4)  # the same node, one line lower
        assert tree.cursor_line == line + 1
        assert tree.item("node", new) is not None and tree.item("thread", 5) is not None
        assert not tree.item("thread", 2).is_expanded and tree.item("thread", 4).is_expanded
        assert tree.item("thread", 1).is_expanded and "[pin]" not in str(tree.item("thread", 1).label)
        assert "0.49" in str(tree.item("node", 3).label)
        assert snap.thread(1).node_count == 6


async def test_the_app_waits_for_a_missing_database_and_says_so(tmp_path):
    from tests.tui.static_db import build_static_db

    app = make_app(tmp_path / "later" / "state.db", watch=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.snapshot is not None, 5, "a first snapshot")
        await pilot.pause()
        text = screen_text(app)
        assert "NO DATABASE" in text and "there is no database yet" in text
        await build_static_db(tmp_path / "later")
        await loaded(app, timeout=10, what="the database to appear")
        await pilot.pause()
        assert "ENGINE STOPPED" in screen_text(app) and "t1 running" in screen_text(app)


# ---- terminals ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "screen-256color"}, {"TERM": "screen"}])
async def test_status_reads_without_colour_and_at_80x24(static_db, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    app = make_app(static_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(app)
        await pilot.pause()
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        assert lines[0].strip().startswith("○ ENGINE STOPPED")
        for glyph_and_word in ("◆ baseline", "▶ t1 running", "✓ accepted", "✗ rejected", "◐ validating",
                               "· queued", "‖ t2 paused", "⚑ flagged", "! failed", "★"):
            assert glyph_and_word in text, glyph_and_word
        assert "q Quit" in lines[-1]


async def test_ascii_glyphs_when_asked(static_db):
    app = make_app(static_db, ascii=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(app)
        await pilot.pause()
        text = screen_text(app)
        for glyph_and_word in ("= baseline", "> t1 running", "+ accepted", "x rejected", "~ validating",
                               ". queued", "| t2 paused", "F flagged", "! failed", "0.21 *", "o ENGINE STOPPED"):
            assert glyph_and_word in text, glyph_and_word
