"""ThreadlabApp: the one-screen supervision TUI.

It talks to the engine only through state.db: a `StateSource` (tui/data.py) loads
immutable Snapshots with the store's read API and sends Command rows; the widgets only
draw what a Snapshot holds ("attributes down, messages up"). Quitting never stops the
engine.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, Static, Tabs, Tree

from engine.errors import ThreadlabError
from engine.models import CommandKind, ThreadStatus
from tui.commands import ThreadlabCommands
from tui.data import NodeView, Selection, Snapshot, StateSource, ThreadView
from tui.format import Glyphs, ascii_preferred
from tui.keys import BINDINGS, WRITE_ACTIONS, KeymapError, default_keymap_path, load_keymap
from tui.screens import ConfirmScreen, HelpScreen, MainScreen
from tui.widgets.alerts import AlertsPanel
from tui.widgets.detail import NodeDetailPane
from tui.widgets.status import StatusBar, ViewerState
from tui.widgets.thread_tree import Entry, ThreadTree

log = logging.getLogger(__name__)

REFRESH_S = 2.0  # reload at least this often (heartbeat age, a dead engine's stale lock)
MAX_ALERT_TOASTS = 3


class ThreadlabApp(App[None]):
    """Supervise a threadlab session stored in `db_path`.

    read_only: hide (and refuse) every action that changes anything.
    keymap_path: a TOML file with a [keys] table of binding id = "key,key".
    clock: the time used for ages and rates (tests freeze it).
    watch: wake the poller with watchfiles (polling alone works too).
    ascii: use ASCII glyphs (None: decide from THREADLAB_ASCII and the locale).
    """

    TITLE = "threadlab"
    BINDINGS = BINDINGS
    COMMANDS = App.COMMANDS | {ThreadlabCommands}
    CSS = """
    #main { height: 1fr; }
    #tree { width: 45%; min-width: 28; max-width: 90; border-right: vkey $secondary; }
    #tree:focus { border-right: vkey $accent; }
    #waiting { display: none; width: 1fr; height: 1fr; content-align: center middle; padding: 1 4; }
    #main.-waiting #waiting { display: block; }
    #main.-waiting #tree, #main.-waiting #detail { display: none; }
    Input#filter { display: none; height: 1; border: none; padding: 0 1; background: $boost; }
    Input#filter.-shown { display: block; }
    """

    def __init__(
        self,
        db_path: str | Path,
        read_only: bool = False,
        keymap_path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        watch: bool = True,
        ascii: bool | None = None,
    ) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.read_only = read_only
        self.keymap_path = Path(keymap_path) if keymap_path else None
        self.clock = clock
        self.glyphs = Glyphs(ascii_preferred() if ascii is None else ascii)
        self.source = StateSource(db_path, clock=clock, watch=watch)
        self.keymap: dict[str, str] = {}
        self.snapshot: Snapshot | None = None
        self.loads = 0  # Snapshots applied (tests wait on it)
        self._selection = Selection()
        self._filter = ""
        self._marked: int | None = None
        self._pending: dict[int, str] = {}  # command id -> what it does
        self._acked_here: set[int] = set()
        self._max_alert_id: int | None = None
        self._viewer_error = ""
        # the widgets, kept by reference: a modal screen on top does not hide them from updates
        self.status_bar = StatusBar(id="status")
        self.main_pane = Horizontal(id="main")
        self.waiting = Static("", id="waiting")
        self.thread_tree = ThreadTree(self.glyphs, id="tree")
        self.detail = NodeDetailPane(self.glyphs, self.clock, id="detail")
        self.alerts_panel = AlertsPanel(self.glyphs, id="alerts")
        self.filter_input = Input(
            placeholder="filter threads and nodes: name, title, status, #id (enter keeps, esc clears)", id="filter")

    # ---- layout ------------------------------------------------------------------------

    def get_default_screen(self) -> MainScreen:
        return MainScreen(id="_default")

    def compose(self) -> ComposeResult:
        yield self.status_bar
        with self.main_pane:
            yield self.waiting
            yield self.thread_tree
            yield self.detail
        yield self.alerts_panel
        yield self.filter_input
        yield Footer(compact=True, show_command_palette=False)

    @property
    def selection(self) -> Selection:
        return self._selection

    @property
    def marked(self) -> int | None:
        return self._marked

    def on_mount(self) -> None:
        self._load_keymap()
        self.thread_tree.focus()
        self._refresh_status()
        self._follow_state()

    def _load_keymap(self) -> None:
        if self.keymap_path is None:
            return
        try:
            keymap, problems = load_keymap(self.keymap_path)
        except KeymapError as exc:
            self.notify(str(exc), title="keymap not used", severity="error", timeout=15)
            return
        for problem in problems:
            self.notify(problem, title=f"keymap {self.keymap_path.name}", severity="warning", timeout=15)
        self.keymap = keymap
        self.set_keymap(keymap)

    # ---- following state.db ------------------------------------------------------------

    @work(exclusive=True, group="state", exit_on_error=False, name="follow state.db")
    async def _follow_state(self) -> None:
        source = self.source
        await source.start()
        try:
            while True:
                try:
                    snapshot = await source.load(self._selection, tuple(self._pending))
                    self._viewer_error = ""
                    self._apply(snapshot)
                except Exception as exc:  # noqa: BLE001 - the viewer keeps going and says why
                    log.exception("loading state.db failed")
                    self._viewer_error = f"viewer error: {exc}"
                    self._refresh_status()
                await source.wait_for_change(REFRESH_S)
        finally:
            await source.close()

    async def on_unmount(self) -> None:
        # Textual cancels workers at exit without waiting for them; the app's Unmount is
        # awaited, so the connection is closed here for sure (its thread would block exit).
        await self.source.close()

    def refresh_now(self) -> None:
        """Reload at once (the selection changed, or a test wants a fresh Snapshot)."""
        self.source.poke()

    def _apply(self, snap: Snapshot) -> None:
        first = self.snapshot is None or not self.snapshot.ready
        self.snapshot = snap
        with self.batch_update():
            self._refresh_status()
            self.main_pane.set_class(not snap.ready, "-waiting")
            if not snap.ready:
                self.waiting.update(Text(snap.message))
                self.detail.show_message(snap.message)
            else:
                self.thread_tree.sync(snap, self._filter, self._marked)
                self._selection_from_tree()
                detail = snap.detail if snap.detail and snap.detail.node.id == self._selection.node_id else None
                if detail is not None or self._selection.node_id is None:
                    self.detail.show(detail, snap.events)
                else:
                    self.detail.show_message(f"loading node #{self._selection.node_id}…")
                self.alerts_panel.sync(snap.alerts, self._acked_here, snap.status.unacked_alerts)
                self._announce_alerts(snap, first)
                self._announce_commands(snap)
        self.loads += 1

    def _viewer_state(self) -> ViewerState:
        return ViewerState(read_only=self.read_only, marked=self._marked, filter=self._filter,
                           pending=len(self._pending), error=self._viewer_error)

    def _refresh_status(self) -> None:
        self.status_bar.show(self.snapshot, self._viewer_state(), self.glyphs)

    def _announce_alerts(self, snap: Snapshot, first: bool) -> None:
        newest = max((a.id for a in snap.alerts), default=0)
        if self._max_alert_id is None or first:
            self._max_alert_id = max(newest, self._max_alert_id or 0)
            return
        new = sorted((a for a in snap.alerts if a.id > self._max_alert_id), key=lambda a: a.id)
        for a in new[:MAX_ALERT_TOASTS]:
            where = f" on #{a.node_id}" if a.node_id is not None else ""
            self.notify(f"{a.guard}{where}: {a.message}", title=f"{self.glyphs.mark('alert')} alert #{a.id}",
                        severity="warning", timeout=10)
        if len(new) > MAX_ALERT_TOASTS:
            self.notify(f"and {len(new) - MAX_ALERT_TOASTS} more alert(s): press a", severity="warning")
        self._max_alert_id = max(newest, self._max_alert_id)

    def _announce_commands(self, snap: Snapshot) -> None:
        finished = False
        for cmd in snap.commands:
            if cmd.status == "pending" or cmd.id not in self._pending:
                continue
            what = self._pending.pop(cmd.id)
            finished = True
            if cmd.status == "done":
                self.notify(cmd.result or what, title=f"{what}: done")
            else:
                self.notify(cmd.result or "the engine refused it", title=f"{what}: failed", severity="error",
                            timeout=10)
        if finished:
            self._refresh_status()

    # ---- what is selected --------------------------------------------------------------

    def _node_of_entry(self, entry: Entry | None) -> int | None:
        if entry is None or self.snapshot is None:
            return None
        if entry.kind == "thread":
            thread = self.snapshot.thread(entry.id)
            return thread.head_node_id if thread else None
        if entry.kind in ("node", "baseline"):
            return entry.id
        return None

    def _select_node(self, node_id: int | None, run_id: int | None = None) -> None:
        if (node_id, run_id) != (self._selection.node_id, self._selection.run_id):
            self._selection = Selection(node_id, run_id)
            self.refresh_now()

    def _selection_from_tree(self) -> None:
        node_id = self._node_of_entry(self.thread_tree.entry)
        if node_id is not None and node_id != self._selection.node_id:
            self._select_node(node_id)

    @on(Tree.NodeHighlighted, "#tree")
    def _tree_highlighted(self, event: Tree.NodeHighlighted[Entry]) -> None:
        node_id = self._node_of_entry(event.node.data)
        if node_id is not None:
            self._select_node(node_id)

    @on(NodeDetailPane.RunChosen)
    def _run_chosen(self, event: NodeDetailPane.RunChosen) -> None:
        self._select_node(self._selection.node_id, event.run_id)
        self.detail.show_tab("log")

    @on(AlertsPanel.GoToNode)
    def _go_to_node(self, event: AlertsPanel.GoToNode) -> None:
        self.go_to_node(event.node_id)

    def go_to_node(self, node_id: int) -> None:
        """Put the tree's cursor on a node (else just show its detail)."""
        snap = self.snapshot
        node = snap.node(node_id) if snap else None
        kind = "baseline" if node is not None and node.thread_id is None else "node"
        if not self.thread_tree.select_entry(kind, node_id):
            self._select_node(node_id)
        self.thread_tree.focus()

    def current(self) -> tuple[Entry | None, ThreadView | None, NodeView | None]:
        """The tree's selection: its entry, its thread and its node (a thread's head)."""
        entry = self.thread_tree.entry
        snap = self.snapshot
        if entry is None or snap is None:
            return None, None, None
        thread = snap.thread(entry.thread_id) if entry.thread_id is not None else None
        node_id = self._node_of_entry(entry)
        return entry, thread, snap.node(node_id) if node_id is not None else None

    # ---- bindings: state of the actions ------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in WRITE_ACTIONS and self.read_only:
            return False
        if action == "acknowledge":
            return self.alerts_panel.shown
        return True

    # ---- moving ------------------------------------------------------------------------

    def _nav_target(self) -> Widget | None:
        w = self.focused
        if w is None or w is self.filter_input:
            return self.thread_tree
        if isinstance(w, Tabs):
            return None
        return w

    def _nav(self, tree_or_table: str, table: str | None, scroll: str) -> None:
        w = self._nav_target()
        if w is None:
            return
        if isinstance(w, Tree):
            getattr(w, tree_or_table)()
        elif isinstance(w, DataTable):
            getattr(w, table or tree_or_table)()
        else:
            getattr(w, scroll)(animate=False)

    def action_cursor_down(self) -> None:
        self._nav("action_cursor_down", None, "scroll_down")

    def action_cursor_up(self) -> None:
        self._nav("action_cursor_up", None, "scroll_up")

    def action_top(self) -> None:
        self._nav("action_scroll_home", "action_scroll_top", "scroll_home")

    def action_bottom(self) -> None:
        self._nav("action_scroll_end", "action_scroll_bottom", "scroll_end")

    def action_page_down(self) -> None:
        self._nav("action_page_down", None, "scroll_page_down")

    def action_page_up(self) -> None:
        self._nav("action_page_up", None, "scroll_page_up")

    def _pane_of(self, w: Widget | None) -> str:
        node = w
        while node is not None:
            if node.id in ("tree", "filter"):
                return "tree"
            if node.id == "detail":
                return "detail"
            if node.id == "alerts":
                return "alerts"
            node = node.parent  # type: ignore[assignment]
        return "tree"

    def focus_pane(self, pane: str) -> None:
        if pane == "detail":
            self.detail.focus_content()
        elif pane == "alerts" and self.alerts_panel.shown:
            self.alerts_panel.table.focus()
        else:
            self.thread_tree.focus()

    def action_switch_pane(self, step: int = 1) -> None:
        panes = ["tree", "detail"] + (["alerts"] if self.alerts_panel.shown else [])
        here = self._pane_of(self.focused)
        i = panes.index(here) if here in panes else 0
        self.focus_pane(panes[(i + step) % len(panes)])

    def action_collapse(self) -> None:
        pane = self._pane_of(self.focused)
        if pane == "detail":
            self.detail.step_tab(-1)
            self.detail.focus_content()
        elif pane == "tree":
            self.thread_tree.collapse_or_parent()
        elif isinstance(self.focused, DataTable):
            self.focused.action_cursor_left()

    def action_expand(self) -> None:
        pane = self._pane_of(self.focused)
        if pane == "detail":
            self.detail.step_tab(1)
            self.detail.focus_content()
        elif pane == "tree":
            self.thread_tree.expand_or_child()
        elif isinstance(self.focused, DataTable):
            self.focused.action_cursor_right()

    def action_open(self) -> None:
        if self._pane_of(self.focused) != "tree":
            return
        node = self.thread_tree.cursor_node
        if node is None:
            return
        if node.data is not None and node.data.kind == "thread":
            node.toggle()
        elif node.data is not None and node.data.kind in ("node", "baseline"):
            self.focus_pane("detail")

    def action_show_tab(self, name: str) -> None:
        self.detail.show_tab(name)

    def action_back(self) -> None:
        if self.filter_input.has_class("-shown"):
            self.filter_input.value = ""
            self.filter_input.remove_class("-shown")
            self._set_filter("")
            self.thread_tree.focus()
        elif self._marked is not None:
            self._set_mark(None)
            self.notify("merge mark cleared")
        elif self.alerts_panel.shown:
            self.action_alerts()
        elif self._pane_of(self.focused) != "tree":
            self.thread_tree.focus()

    # ---- viewing -----------------------------------------------------------------------

    def action_filter(self) -> None:
        self.filter_input.add_class("-shown")
        self.filter_input.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._set_filter(event.value)

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.thread_tree.focus()

    def _set_filter(self, text: str) -> None:
        self._filter = text
        self._resync_tree()
        self._refresh_status()

    def _resync_tree(self) -> None:
        if self.snapshot is not None and self.snapshot.ready:
            self.thread_tree.sync(self.snapshot, self._filter, self._marked)

    def action_alerts(self) -> None:
        panel = self.alerts_panel
        if panel.shown:
            panel.remove_class("-shown")
            if self._pane_of(self.focused) == "alerts" or self.focused is None:
                self.thread_tree.focus()
        else:
            panel.add_class("-shown")
            panel.table.focus()
        self.refresh_bindings()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.keymap, self.read_only))

    async def action_quit(self) -> None:
        alive = self.snapshot is not None and self.snapshot.status.engine.alive
        message = ("threadlab: viewer closed; the engine keeps running (`threadlab stop` stops it)" if alive
                   else "threadlab: viewer closed; the engine is not running")
        self.notify(message)
        self.exit(message=message)

    # ---- acting: Command rows the engine carries out ------------------------------------

    def _refuse_read_only(self) -> bool:
        if self.read_only:
            self.notify("this viewer is read-only", severity="warning")
        return self.read_only

    @work(group="commands", exit_on_error=False)
    async def send_command(self, kind: CommandKind, args: dict[str, Any], what: str) -> int | None:
        """Write a Command row; its result is announced when the engine has carried it out."""
        if self.read_only:
            return None
        try:
            cid = await self.source.send(kind, args)
        except (ThreadlabError, sqlite3.Error) as exc:
            self.notify(f"{exc}", title=f"{what}: not sent", severity="error", timeout=10)
            return None
        self._pending[cid] = what
        self._refresh_status()
        if self.snapshot is None or not self.snapshot.status.engine.alive:
            self.notify("the engine is not running: it carries the command out when it starts",
                        title=f"{what}: queued", severity="warning")
        return cid

    def _need_thread(self) -> ThreadView | None:
        _entry, thread, _node = self.current()
        if thread is None:
            self.notify("select a thread (or one of its nodes) first", severity="warning")
        return thread

    def _need_node(self) -> NodeView | None:
        _entry, _thread, node = self.current()
        if node is None:
            self.notify("select a node (or a thread, for its head) first", severity="warning")
        return node

    def action_fork(self) -> None:
        if self._refuse_read_only() or (node := self._need_node()) is None:
            return
        if not node.has_code:
            self.notify(f"#{node.id} has no code to fork from (its edits did not apply)", severity="warning")
            return
        self.send_command(CommandKind.FORK, {"node": node.id}, f"fork at #{node.id}")

    def action_pin(self) -> None:
        if self._refuse_read_only() or (thread := self._need_thread()) is None:
            return
        kind = CommandKind.UNPIN if thread.pinned else CommandKind.PIN
        self.send_command(kind, {"thread": thread.id}, f"{kind} thread {thread.name}")

    def action_pause(self) -> None:
        if self._refuse_read_only() or (thread := self._need_thread()) is None:
            return
        if thread.status == ThreadStatus.RUNNING:
            kind = CommandKind.PAUSE
        elif thread.status == ThreadStatus.PAUSED:
            kind = CommandKind.RESUME
        else:
            self.notify(f"thread {thread.name} is {thread.status}: it can be neither paused nor resumed",
                        severity="warning")
            return
        self.send_command(kind, {"thread": thread.id}, f"{kind} thread {thread.name}")

    def action_prune(self) -> None:
        if self._refuse_read_only() or (thread := self._need_thread()) is None:
            return
        if thread.status == ThreadStatus.PRUNED:
            self.notify(f"thread {thread.name} is already pruned", severity="warning")
            return
        self._confirm_prune(thread)

    @work(group="confirm", exclusive=True, exit_on_error=False)
    async def _confirm_prune(self, thread: ThreadView) -> None:
        running = await self.source.running_runs_of_thread(thread.id)
        runs = f"{running} running run{'s' if running != 1 else ''} will be killed"
        message = (f"Thread {thread.name} stops for good: {runs} and its queued runs cancelled. "
                   "Its nodes and results stay recorded.")

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.send_command(CommandKind.PRUNE, {"thread": thread.id}, f"prune thread {thread.name}")

        self.push_screen(ConfirmScreen(f"Prune thread {thread.name}?", message, "Prune"), done)

    def _set_mark(self, node_id: int | None) -> None:
        self._marked = node_id
        self._resync_tree()
        self._refresh_status()

    def action_merge(self) -> None:
        if self._refuse_read_only() or (node := self._need_node()) is None:
            return
        if not node.has_code:
            self.notify(f"#{node.id} has no code to merge (its edits did not apply)", severity="warning")
            return
        if self._marked is None:
            self._set_mark(node.id)
            self.notify(f"#{node.id} marked: press m on another node to merge #{node.id} into it (esc clears)")
            return
        if self._marked == node.id:
            self._set_mark(None)
            self.notify(f"#{node.id} unmarked")
            return
        other = self._marked
        snap = self.snapshot
        thread = snap.thread(node.thread_id) if snap else None
        where = f"thread {thread.name}" if thread else "a new thread"

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self._set_mark(None)
                self.send_command(CommandKind.MERGE, {"node": node.id, "other": other},
                                  f"merge #{other} into #{node.id}")

        self.push_screen(ConfirmScreen(
            f"Merge #{other} into #{node.id}?",
            f"A three-way merge of #{other} into #{node.id} becomes a new candidate on {where}; it is "
            "evaluated like any other.", "Merge", destructive=False, focus_confirm=True), done)

    def action_acknowledge(self) -> None:
        if self._refuse_read_only():
            return
        alert_id = self.alerts_panel.highlighted_alert()
        if alert_id is None:
            self.notify("no alert selected", severity="warning")
            return
        alert = next((a for a in self.snapshot.alerts if a.id == alert_id), None) if self.snapshot else None
        if alert is not None and (alert.acknowledged or alert_id in self._acked_here):
            self.notify(f"alert #{alert_id} is already acknowledged")
            return
        self._acked_here.add(alert_id)
        if self.snapshot is not None:
            self.alerts_panel.sync(self.snapshot.alerts, self._acked_here, self.snapshot.status.unacked_alerts)
        self.send_command(CommandKind.ACKNOWLEDGE, {"alert": alert_id}, f"acknowledge alert #{alert_id}")


def run_tui(db_path: str | Path = "state.db", read_only: bool = False, keymap_path: str | Path | None = None) -> None:
    """Run the viewer in this terminal until the user quits (the engine keeps running).

    Without keymap_path, $XDG_CONFIG_HOME/threadlab/keys.toml (or ~/.config/...) is used
    when it exists."""
    if keymap_path is None:
        default = default_keymap_path()
        keymap_path = default if default.exists() else None
    ThreadlabApp(db_path, read_only=read_only, keymap_path=keymap_path).run()
