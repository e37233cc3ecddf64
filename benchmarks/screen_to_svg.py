"""A terminal screen captured with `tmux capture-pane -p -e` (ANSI text) as an SVG image.

    python benchmarks/screen_to_svg.py SCREEN.ansi OUT.svg [--title TITLE]
"""

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("screen", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--title", default="threadlab")
    args = parser.parse_args()
    lines = args.screen.read_text(errors="replace").rstrip("\n").split("\n")
    width = max(Text.from_ansi(line).cell_len for line in lines)
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor", file=open("/dev/null", "w"))
    for line in lines:
        console.print(Text.from_ansi(line), end="\n", overflow="crop", no_wrap=True)
    console.save_svg(str(args.out), title=args.title)


if __name__ == "__main__":
    main()
