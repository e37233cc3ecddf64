"""The thread tree: threads with their nodes in lineage order, updated in place.

`sync()` adds, relabels and removes tree nodes to match a Snapshot; it never clears the
tree, so the cursor and each thread's expansion survive every update. It visits only the
threads whose nodes changed and draws again only the labels whose data changed, so an
update costs what changed (a session of 10,000 nodes redraws one line for one change).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

from rich.cells import cell_len
from rich.control import strip_control_codes
from rich.text import Span, Text, TextType
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from tui.data import NodeView, Snapshot, ThreadView
from tui.format import Glyphs, fmt_metric, fmt_metric_std

_NEVER = object()  # what a line's children were synced from, before their first sync


@dataclass(frozen=True)
class Entry:
    """What one line of the tree stands for."""

    kind: Literal["thread", "node", "baseline", "more"]
    id: int
    thread_id: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.id)


@dataclass(frozen=True)
class _Want:
    """One line the snapshot wants, and what it needs to draw it. `label` is only called
    when `shows` (everything the label is drawn from) differs from what the line shows now;
    `children` only when `children_shows` differs from what the line's children were last
    synced from: an update costs what changed, not the size of the tree."""

    entry: Entry
    shows: object
    label: Callable[[], Text]
    children: Callable[[], list[_Want]] | None = None  # None: a leaf
    children_shows: object = None
    expand: bool = False  # the expansion of a newly added thread
    force_expand: bool = False  # the filter found nodes inside


class _Label:
    """A label built part by part and made one Text at the end: `Text.append` costs about
    a microsecond a part, which 10,000 lines of eight parts feel. Only text from the
    database (titles, names) can hold control codes: `data()` strips them as Text would."""

    __slots__ = ("_parts", "_spans", "_end")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._spans: list[Span] = []
        self._end = 0

    def add(self, text: str, style: str = "") -> _Label:
        if text:
            start, self._end = self._end, self._end + len(text)
            if style:
                self._spans.append(Span(start, self._end, style))
            self._parts.append(text)
        return self

    def data(self, text: str, style: str = "") -> _Label:
        return self.add(text if text.isprintable() else strip_control_codes(text), style)

    def text(self) -> Text:
        return Text("".join(self._parts), spans=self._spans)


def node_label(n: NodeView, glyphs: Glyphs, *, marked: bool = False, task_name: str | None = None,
               metric_name: str | None = None) -> Text:
    glyph, style = glyphs.node(n.status)
    text = _Label().add(glyph, style).add(" ").add(n.status, style).add(" ").add(f"#{n.id}", "bold").add(" ")
    if task_name:
        text.data(f"{task_name} ", "italic")
    if n.title != n.status:
        text.data(f"{n.title} ")
    if n.merged:
        text.add(f"{glyphs.mark('merge')}#{n.parent2_id} ", "cyan")
    if metric_name:
        text.data(f"{metric_name} ", "dim")
    text.add(fmt_metric_std(n.metric, n.metric_std), "bold" if n.metric is not None else "dim")
    if n.is_best:
        text.add(f" {glyphs.mark('best')} best", "bold yellow")
    if n.is_head:
        text.add(f" {glyphs.mark('head')}", "bold")
    if marked:
        text.add(f" {glyphs.mark('marked')}", "reverse")
    return text.text()


def thread_label(t: ThreadView, glyphs: Glyphs, *, head_is_best: bool = False, task_name: str | None = None) -> Text:
    glyph, style = glyphs.thread(t.status)
    text = _Label().add(glyph, style).add(" ").data(t.name, "bold").add(" ").add(t.status, style)
    if t.pinned:
        text.add(f" {glyphs.mark('pin')}", "bold")
    if task_name:
        text.data(f" {task_name}", "italic")
    text.add(f" head #{t.head_node_id} " if t.head_node_id is not None else " head ")
    text.add(fmt_metric(t.head_metric), "bold")
    if head_is_best:
        text.add(f" {glyphs.mark('best')}", "bold yellow")
    text.data(f"  {t.proposer}", "dim")
    text.add(f" {t.node_count} node{'s' if t.node_count != 1 else ''}")
    for status in ("accepted", "rejected", "flagged", "failed", "running", "validating"):
        n = t.count(status)
        if n:
            g, s = glyphs.node(status)
            text.add(f" {g}{n}", s)
    return text.text()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while lines are added: the first sync adds thousands of
    lines, and the collections their objects trigger scan every object of the app again
    (they doubled its time). Nothing is freed later than it would have been: the next
    collection sees it all."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_NOT_NARROW = re.compile(r"[^\x20-\x7e]")


def cell_width(text: str) -> int:
    """rich's cell_len, ~5x faster on a label (printable ASCII and a few glyphs): only the
    other characters are measured one by one (each cached by rich)."""
    odd = _NOT_NARROW.findall(text)
    if not odd:
        return len(text)
    if "\u200d" in odd or "\ufe0f" in odd:  # joined emoji: measured as a whole
        return cell_len(text)
    return len(text) - len(odd) + sum(cell_len(c) for c in odd)


def _matches(query: str, *parts: object) -> bool:
    return query in " ".join(str(p) for p in parts).lower()


class ThreadTree(Tree[Entry], inherit_bindings=False):
    """Threads and their Nodes. It has no bindings of its own: the app's (remappable)
    bindings drive it, so every key can be changed in one keymap."""

    DEFAULT_CSS = """
    ThreadTree { scrollbar-size-vertical: 1; }
    """
    _batch = False  # in sync(): Tree's invalidation waits for its end
    _invalidated = False

    def __init__(self, glyphs: Glyphs, *, id: str | None = None) -> None:
        super().__init__("threads", id=id)
        self.show_root = False
        self.guide_depth = 2
        self.glyphs = glyphs
        self._items: dict[tuple[str, int], TreeNode[Entry]] = {}
        self._shows: dict[tuple[str, int], object] = {}  # what each line's label was drawn from
        self._children_shows: dict[tuple[str, int], object] = {}  # what its children were synced from
        self._remembered: dict[tuple[str, int], bool] = {}  # expansion of threads filtered out
        self._forced: dict[tuple[str, int], bool] = {}  # expanded by the filter: the state before
        self._widths: dict[tuple[str, int], int] = {}  # each line's label width, in cells
        self.relabels = 0  # labels drawn again (tests count them)

    # -- Tree's hooks, made cheap. Tree measures every line (by rendering it) after each line
    # added, removed, expanded or collapsed, and refreshes its layout after each: with
    # thousands of lines that, not the drawing, is what an update costs.

    def process_label(self, label: TextType) -> Text:
        if isinstance(label, Text) and "\n" not in label.plain:
            return label  # Tree's own copies the Text to cut it at the first line break
        return super().process_label(label)

    def get_label_width(self, node: TreeNode[Entry]) -> int:
        width = self._widths.get(node.data.key) if node.data is not None else None
        if width is None:
            width = cell_width(node.label.plain if isinstance(node.label, Text) else str(node.label))
        if node.allow_expand:
            width += cell_len(self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE)
        return width

    def _invalidate(self) -> None:
        # Tree's own (private) hook, called by every add, remove, expand and collapse: within
        # sync() it runs once, at the end
        if self._batch:
            self._invalidated = True
        else:
            super()._invalidate()

    def _set_label(self, node: TreeNode[Entry], key: tuple[str, int], label: Text) -> None:
        self._widths[key] = cell_width(label.plain)
        node.set_label(label)

    # -- what the snapshot wants on screen

    def _wanted(self, snap: Snapshot, query: str, marked: int | None) -> list[_Want]:
        g = self.glyphs
        several = len(snap.tasks) > 1
        out: list[_Want] = []
        for b in snap.baselines:
            task = snap.task(b.task_id)
            task_name, metric = (task.name, task.metric_name) if task else (None, None)
            if query and not _matches(query, "baseline", f"#{b.id}", b.title, task_name or ""):
                continue
            is_marked = marked == b.id
            out.append(_Want(Entry("baseline", b.id), (b, is_marked, task_name, metric),
                             partial(node_label, b, g, marked=is_marked, task_name=task_name, metric_name=metric)))
        for t in snap.threads:
            task = snap.task(t.task_id)
            head_best = task is not None and task.best_node_id is not None and task.best_node_id == t.head_node_id
            task_name = task.name if (task and several) else None
            thread_hit = not query or _matches(query, t.name, t.proposer, t.status, "pinned" if t.pinned else "",
                                               t.note)
            nodes = t.nodes if thread_hit else tuple(n for n in t.nodes if _matches(query, f"#{n.id}", n.title,
                                                                                     n.status))
            if not thread_hit and not nodes:
                continue
            hidden = t.nodes_hidden if thread_hit else 0
            out.append(_Want(
                Entry("thread", t.id, t.id), (replace(t, nodes=()), head_best, task_name),  # not its nodes
                partial(thread_label, t, g, head_is_best=head_best, task_name=task_name),
                children=partial(self._node_wants, t.id, nodes, hidden, marked),
                children_shows=(nodes, hidden, marked),
                expand=t.status in ("running", "paused"), force_expand=bool(query) and not thread_hit))
        return out

    def _node_wants(self, thread_id: int, nodes: tuple[NodeView, ...], hidden: int, marked: int | None) -> list[_Want]:
        g = self.glyphs
        out = [_Want(Entry("more", thread_id, thread_id), hidden,
                     partial(Text, f"… {hidden} older node(s) not shown", "dim italic"))] if hidden else []
        for n in nodes:
            is_marked = marked == n.id
            out.append(_Want(Entry("node", n.id, thread_id), (n, is_marked),
                             partial(node_label, n, g, marked=is_marked)))
        return out

    # -- in-place update

    def sync(self, snap: Snapshot, query: str = "", marked: int | None = None) -> None:
        """Make the tree show the snapshot: add, relabel and remove lines, never clear. A
        thread whose nodes did not change is not visited; a line whose label would be the
        same is not drawn again."""
        wanted = self._wanted(snap, query.strip().lower(), marked)
        self._batch, self._invalidated = True, False
        try:
            with _gc_paused():
                self._sync_children(self.root, wanted)
        finally:
            self._batch = False
            if self._invalidated:
                self._invalidate()
        if self.cursor_line < 0 and self.root.children:
            self.cursor_line = 0

    def _sync_children(self, parent: TreeNode[Entry], wanted: list[_Want]) -> None:
        keys = {want.entry.key for want in wanted}
        for child in list(parent.children):
            if child.data is None or child.data.key not in keys:
                self._drop(child)
        for index, want in enumerate(wanted):
            key = want.entry.key
            node = self._items.get(key)
            if node is not None and node.parent is not parent:  # moved (cannot happen today): re-add
                self._drop(node)
                node = None
            if node is None:
                node = self._add(parent, index, want)
            else:
                if self._shows.get(key) != want.shows:
                    self._set_label(node, key, want.label())
                    self._shows[key] = want.shows
                    self.relabels += 1
                if want.force_expand:
                    if not node.is_expanded:
                        self._forced.setdefault(key, False)
                        node.expand()
                elif key in self._forced:  # the filter that opened it is gone: as the user left it
                    if not self._forced.pop(key):
                        node.collapse()
            if want.children is not None and self._children_shows.get(key, _NEVER) != want.children_shows:
                self._sync_children(node, want.children())
                self._children_shows[key] = want.children_shows

    def _add(self, parent: TreeNode[Entry], index: int, want: _Want) -> TreeNode[Entry]:
        key = want.entry.key
        label = want.label()
        self._widths[key] = cell_width(label.plain)
        position = {"before": index} if index < len(parent.children) else {}
        if want.children is None:
            node = parent.add_leaf(label, want.entry, **position)
        else:
            expand = self._remembered.pop(key, want.expand)
            if want.force_expand and not expand:
                self._forced[key] = False
                expand = True
            node = parent.add(label, want.entry, expand=expand, **position)
        self._items[key] = node
        self._shows[key] = want.shows
        return node

    def _drop(self, node: TreeNode[Entry]) -> None:
        """Remove a line and its children; a thread filtered out comes back expanded as the
        user left it."""
        if node.data is not None and node.allow_expand:
            self._remembered[node.data.key] = self._forced.pop(node.data.key, node.is_expanded)
        stack = [node]
        while stack:
            n = stack.pop()
            if n.data is not None:
                self._items.pop(n.data.key, None)
                self._shows.pop(n.data.key, None)
                self._children_shows.pop(n.data.key, None)
                self._widths.pop(n.data.key, None)
            stack.extend(n.children)
        node.remove()

    # -- queries and moves the app's actions use

    @property
    def entry(self) -> Entry | None:
        node = self.cursor_node
        return node.data if node is not None else None

    def item(self, kind: str, item_id: int) -> TreeNode[Entry] | None:
        return self._items.get((kind, item_id))

    def select_entry(self, kind: str, item_id: int) -> bool:
        """Put the cursor on a thread or node (expanding its thread); False if not shown."""
        node = self._items.get((kind, item_id))
        if node is None:
            return False
        parent = node.parent
        if parent is not None and not parent.is_root and not parent.is_expanded:
            parent.expand()
            # its line exists only once the tree has laid itself out again
            self.call_after_refresh(self.move_cursor, node)
            return True
        self.move_cursor(node)
        return True

    def collapse_or_parent(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and node.is_expanded and node.children:
            node.collapse()
        elif node.parent is not None and not node.parent.is_root:
            self.move_cursor(node.parent)

    def expand_or_child(self) -> None:
        node = self.cursor_node
        if node is None or not node.allow_expand:
            return
        if not node.is_expanded:
            node.expand()
        elif node.children:
            self.move_cursor(node.children[0])
