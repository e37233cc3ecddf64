"""SEARCH/REPLACE edits: the one edit format for every proposer.

Text form (aider style), one or more blocks, optionally inside ``` fences:

    path/to/file.py
    <<<<<<< SEARCH
    old lines
    =======
    new lines
    >>>>>>> REPLACE

An Edit's search and replace hold whole lines, each with its line end, so that
`parse_edit_blocks(format_edit_blocks(edits)) == edits` for edits whose texts are empty
or end with a newline. Matching is exact; an empty SEARCH only creates a missing file.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Sequence

from engine.errors import EditError
from engine.models import Edit

SEARCH_MARK = "<<<<<<< SEARCH"
DIVIDER = "======="
REPLACE_MARK = ">>>>>>> REPLACE"

_SEARCH_RE = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER_RE = re.compile(r"^\s*={5,9}\s*$")
_REPLACE_RE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})[\w+.-]*\s*$")  # ``` or ```python, never a path

_FORMAT_HINT = (
    "write each block as: the file path on its own line, then '<<<<<<< SEARCH', the exact "
    "old lines, '=======', the new lines, and '>>>>>>> REPLACE'"
)
_SIMILAR_MAX_LINES = 12


def _lines(text: str) -> list[str]:
    """Split on \\n only (str.splitlines also splits on form feeds etc.), keeping ends."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def parse_edit_blocks(text: str) -> list[Edit]:
    """Parse every SEARCH/REPLACE block in text; prose and fences between blocks are ignored."""
    lines = _lines(text)
    edits: list[Edit] = []
    i = 0
    candidate_path: str | None = None  # last non-empty, non-fence line since the last block
    while i < len(lines):
        line = lines[i]
        if _REPLACE_RE.match(line):
            raise EditError(
                f"edit block {len(edits) + 1}: found '{line.strip()}' before '{SEARCH_MARK}'",
                hint=_FORMAT_HINT,
            )
        if not _SEARCH_RE.match(line):
            if line.strip() and not _FENCE_RE.match(line):
                candidate_path = line.strip().strip("`").strip()
            i += 1
            continue

        number = len(edits) + 1
        if not candidate_path:
            raise EditError(
                f"edit block {number}: no file path before '{SEARCH_MARK}'",
                hint="put the file path on its own line right above '<<<<<<< SEARCH'",
            )
        search, i = _section(lines, i + 1, _DIVIDER_RE, number, DIVIDER)
        replace, i = _section(lines, i + 1, _REPLACE_RE, number, REPLACE_MARK)
        edits.append(Edit(file=candidate_path, search=search, replace=replace))
        candidate_path = None
        i += 1
    return edits


def _section(lines: list[str], start: int, end_re: re.Pattern[str], number: int,
             end_mark: str) -> tuple[str, int]:
    """The text from lines[start] up to the line matching end_re, and that line's index."""
    for j in range(start, len(lines)):
        if end_re.match(lines[j]):
            return "".join(lines[start:j]), j
        if _SEARCH_RE.match(lines[j]) or (end_re is _DIVIDER_RE and _REPLACE_RE.match(lines[j])):
            break
    raise EditError(f"edit block {number}: missing '{end_mark}'", hint=_FORMAT_HINT)


def format_edit_blocks(edits: Sequence[Edit]) -> str:
    """The text form of edits; the inverse of parse_edit_blocks."""
    blocks = []
    for edit in edits:
        blocks.append(
            f"{edit.file}\n{SEARCH_MARK}\n{_with_newline(edit.search)}"
            f"{DIVIDER}\n{_with_newline(edit.replace)}{REPLACE_MARK}\n"
        )
    return "\n".join(blocks)


def _with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def normalize_path(path: str) -> str:
    """A repository-relative POSIX path; absolute paths and '..' are refused."""
    cleaned = path.strip().replace("\\", "/")
    normal = posixpath.normpath(cleaned) if cleaned else ""
    if not normal or normal == "." or normal.startswith("/") or normal.split("/")[0] == "..":
        raise EditError(
            f"edit names an invalid file path {path!r}",
            hint="use a path relative to the task folder, such as 'solution.py'",
        )
    return normal


def apply_edits(files: dict[str, str], edits: Sequence[Edit],
                editable: Sequence[str]) -> dict[str, str]:
    """Apply edits in order (edits to one file chain) and return a new dict of contents.

    `files` maps paths to current contents; a path absent from it is a missing file.
    """
    allowed = {normalize_path(p) for p in editable}
    result = {normalize_path(p): text for p, text in files.items()}
    for number, edit in enumerate(edits, start=1):
        path = normalize_path(edit.file)
        if path not in allowed:
            raise EditError(
                f"edit {number} touches protected file '{path}'; "
                f"editable: {', '.join(sorted(allowed)) or '(none)'}",
                hint="edit only the task's editable files",
            )
        current = result.get(path)
        if current is None:
            if edit.search:
                raise EditError(
                    f"edit {number}: file '{path}' does not exist, so its SEARCH must be empty",
                    hint="check the file path, or leave SEARCH empty to create the file",
                )
            result[path] = edit.replace
            continue
        result[path] = _replace_once(current, edit, number, path)
    return result


def _replace_once(content: str, edit: Edit, number: int, path: str) -> str:
    where = f"edit {number} to '{path}'"
    if not edit.search:
        raise EditError(
            f"{where}: SEARCH is empty",
            hint="copy the exact lines to change into SEARCH; an empty SEARCH only creates a missing file",
        )
    # Blocks always end lines with "\n"; let them match a last line that has none.
    missing_newline = not content.endswith("\n")
    haystack = content + "\n" if missing_newline else content
    count = haystack.count(edit.search)
    if count == 1:
        new = haystack.replace(edit.search, edit.replace, 1)
        return new[:-1] if missing_newline and new.endswith("\n") else new
    if count > 1:
        raise EditError(
            f"{where}: SEARCH matches {count} times",
            hint="add surrounding lines to SEARCH so that it matches exactly once",
        )
    first, last, region = _most_similar(content, edit.search)
    detail = f"; the most similar lines ({first}-{last}) are:\n{region}" if region else ""
    raise EditError(
        f"{where}: SEARCH matches nowhere{detail}",
        hint="copy SEARCH exactly from the current file, whitespace and indentation included",
    )


def _most_similar(content: str, search: str) -> tuple[int, int, str]:
    """The 1-based line range and text of the window of content most like search."""
    file_lines = content.splitlines()
    want = search.splitlines()
    if not file_lines or not want:
        return 0, 0, ""
    size = min(len(want), len(file_lines), _SIMILAR_MAX_LINES)
    target = "\n".join(want[:size])
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(target)  # seq2 is the one difflib caches
    best, best_start = -1.0, 0
    for start in range(len(file_lines) - size + 1):
        matcher.set_seq1("\n".join(file_lines[start:start + size]))
        if matcher.real_quick_ratio() <= best or matcher.quick_ratio() <= best:
            continue
        ratio = matcher.ratio()
        if ratio > best:
            best, best_start = ratio, start
    region = "\n".join(file_lines[best_start:best_start + size])
    return best_start + 1, best_start + size, region
