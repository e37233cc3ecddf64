"""How things look on screen: status glyphs (never colour alone) and number formats.

Every status is shown as a glyph AND its word, so the screen reads the same without
colour (NO_COLOR, 16-colour terminals) and in a screen reader. Each glyph has an ASCII
fallback for terminals and fonts without the symbols (THREADLAB_ASCII=1, or a locale
that is not UTF-8).
"""

from __future__ import annotations

import locale
import os
import time
from dataclasses import dataclass

# status -> (glyph, ascii fallback, style)
NODE_GLYPHS: dict[str, tuple[str, str, str]] = {
    "queued": ("·", ".", "dim"),
    "running": ("▶", ">", "bold cyan"),
    "validating": ("◐", "~", "bold yellow"),
    "accepted": ("✓", "+", "bold green"),
    "rejected": ("✗", "x", "red"),
    "flagged": ("⚑", "F", "bold magenta"),
    "failed": ("!", "!", "bold red"),
    "baseline": ("◆", "=", "bold blue"),
    "cancelled": ("–", "-", "dim"),
}
THREAD_GLYPHS: dict[str, tuple[str, str, str]] = {
    "running": ("▶", ">", "bold cyan"),
    "paused": ("‖", "|", "yellow"),
    "pruned": ("⊘", "/", "dim red"),
    "done": ("■", "#", "dim"),
}
RUN_GLYPHS: dict[str, tuple[str, str, str]] = {
    "queued": ("·", ".", "dim"),
    "running": ("▶", ">", "bold cyan"),
    "done": ("✓", "+", "green"),
    "failed": ("!", "!", "bold red"),
    "timeout": ("⧗", "T", "bold red"),
    "interrupted": ("↺", "r", "yellow"),
    "cancelled": ("–", "-", "dim"),
}
# marks: (glyph, ascii fallback)
MARKS: dict[str, tuple[str, str]] = {
    "best": ("★", "*"),
    "pin": ("[pin]", "[pin]"),  # an emoji pin is two cells wide and mis-measured by some tmux builds
    "merge": ("⊕", "+"),
    "head": ("◀ head", "< head"),
    "marked": ("[merge?]", "[merge?]"),
    "alert": ("⚠", "!"),
    "engine_up": ("●", "*"),
    "engine_down": ("○", "o"),
}


def ascii_preferred() -> bool:
    """True when the terminal is unlikely to show the symbols (or the user asked for ASCII)."""
    forced = os.environ.get("THREADLAB_ASCII", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    encoding = (locale.getpreferredencoding(False) or "").lower().replace("-", "")
    return encoding not in ("utf8", "utf16", "utf32")


@dataclass(frozen=True)
class Glyphs:
    """The glyph set of one app instance."""

    ascii: bool = False

    def _pick(self, table: dict[str, tuple[str, str, str]], status: str) -> tuple[str, str]:
        glyph, fallback, style = table.get(status, ("?", "?", ""))
        return (fallback if self.ascii else glyph), style

    def node(self, status: str) -> tuple[str, str]:
        return self._pick(NODE_GLYPHS, status)

    def thread(self, status: str) -> tuple[str, str]:
        return self._pick(THREAD_GLYPHS, status)

    def run(self, status: str) -> tuple[str, str]:
        return self._pick(RUN_GLYPHS, status)

    def mark(self, name: str) -> str:
        glyph, fallback = MARKS[name]
        return fallback if self.ascii else glyph


def fmt_metric(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def fmt_metric_std(value: float | None, std: float | None) -> str:
    if value is None:
        return "-"
    return fmt_metric(value) + (f" ±{std:.2g}" if std else "")


def fmt_p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def fmt_age(seconds: float | None) -> str:
    """A short age: 0.4s, 12s, 3m05s, 2h10m, 3d04h."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_duration(start: float | None, end: float | None, now: float) -> str:
    if start is None:
        return "-"
    return fmt_age((end if end is not None else now) - start)


def fmt_clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def fmt_money(usd: float) -> str:
    return f"${usd:,.2f}"
