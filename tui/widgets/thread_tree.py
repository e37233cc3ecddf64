"""The thread tree: threads with their nodes in lineage order, updated in place.

`sync()` adds, relabels and removes tree nodes to match a Snapshot; it never clears the
tree, so the cursor and each thread's expansion survive every update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from tui.data import NodeView, Snapshot, ThreadView
from tui.format import Glyphs, fmt_metric, fmt_metric_std


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
    entry: Entry
    label: Text
    children: tuple[_Want, ...] | None  # None: a leaf
    expand: bool = False  # the expansion of a newly added thread
    force_expand: bool = False  # the filter found nodes inside


def node_label(n: NodeView, glyphs: Glyphs, *, marked: bool = False, task_name: str | None = None,
               metric_name: str | None = None) -> Text:
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


def thread_label(t: ThreadView, glyphs: Glyphs, *, head_is_best: bool = False, task_name: str | None = None) -> Text:
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
        n = t.count(status)
        if n:
            g, s = glyphs.node(status)
            text.append(f" {g}{n}", s)
    return text


def _matches(query: str, *parts: object) -> bool:
    return query in " ".join(str(p) for p in parts).lower()


class ThreadTree(Tree[Entry], inherit_bindings=False):
    """Threads and their Nodes. It has no bindings of its own: the app's (remappable)
    bindings drive it, so every key can be changed in one keymap."""

    DEFAULT_CSS = """
    ThreadTree { scrollbar-size-vertical: 1; }
    """

    def __init__(self, glyphs: Glyphs, *, id: str | None = None) -> None:
        super().__init__("threads", id=id)
        self.show_root = False
        self.guide_depth = 2
        self.glyphs = glyphs
        self._items: dict[tuple[str, int], TreeNode[Entry]] = {}
        self._labels: dict[tuple[str, int], Text] = {}
        self._remembered: dict[tuple[str, int], bool] = {}  # expansion of threads filtered out
        self._forced: dict[tuple[str, int], bool] = {}  # expanded by the filter: the state before

    # -- what the snapshot wants on screen

    def _wanted(self, snap: Snapshot, query: str, marked: int | None) -> list[_Want]:
        g = self.glyphs
        several = len(snap.tasks) > 1
        out: list[_Want] = []
        for b in snap.baselines:
            task = snap.task(b.task_id)
            metric = task.metric_name if task else None
            if query and not _matches(query, "baseline", f"#{b.id}", b.title, task.name if task else ""):
                continue
            label = node_label(b, g, marked=marked == b.id, task_name=task.name if task else None, metric_name=metric)
            out.append(_Want(Entry("baseline", b.id), label, None))
        for t in snap.threads:
            task = snap.task(t.task_id)
            head_best = task is not None and task.best_node_id is not None and task.best_node_id == t.head_node_id
            thread_hit = not query or _matches(query, t.name, t.proposer, t.status, "pinned" if t.pinned else "",
                                               t.note)
            children = []
            for n in t.nodes:
                if thread_hit or _matches(query, f"#{n.id}", n.title, n.status):
                    children.append(_Want(Entry("node", n.id, t.id), node_label(n, g, marked=marked == n.id), None))
            if t.nodes_hidden and thread_hit:
                children.insert(0, _Want(Entry("more", t.id, t.id),
                                         Text(f"… {t.nodes_hidden} older node(s) not shown", "dim italic"), None))
            if not thread_hit and not children:
                continue
            label = thread_label(t, g, head_is_best=head_best, task_name=task.name if (task and several) else None)
            out.append(_Want(Entry("thread", t.id, t.id), label, tuple(children),
                             expand=t.status in ("running", "paused"), force_expand=bool(query) and not thread_hit))
        return out

    # -- in-place update

    def sync(self, snap: Snapshot, query: str = "", marked: int | None = None) -> None:
        """Make the tree show the snapshot: add, relabel and remove lines, never clear."""
        wanted = self._wanted(snap, query.strip().lower(), marked)
        keep: set[tuple[str, int]] = set()
        self._sync_children(self.root, wanted, keep)
        for key in [k for k in self._items if k not in keep]:
            node = self._items.pop(key)
            self._labels.pop(key, None)
            if node.allow_expand:  # filtered out: it comes back expanded as the user left it
                self._remembered[key] = self._forced.pop(key, node.is_expanded)
            if node.tree is self and node.parent is not None and node.id in self._tree_nodes:
                node.remove()
        if self.cursor_line < 0 and self.root.children:
            self.cursor_line = 0

    def _sync_children(self, parent: TreeNode[Entry], wanted: list[_Want] | tuple[_Want, ...],
                       keep: set[tuple[str, int]]) -> None:
        previous: TreeNode[Entry] | None = None
        for want in wanted:
            key = want.entry.key
            keep.add(key)
            node = self._items.get(key)
            if node is not None and node.parent is not parent:  # moved (cannot happen today): re-add
                node.remove()
                self._forget(node)
                node = None
            if node is None:
                position = {"after": previous} if previous is not None else ({"before": 0} if parent.children else {})
                if want.children is None:
                    node = parent.add_leaf(want.label, want.entry, **position)
                else:
                    expand = self._remembered.pop(key, want.expand)
                    if want.force_expand and not expand:
                        self._forced[key] = False
                        expand = True
                    node = parent.add(want.label, want.entry, expand=expand, **position)
                self._items[key] = node
                self._labels[key] = want.label
            else:
                if self._labels.get(key) != want.label:
                    node.set_label(want.label)
                    self._labels[key] = want.label
                if want.force_expand:
                    if not node.is_expanded:
                        self._forced.setdefault(key, False)
                        node.expand()
                elif key in self._forced:  # the filter that opened it is gone: as the user left it
                    if not self._forced.pop(key):
                        node.collapse()
            if want.children is not None:
                self._sync_children(node, want.children, keep)
            previous = node

    def _forget(self, node: TreeNode[Entry]) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n.data is not None:
                self._items.pop(n.data.key, None)
                self._labels.pop(n.data.key, None)
            stack.extend(n.children)

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
        if node.parent is not None and not node.parent.is_root:
            node.parent.expand()
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
