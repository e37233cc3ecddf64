"""The thread tree's in-place updates: labels drawn again only where their data changed,
the same labels (and widths) as Rich and Tree would make themselves."""

from __future__ import annotations

import pytest
from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Tree

from engine.store import Store
from tests.conftest import wait_for
from tests.tui.conftest import cursor_entry, loaded, make_app
from tui.data import NodeView, ThreadView
from tui.format import Glyphs, fmt_metric, fmt_metric_std
from tui.widgets.thread_tree import cell_width, node_label, thread_label

SIZE = (120, 40)


def reference_node_label(n: NodeView, glyphs: Glyphs, *, marked=False, task_name=None, metric_name=None) -> Text:
    """The label as Text.assemble/append made it before labels were built in one go."""
    glyph, style = glyphs.node(n.status)
    text = Text.assemble((glyph, style), " ", (n.status, style), " ", (f"#{n.id}", "bold"), " ")
    if task_name:
        text.append(f"{task_name} ", "italic")
    if n.title != n.status:
        text.append(f"{n.title} ")
    if n.merged:
        text.append(f"{glyphs.mark('merge')}#{n.parent2_id} ", "cyan")
    if metric_name:
        text.append(f"{metric_name} ", "dim")
    text.append(fmt_metric_std(n.metric, n.metric_std), "bold" if n.metric is not None else "dim")
    if n.is_best:
        text.append(f" {glyphs.mark('best')} best", "bold yellow")
    if n.is_head:
        text.append(f" {glyphs.mark('head')}", "bold")
    if marked:
        text.append(f" {glyphs.mark('marked')}", "reverse")
    return text


def reference_thread_label(t: ThreadView, glyphs: Glyphs, *, head_is_best=False, task_name=None) -> Text:
    glyph, style = glyphs.thread(t.status)
    text = Text.assemble((glyph, style), " ", (t.name, "bold"), " ", (t.status, style))
    if t.pinned:
        text.append(f" {glyphs.mark('pin')}", "bold")
    if task_name:
        text.append(f" {task_name}", "italic")
    text.append(f" head #{t.head_node_id} " if t.head_node_id is not None else " head ")
    text.append(fmt_metric(t.head_metric), "bold")
    if head_is_best:
        text.append(f" {glyphs.mark('best')}", "bold yellow")
    text.append(f"  {t.proposer}", "dim")
    text.append(f" {t.node_count} node{'s' if t.node_count != 1 else ''}")
    for status in ("accepted", "rejected", "flagged", "failed", "running", "validating"):
        k = t.count(status)
        if k:
            g, s = glyphs.node(status)
            text.append(f" {g}{k}", s)
    return text


def node(**kw) -> NodeView:
    base = dict(id=12, task_id=1, thread_id=3, parent_id=4, parent2_id=None, has_code=True, title="Muon (3)",
                status="accepted", metric=0.25, metric_std=0.01, n_runs=5)
    return NodeView(**{**base, **kw})


@pytest.mark.parametrize("ascii", [False, True])
@pytest.mark.parametrize("n, kw", [
    (node(), {}),
    (node(title="accepted", metric=None, metric_std=None), {}),  # the title is the status: not repeated
    (node(parent2_id=7, is_best=True, is_head=True, status="rejected"), {"marked": True}),
    (node(title="bell\x07 and\rreturn", status="flagged"), {"task_name": "bowl\x08", "metric_name": "loss"}),
    (node(title="日本語 ✓ wide", status="no such status"), {}),
    (node(title=""), {}),
])
def test_a_node_label_is_the_text_rich_would_assemble(n, kw, ascii):
    glyphs = Glyphs(ascii)
    assert node_label(n, glyphs, **kw) == reference_node_label(n, glyphs, **kw)


@pytest.mark.parametrize("ascii", [False, True])
def test_a_thread_label_is_the_text_rich_would_assemble(ascii):
    glyphs = Glyphs(ascii)
    t = ThreadView(id=1, task_id=1, name="t1\x07", proposer="search", status="running", pinned=True, note="",
                   head_node_id=4, head_metric=0.21, stale_attempts=0, node_count=5,
                   counts=(("accepted", 2), ("queued", 1), ("rejected", 1), ("validating", 1)), nodes=(),
                   nodes_hidden=0)
    for kw in ({}, {"head_is_best": True, "task_name": "bowl"}):
        assert thread_label(t, glyphs, **kw) == reference_thread_label(t, glyphs, **kw)
    lone = ThreadView(id=2, task_id=1, name="t2", proposer="claude", status="done", pinned=False, note="",
                      head_node_id=None, head_metric=None, stale_attempts=0, node_count=1, counts=(), nodes=(),
                      nodes_hidden=0)
    assert thread_label(lone, glyphs) == reference_thread_label(lone, glyphs)


@pytest.mark.parametrize("text", ["", "abc", "✓ accepted #12 Muon (3) 0.25 ◀ head", "日本語 x", "a\tb",
                                  "e\u0301", "⚑ ★ ⊕ ‖ ⊘ ▶ ◐ ✗ · – ◆", "👩‍🔬 x", "❤️ y", "\x1b[31m"])
def test_cell_width_is_rich_cell_len(text):
    assert cell_width(text) == cell_len(text)


async def test_every_line_is_as_wide_as_tree_would_measure_it(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        tree = app.thread_tree
        tree.item("thread", 4).expand()
        await pilot.pause()
        lines = [tree.get_node_at_line(i) for i in range(tree.last_line + 1)]
        assert len(lines) > 10
        for line in lines:
            assert tree.get_label_width(line) == Tree.get_label_width(tree, line), line.label.plain


async def test_a_node_change_redraws_only_its_line_and_keeps_cursor_and_expansion(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        tree = app.thread_tree
        tree.item("thread", 2).collapse()
        tree.item("thread", 4).expand()
        tree.select_entry("node", 6)
        await pilot.pause()
        line, relabels = tree.cursor_line, tree.relabels
        t2_children = tree._children_shows[("thread", 2)]
        async with await Store.open(static_db, writer=True) as writer:
            await writer.update_node(3, metric=0.49)  # not the head: t1's own line does not change
        await loaded(app, lambda s: s.node(3).metric == 0.49, what="the new metric")
        await pilot.pause()
        assert "0.49" in tree.item("node", 3).label.plain
        assert tree.relabels == relabels + 1  # that one line, not the 14 others
        assert tree._children_shows[("thread", 2)] is t2_children  # the other threads were not visited
        assert app.source._nodes.full_reads == 1  # the load read the change, not the session
        assert cursor_entry(app) == ("node", 6) and tree.cursor_line == line
        assert not tree.item("thread", 2).is_expanded and tree.item("thread", 4).is_expanded


async def test_a_new_node_is_inserted_in_place_and_a_removed_thread_line_comes_back_as_it_was(static_db):
    app = make_app(static_db)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(app)
        tree = app.thread_tree
        tree.item("thread", 2).collapse()
        tree.select_entry("node", 9)
        await pilot.pause()
        line = tree.cursor_line
        async with await Store.open(static_db, writer=True) as writer:
            new = await writer.add_node(task_id=1, thread_id=1, parent_id=3, commit_sha=None, title="child of #3",
                                        hypothesis="", origin={}, status="queued")
        await loaded(app, lambda s: s.node(new) is not None, what="the new node")
        await pilot.pause()
        t1 = [c.data.id for c in tree.item("thread", 1).children]
        assert t1 == [2, 3, new, 4, 6, 9]  # lineage order: under #3, above the cursor
        assert cursor_entry(app) == ("node", 9) and tree.cursor_line == line + 1
        # a filter hides thread t2, clearing it brings it back collapsed, as the user left it
        app._set_filter("t1")
        await pilot.pause()
        assert tree.item("thread", 2) is None
        app._set_filter("")
        await pilot.pause()
        assert tree.item("thread", 2) is not None and not tree.item("thread", 2).is_expanded
        assert [c.data.id for c in tree.item("thread", 1).children] == t1


async def test_going_to_a_node_of_a_collapsed_thread_puts_the_cursor_on_it(static_db):
    app = make_app(static_db)
    async with app.run_test(size=(160, 48)) as pilot:
        snap = await loaded(app)
        target = snap.thread(2).nodes[-1].id
        tree = app.thread_tree
        tree.item("thread", 2).expand()
        await pilot.pause()
        for thread in (2, 1):  # its remembered line is now stale: thread 1's lines are gone above it
            tree.item("thread", thread).collapse()
            await pilot.pause()
        app.go_to_node(target)  # what the alerts panel does
        await wait_for(lambda: (e := tree.entry) is not None and (e.kind, e.id) == ("node", target), 5,
                       f"the cursor on node {target}")
