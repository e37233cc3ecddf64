"""The alerts panel: suspected reward hacks and anomalies, with their evidence."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.records import AlertRow
from tui.format import Glyphs

COLUMNS = ("alert", "state", "guard", "node", "message", "evidence")


def evidence_text(evidence: dict[str, object], limit: int = 120) -> str:
    text = json.dumps(evidence, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AlertsTable(DataTable[str]):
    pass


class AlertsPanel(Vertical):
    """Newest first. `x` acknowledges the highlighted alert, enter goes to its node."""

    DEFAULT_CSS = """
    AlertsPanel { height: 10; border-top: solid $warning; display: none; }
    AlertsPanel.-shown { display: block; }
    AlertsPanel #alerts-title { height: 1; padding: 0 1; text-style: bold; }
    """

    class GoToNode(Message):
        def __init__(self, node_id: int) -> None:
            super().__init__()
            self.node_id = node_id

    def __init__(self, glyphs: Glyphs, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs
        self._rows: list[tuple[str, tuple[object, ...]]] = []
        self._title: Text | None = None
        self._alert_nodes: dict[str, int | None] = {}

    def compose(self) -> ComposeResult:
        yield Static("alerts", id="alerts-title")
        table = AlertsTable(id="alerts-table", cursor_type="row")
        for column in COLUMNS:
            table.add_column(column, key=column)
        yield table

    @property
    def table(self) -> AlertsTable:
        return self.query_one(AlertsTable)

    @property
    def shown(self) -> bool:
        return self.has_class("-shown")

    def highlighted_alert(self) -> int | None:
        table = self.table
        if not self._rows or not (0 <= table.cursor_row < len(self._rows)):
            return None
        return int(self._rows[table.cursor_row][0])

    def sync(self, alerts: Sequence[AlertRow], acked_here: set[int], total_unacked: int) -> None:
        g = self.glyphs
        rows = []
        for a in alerts:
            acked = bool(a.acknowledged) or a.id in acked_here
            state = Text("✓ acked" if not g.ascii else "+ acked", "dim") if acked else \
                Text(f"{g.mark('alert')} new", "bold magenta")
            rows.append((str(a.id), (
                f"#{a.id}", state, a.guard, f"#{a.node_id}" if a.node_id is not None else "-", a.message,
                evidence_text(a.evidence),
            )))
            self._alert_nodes[str(a.id)] = a.node_id
        title = Text.assemble(
            (f"{g.mark('alert')} alerts", "bold"),
            f"  {total_unacked} not acknowledged; x acknowledges, enter goes to the node, a hides" if alerts
            else "  none: no guard has raised an alert",
        )
        if title != self._title:
            self.query_one("#alerts-title", Static).update(title)
            self._title = title
        if rows == self._rows:
            return
        table = self.table
        keys = [k for k, _ in rows]
        if keys == [k for k, _ in self._rows]:
            for (key, cells), (_, old) in zip(rows, self._rows):
                for col, value, before in zip(COLUMNS, cells, old):
                    if value != before:
                        table.update_cell(key, col, value)
        else:
            cursor_key = self._rows[table.cursor_row][0] if 0 <= table.cursor_row < len(self._rows) else None
            table.clear()
            for key, cells in rows:
                table.add_row(*cells, key=key)
            if cursor_key in keys:
                table.move_cursor(row=keys.index(cursor_key))
        self._rows = rows

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        node_id = self._alert_nodes.get(str(event.row_key.value))
        if node_id is not None:
            self.post_message(self.GoToNode(node_id))
