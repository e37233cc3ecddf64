"""Apply a sweep's winners: write each problem's best variant into kernels/solutions/<name>.py.

    python3 benchmarks/kernels_sweep_apply.py OUT/sweep.json [--margin 0.01] [--dry-run]

For each problem of the sweep (benchmarks/kernels_sweep.py), the correct, unflagged variant
with the highest S replaces the shipped solution when it beats the shipped one's S by more
than --margin (default 0.01: less is within the run-to-run noise of one session): a knob
variant sets the solution's module constants; a file variant's file (its knobs applied)
becomes the solution. The comments above the constants are left as they are: edit them by
hand to record the measurement. Then the task folders are regenerated (python -m
kernels.tasks), which a test checks. A playbook idea (kernels/variants/<name>.toml) whose
search text the new solution no longer has (say it searched for `NUM_STAGES = 3` and 4 won) is
named in the output: edit or drop it (tests/kernels check that every idea applies), then
regenerate the tasks again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kernels_sweep import SOLUTIONS, with_knobs  # noqa: E402


def winners(sweep: dict, margin: float) -> dict[str, tuple[str, dict]]:
    """problem -> (label, entry) of the variant to ship, for the problems where one beats the shipped."""
    chosen = {}
    for name, p in sweep["problems"].items():
        best = p.get("best")
        shipped = p["variants"].get("shipped", {})
        if not best or best == "shipped" or not shipped.get("correct") or shipped.get("S") is None:
            continue  # nothing better, or no shipped figure to compare with
        entry = p["variants"][best]
        if entry["S"] > shipped["S"] + margin:
            chosen[name] = (best, entry)
    return chosen


def apply(sweep: dict, margin: float = 0.01, solutions: Path = SOLUTIONS, dry_run: bool = False) -> list[str]:
    lines = []
    for name, (tag, entry) in winners(sweep, margin).items():
        variant = dict(entry["variant"])
        base = ROOT / variant.pop("file") if "file" in variant else solutions / f"{name}.py"
        source = with_knobs(base.read_text(), variant)
        shipped = sweep["problems"][name]["variants"]["shipped"]["S"]
        lines.append(f"{name}: {tag} (S {shipped:.3f} -> {entry['S']:.3f})")
        stale = [i for i, edits in _ideas(name).items() if not _applies(edits, source)]
        if stale:  # tests/kernels check that every playbook idea applies to the shipped solution
            lines.append(f"  {name}: fix kernels/variants/{name}.toml, these ideas no longer apply: {', '.join(stale)}")
        if not dry_run:
            (solutions / f"{name}.py").write_text(source)
    return lines


def _ideas(name: str) -> dict[str, list[dict]]:
    import tomllib

    path = ROOT / "kernels" / "variants" / f"{name}.toml"
    return {i["id"]: i["edit"] for i in tomllib.loads(path.read_text())["idea"]} if path.is_file() else {}


def _applies(edits: list[dict], source: str) -> bool:
    for edit in edits:
        if source.count(edit["search"]) != 1:
            return False
        source = source.replace(edit["search"], edit["replace"])
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    sweep = json.loads(args.sweep.read_text())
    mode = sweep.get("machine", {}).get("mode")
    if mode != "gpu" and not args.dry_run:
        sys.exit(f"{args.sweep} is a {mode} sweep: its S says nothing about GPU speed (--dry-run to see it)")
    lines = apply(sweep, args.margin, dry_run=args.dry_run)
    print("\n".join(lines) or "no variant beats the shipped solutions")
    if lines and not args.dry_run:
        from kernels import tasks

        sys.argv = ["kernels.tasks"]
        try:
            tasks.main()
        except SystemExit as e:
            if e.code:
                raise


if __name__ == "__main__":
    main()
