"""The selected node's detail: Info, Diff, Runs, Log, Metrics (and the engine's Events)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Log, Sparkline, Static, TabbedContent, TabPane

from engine.records import EventRow, RunRow
from tui.data import Curve, NodeDetail
from tui.format import Glyphs, fmt_clock, fmt_duration, fmt_metric, fmt_metric_std, fmt_p

TABS = ("info", "diff", "runs", "log", "metrics", "events")
LOG_MAX_LINES = 1000
RUN_COLUMNS = ("run", "seed", "purpose", "slot", "status", "metric", "duration", "exit")


def info_renderable(d: NodeDetail, glyphs: Glyphs) -> RenderableType:
    n = d.node
    metric_name = d.task.metric_name if d.task else "metric"
    glyph, style = glyphs.node(n.status)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("node", Text.assemble((f"#{n.id} ", "bold"), n.title))
    grid.add_row("status", Text.assemble((f"{glyph} {n.status}", style)))
    where = [f"thread {d.thread_name}" if d.thread_name else "no thread (the task's baseline)"]
    if n.parent_id is not None:
        where.append(f"parent #{n.parent_id}")
    if n.parent2_id is not None:
        where.append(f"merged with #{n.parent2_id}")
    grid.add_row("lineage", "; ".join(where))
    if n.hypothesis:
        grid.add_row("hypothesis", n.hypothesis)
    value = Text(f"{fmt_metric_std(n.metric, n.metric_std)} over {n.n_runs} run(s)")
    if n.metric is not None and d.parent_metric is not None:
        delta = n.metric - d.parent_metric
        value.append(f"; parent {fmt_metric(d.parent_metric)} ({delta:+.3g})", "dim")
    grid.add_row(metric_name, value)
    grid.add_row("p-value", fmt_p(n.p_value))
    for v in d.verdicts:
        decided = "accepted" if v.accepted else str(v.details.get("status", "not accepted"))
        vg, vs = glyphs.node(decided)
        text = Text.assemble((f"{vg} {decided}", vs), ": ", v.summary)
        extra = {k: val for k, val in v.details.items() if k != "status"}
        for k, val in list(extra.items())[:8]:
            text.append(f"\n  {k}: {str(val)[:200]}", "dim")
        grid.add_row("verdict", text)
    for a in d.alerts:
        ack = "acknowledged" if a.acknowledged else "not acknowledged"
        grid.add_row(Text(f"{glyphs.mark('alert')} alert", "bold magenta"),
                     Text.assemble((a.guard, "bold"), f": {a.message} ", (f"({ack})", "dim")))
    if n.error:
        grid.add_row(Text("error", "bold red"), n.error)
    if n.origin:
        grid.add_row("origin", ", ".join(f"{k}={v}" for k, v in n.origin.items())[:400])
    return grid


def diff_renderable(d: NodeDetail) -> RenderableType:
    note = Text(d.diff_note, "dim italic")
    if not d.diff.strip():
        return note
    return Group(note, Syntax(d.diff, "diff", theme="ansi_dark", background_color="default", word_wrap=False))


def curve_summary(c: Curve) -> Text:
    text = Text(c.label, "bold")
    if c.values:
        text.append(f": {fmt_metric(c.values[0])} → {fmt_metric(c.values[-1])}  "
                    f"min {fmt_metric(min(c.values))} max {fmt_metric(max(c.values))}  {len(c.values)} point(s)")
        if c.first_step is not None:
            text.append(f", steps {c.first_step}–{c.last_step}")
    if c.note:
        text.append(f"\n{c.note}", "dim")
    return text


class RunsTable(DataTable[str]):
    """A node's runs; enter chooses the run whose log and curve are shown."""

    def sync(self, runs: Sequence[RunRow], glyphs: Glyphs, now: float) -> None:
        rows = []
        for r in runs:
            g, style = glyphs.run(r.status)
            rows.append((str(r.id), (
                f"#{r.id}" + (f" a{r.attempt}" if r.attempt > 1 else ""), str(r.seed), r.purpose, r.slot or "-",
                Text(f"{g} {r.status}", style), fmt_metric(r.metric), fmt_duration(r.started_at, r.ended_at, now),
                "-" if r.exit_code is None else str(r.exit_code),
            )))
        keys = [k for k, _ in rows]
        current = [rk.value for rk in self.rows]
        if keys == current:
            for key, cells in rows:
                for col, value in zip(RUN_COLUMNS, cells):
                    if self.get_cell(key, col) != value:
                        self.update_cell(key, col, value)
            return
        cursor_key = current[self.cursor_row] if 0 <= self.cursor_row < len(current) else None
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        if cursor_key in keys:
            self.move_cursor(row=keys.index(cursor_key))


class NodeDetailPane(Vertical):
    """Tabs of the selected node. `show()` takes a NodeDetail (or None) and the events."""

    DEFAULT_CSS = """
    NodeDetailPane { width: 1fr; }
    NodeDetailPane #detail-header { height: 1; padding: 0 1; text-style: bold; }
    NodeDetailPane TabPane { padding: 0; }
    NodeDetailPane #metrics-body Sparkline { height: 3; margin: 0 1 1 1; }
    NodeDetailPane #metrics-body Static { padding: 0 1; }
    NodeDetailPane #info, NodeDetailPane #diff { padding: 0 1; }
    """

    class RunChosen(Message):
        def __init__(self, run_id: int) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, glyphs: Glyphs, clock: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs
        self.clock = clock
        self._shown: tuple[object, ...] | None = None
        self._diff_for: tuple[int, str] | None = None
        self._log_state: tuple[int | None, str] = (None, "")
        self._last_event_id = 0
        self._curves: tuple[Curve, Curve] | None = None
        self._log_note: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("no node selected", id="detail-header")
        with TabbedContent(initial="info-tab", id="tabs"):
            with TabPane("Info", id="info-tab"):
                with VerticalScroll(id="info-scroll"):
                    yield Static("", id="info")
            with TabPane("Diff", id="diff-tab"):
                with VerticalScroll(id="diff-scroll"):
                    yield Static("", id="diff")
            with TabPane("Runs", id="runs-tab"):
                table = RunsTable(id="runs", cursor_type="row", zebra_stripes=False)
                for column in RUN_COLUMNS:
                    table.add_column(column, key=column)
                yield table
            with TabPane("Log", id="log-tab"):
                yield Static("", id="log-note")
                yield Log(id="log", max_lines=LOG_MAX_LINES, auto_scroll=True)
            with TabPane("Metrics", id="metrics-tab"):
                with VerticalScroll(id="metrics-body"):
                    yield Static("", id="head-label")
                    yield Sparkline([], id="head-spark")
                    yield Static("", id="run-label")
                    yield Sparkline([], id="run-spark")
            with TabPane("Events", id="events-tab"):
                yield Log(id="events", max_lines=LOG_MAX_LINES, auto_scroll=True)

    # -- tabs and focus

    @property
    def tabs(self) -> TabbedContent:
        return self.query_one("#tabs", TabbedContent)

    @property
    def active_tab(self) -> str:
        return self.tabs.active.removesuffix("-tab")

    def show_tab(self, name: str) -> None:
        if name in TABS:
            self.tabs.active = f"{name}-tab"

    def step_tab(self, step: int) -> None:
        i = TABS.index(self.active_tab) if self.active_tab in TABS else 0
        self.show_tab(TABS[(i + step) % len(TABS)])

    def focus_target(self):  # noqa: ANN201 - a widget
        return {
            "info": "#info-scroll", "diff": "#diff-scroll", "runs": "#runs", "log": "#log",
            "metrics": "#metrics-body", "events": "#events",
        }.get(self.active_tab, "#info-scroll")

    def focus_content(self) -> None:
        self.query_one(self.focus_target()).focus()

    # -- content

    def show_message(self, message: str) -> None:
        self.query_one("#detail-header", Static).update(Text(message, "bold"), layout=False)

    def show(self, detail: NodeDetail | None, events: Sequence[EventRow]) -> None:
        self._show_events(events)
        if detail is None:
            if self._shown is not None:
                self.query_one("#detail-header", Static).update("no node selected")
                for widget in ("#info", "#diff"):
                    self.query_one(widget, Static).update("")
                self.query_one("#runs", RunsTable).clear()
                self._shown = None
            return
        g = self.glyphs
        n = detail.node
        glyph, style = g.node(n.status)
        header = Text.assemble((f"#{n.id} ", "bold"), (n.title, "bold"), "  ", (f"{glyph} {n.status}", style))
        if detail.thread_name:
            header.append(f"  thread {detail.thread_name}", "dim")
        signature = (n, detail.parent_metric, detail.verdicts, detail.alerts, detail.thread_name)
        if signature != self._shown:
            self.query_one("#detail-header", Static).update(header, layout=False)
            self.query_one("#info", Static).update(info_renderable(detail, g))
            self._shown = signature
        if self._diff_for != (n.id, detail.diff_note):
            self.query_one("#diff", Static).update(diff_renderable(detail))
            self.query_one("#diff-scroll", VerticalScroll).scroll_home(animate=False)
            self._diff_for = (n.id, detail.diff_note)
        self.query_one("#runs", RunsTable).sync(detail.runs, g, self.clock())
        self._show_log(detail)
        if self._curves != (detail.head_curve, detail.run_curve):
            self.query_one("#head-label", Static).update(curve_summary(detail.head_curve))
            self.query_one("#head-spark", Sparkline).data = list(detail.head_curve.values)
            self.query_one("#run-label", Static).update(curve_summary(detail.run_curve))
            self.query_one("#run-spark", Sparkline).data = list(detail.run_curve.values)
            self._curves = (detail.head_curve, detail.run_curve)

    def _show_log(self, detail: NodeDetail) -> None:
        tail = detail.log
        if self._log_note != tail.note:
            self.query_one("#log-note", Static).update(Text(tail.note, "dim"))
            self._log_note = tail.note
        log = self.query_one("#log", Log)
        old_run, old_text = self._log_state
        if (tail.run_id, tail.text) == self._log_state:
            return
        if tail.run_id == old_run and old_text and tail.text.startswith(old_text):
            log.write(tail.text[len(old_text):])
        else:
            log.clear()
            if tail.text:
                log.write(tail.text)
        self._log_state = (tail.run_id, tail.text)

    def _show_events(self, events: Sequence[EventRow]) -> None:
        new = [e for e in events if e.id > self._last_event_id]
        if not new:
            return
        log = self.query_one("#events", Log)
        log.write_lines([f"{fmt_clock(e.t)} {e.level:<7} {e.kind:<9} {e.message}" for e in new])
        self._last_event_id = new[-1].id

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runs" and event.row_key.value is not None:
            event.stop()
            self.post_message(self.RunChosen(int(event.row_key.value)))
