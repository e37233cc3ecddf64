"""The TUI's key bindings, each with an id, and the keymap file that remaps them.

A keymap file is TOML with one table:

    [keys]
    prune = "D"              # binding id = comma-separated keys
    cursor_down = "j,down,ctrl+n"

Keys use Textual's names ("space", "question_mark", "ctrl+p", "G"); a single character
like "?" or "/" is accepted too. `threadlab tui` reads `$XDG_CONFIG_HOME/threadlab/keys.toml`
(else `~/.config/threadlab/keys.toml`) when it exists, or the file given with --keymap.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from textual.binding import Binding


@dataclass(frozen=True)
class KeySpec:
    id: str  # the keymap name
    keys: str  # default keys, comma-separated
    action: str
    label: str  # short, for the footer
    description: str  # for the help screen and the command palette
    show: bool = False  # in the footer
    writes: bool = False  # changes something: hidden when the viewer is read-only
    palette: bool = True  # offered by the command palette


KEYS: tuple[KeySpec, ...] = (
    # moving
    KeySpec("cursor_down", "j,down", "cursor_down", "Down", "Move down"),
    KeySpec("cursor_up", "k,up", "cursor_up", "Up", "Move up"),
    KeySpec("collapse", "h,left", "collapse", "Collapse", "Collapse the thread, or go to its thread; "
            "in the detail pane, the previous tab"),
    KeySpec("expand", "l,right", "expand", "Expand", "Expand the thread; in the detail pane, the next tab"),
    KeySpec("top", "g,home", "top", "Top", "Go to the top"),
    KeySpec("bottom", "G,end", "bottom", "Bottom", "Go to the bottom"),
    KeySpec("page_down", "pagedown", "page_down", "Page down", "Move a page down", palette=False),
    KeySpec("page_up", "pageup", "page_up", "Page up", "Move a page up", palette=False),
    KeySpec("switch_pane", "tab", "switch_pane", "Pane", "Switch pane: threads, node detail, alerts"),
    KeySpec("switch_pane_back", "shift+tab", "switch_pane(-1)", "Pane back", "Switch pane backwards",
            palette=False),
    KeySpec("open", "enter", "open", "Open", "Open the selected node's detail (a thread: expand or collapse)"),
    KeySpec("back", "escape", "back", "Back", "Back: clear the filter, the merge mark, close the alerts"),
    # the detail tabs
    KeySpec("tab_info", "1", "show_tab('info')", "Info", "Show the node's info"),
    KeySpec("tab_diff", "2", "show_tab('diff')", "Diff", "Show the node's diff against its parent"),
    KeySpec("tab_runs", "3", "show_tab('runs')", "Runs", "Show the node's runs"),
    KeySpec("tab_log", "4", "show_tab('log')", "Log", "Show the log tail of the selected run"),
    KeySpec("tab_metrics", "5", "show_tab('metrics')", "Metrics", "Show the metric sparklines"),
    KeySpec("tab_events", "6", "show_tab('events')", "Events", "Show the engine's latest events"),
    # acting (Commands the engine carries out)
    KeySpec("fork", "f", "fork", "Fork", "Fork: start a new thread at the selected node", show=True, writes=True),
    KeySpec("merge", "m", "merge", "Merge", "Merge: mark a node, then press again on another to merge the "
            "marked node into it", show=True, writes=True),
    KeySpec("pin", "p", "pin", "Pin", "Pin or unpin the selected thread (a pinned thread never retires)",
            show=True, writes=True),
    KeySpec("prune", "d", "prune", "Prune", "Prune the selected thread: stop it for good, kill its runs",
            show=True, writes=True),
    KeySpec("pause", "space", "pause", "Pause", "Pause or resume the selected thread", show=True, writes=True),
    KeySpec("acknowledge", "x", "acknowledge", "Ack", "Acknowledge the selected alert", writes=True),
    # viewing
    KeySpec("filter", "slash", "filter", "Filter", "Filter the thread tree (esc clears)", show=True),
    KeySpec("alerts", "a", "alerts", "Alerts", "Show or hide the alerts panel", show=True),
    KeySpec("help", "question_mark", "help", "Help", "List the keys", show=True),
    KeySpec("palette", "colon,ctrl+p", "command_palette", "Commands", "Open the command palette",
            palette=False),
    KeySpec("quit", "q", "quit", "Quit", "Quit the viewer (the engine keeps running)", show=True),
)

BY_ID: dict[str, KeySpec] = {k.id: k for k in KEYS}
WRITE_ACTIONS: frozenset[str] = frozenset(k.action.split("(")[0] for k in KEYS if k.writes)

BINDINGS: list[Binding] = [
    Binding(k.keys, k.action, k.label, show=k.show, id=k.id, tooltip=k.description) for k in KEYS
]


class KeymapError(Exception):
    """The keymap file cannot be used."""


def default_keymap_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "threadlab" / "keys.toml"


def load_keymap(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[str]]:
    """Read a keymap file: ({binding id: keys}, problems). Unknown ids are left out and
    named in the problems; a file that cannot be read or parsed raises KeymapError."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise KeymapError(f"cannot read keymap {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise KeymapError(f"keymap {path} is not valid TOML: {exc}") from exc
    table = data.get("keys", {})
    if not isinstance(table, dict):
        raise KeymapError(f"keymap {path}: [keys] must be a table of id = \"key,key\"")
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, keys in table.items():
        if binding_id not in BY_ID:
            problems.append(f"unknown binding id {binding_id!r} (known: {', '.join(sorted(BY_ID))})")
        elif not isinstance(keys, str) or not [k for k in keys.split(",") if k.strip()]:
            problems.append(f"{binding_id}: keys must be a string like \"j,down\"")
        else:
            keymap[binding_id] = ",".join(k.strip() for k in keys.split(",") if k.strip())
    return keymap, problems


def keys_of(spec: KeySpec, keymap: dict[str, str]) -> list[str]:
    """The keys a binding has under a keymap."""
    return [k.strip() for k in keymap.get(spec.id, spec.keys).split(",") if k.strip()]
