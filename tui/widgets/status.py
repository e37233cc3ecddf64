"""The status bar: engine state, slots, runs per hour, best metric per task, spend."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from tui.data import Snapshot
from tui.format import Glyphs, fmt_age, fmt_metric, fmt_money


@dataclass(frozen=True)
class ViewerState:
    """What the viewer itself adds to the bar."""

    read_only: bool = False
    marked: int | None = None  # the node marked for a merge
    filter: str = ""
    pending: int = 0  # commands sent, not yet carried out
    error: str = ""  # the viewer's own trouble


def status_text(snap: Snapshot | None, viewer: ViewerState, glyphs: Glyphs) -> Text:
    sep = (" │ ", "dim") if not glyphs.ascii else (" | ", "dim")
    text = Text(no_wrap=True, overflow="ellipsis")
    if snap is None:
        text.append("threadlab: loading…")
        return text
    if not snap.ready:
        text.append("NO DATABASE ", "bold reverse")
        text.append(f" {snap.message}")
        return text
    s = snap.status
    e = s.engine
    if e.alive:
        text.append(f"{glyphs.mark('engine_up')} engine up", "bold green")
        text.append(f" hb {fmt_age(e.heartbeat_age)}")
    else:
        text.append(f"{glyphs.mark('engine_down')} ENGINE STOPPED", "bold reverse red")
        if e.stale_lock:
            text.append(f" (no heartbeat for {fmt_age(e.heartbeat_age)})")
    text.append(*sep)
    text.append(f"slots {s.busy_slots}/{s.total_slots if s.total_slots is not None else '?'}")
    if s.queued_runs:
        text.append(f" +{s.queued_runs} queued")
    text.append(*sep)
    text.append(f"{s.runs_per_hour:.0f} runs/h")
    for b in s.best:
        text.append(*sep)
        prefix = f"{b.task_name} " if len(s.best) > 1 else ""
        text.append(f"{prefix}best {b.metric_name} ")
        text.append(fmt_metric(b.value), "bold")
        if b.node_id is not None:
            text.append(f" #{b.node_id}")
    if s.unacked_alerts:
        text.append(*sep)
        text.append(f"{glyphs.mark('alert')} {s.unacked_alerts} alert{'s' if s.unacked_alerts != 1 else ''}",
                    "bold magenta")
    text.append(*sep)
    text.append(f"spend {fmt_money(s.spend_usd)}")
    if viewer.marked is not None:
        text.append(*sep)
        text.append(f"merge: #{viewer.marked} marked", "reverse")
    if viewer.filter:
        text.append(*sep)
        text.append(f"filter: {viewer.filter}", "italic")
    if viewer.pending:
        text.append(*sep)
        text.append(f"{viewer.pending} command(s) pending")
    if viewer.read_only:
        text.append(*sep)
        text.append("read-only", "bold")
    if viewer.error:
        text.append(*sep)
        text.append(viewer.error, "bold red")
    return text


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; dock: top; background: $panel; padding: 0 1; }
    """

    _text: Text | None = None

    def show(self, snap: Snapshot | None, viewer: ViewerState, glyphs: Glyphs) -> None:
        text = status_text(snap, viewer, glyphs)
        if text != self._text:
            self.update(text, layout=False)  # always one line
            self._text = text
