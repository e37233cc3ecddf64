"""The Textual supervision app. It talks to the engine only through state.db: the store's
read API and models, plus Command rows (see tui/data.py). `run_tui(db_path, read_only)`
runs it; `python -m tui --db state.db` too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui.app import ThreadlabApp


def run_tui(db_path: Any = "state.db", read_only: bool = False, keymap_path: Any = None) -> None:
    """Run the viewer until the user quits; the engine keeps running."""
    from tui.app import run_tui as _run

    _run(db_path, read_only=read_only, keymap_path=keymap_path)


__all__ = ["ThreadlabApp", "run_tui"]


def __getattr__(name: str) -> Any:
    if name == "ThreadlabApp":
        from tui.app import ThreadlabApp

        return ThreadlabApp
    raise AttributeError(name)
