"""`python -m tui [--db state.db] [--read-only] [--keymap FILE]`: the viewer on its own."""

from __future__ import annotations

import argparse
import os

from tui import run_tui


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tui", description="Supervise a threadlab session.")
    parser.add_argument("--db", default=os.environ.get("THREADLAB_DB", "state.db"), help="the session's state.db")
    parser.add_argument("--read-only", action="store_true", help="hide every action that changes anything")
    parser.add_argument("--keymap", default=None, help="a TOML file with a [keys] table: id = \"key,key\"")
    args = parser.parse_args(argv)
    run_tui(args.db, read_only=args.read_only, keymap_path=args.keymap)


if __name__ == "__main__":
    main()
