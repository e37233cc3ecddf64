"""A task's playbook.toml: the offline `search` proposer's ideas and numeric knobs.

It lives beside task.toml. Example:

    [[idea]]
    id = "momentum"                       # unique, [a-z0-9_-]+
    title = "Heavy-ball momentum"
    hypothesis = "Momentum speeds up convergence in the narrow valley."
      [[idea.edit]]
      file = "solution.py"
      search = '''    x = x - lr * g\\n'''
      replace = '''    v = 0.9 * v + g\\n    x = x - lr * v\\n'''

    [[knob]]
    name = "LR"            # the module-level assignment `LR = <value>` in `file`
    file = "solution.py"
    low = 0.001
    high = 1.0
    log = true             # default false
    type = "float"         # "float" | "int"; default "float"

A missing playbook.toml is an empty Playbook. Every problem is one PlaybookError naming
the field path with 1-based indexes, e.g. "playbook.toml: idea[3].edit[1].search is
required", and what is allowed.
"""

from __future__ import annotations

import ast
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import PlaybookError
from engine.models import Edit
from engine.taskfile import PLAYBOOK_FILE, TaskSpec

_IDEA_ID = re.compile(r"[a-z0-9_-]+")
_KNOB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KNOB_TYPES = ("float", "int")


class KnobNotFound(PlaybookError):
    """A knob's `NAME = value` line is not in the file; the proposer skips that knob."""


@dataclass(frozen=True)
class Idea:
    id: str
    title: str
    hypothesis: str
    edits: tuple[Edit, ...]


@dataclass(frozen=True)
class Knob:
    name: str
    file: str
    low: float
    high: float
    log: bool = False
    type: str = "float"  # "float" | "int"

    def _pattern(self) -> re.Pattern[str]:
        # A module-level line: `NAME = value`, optionally annotated (`NAME: float = value`)
        # and followed by a comment. `head` and `tail` are kept verbatim on rewrite.
        return re.compile(
            rf"^(?P<head>{re.escape(self.name)}[ \t]*(?::[^=\n]*)?=[ \t]*)"
            r"(?P<value>[^#\s=][^#\r\n]*?)"
            r"(?P<tail>[ \t]*(?:#[^\r\n]*)?)(?=\r?$)",
            re.MULTILINE,
        )

    def _match(self, files: dict[str, str]) -> re.Match[str] | None:
        text = files.get(self.file)
        return None if text is None else self._pattern().search(text)

    def current(self, files: dict[str, str]) -> str | None:
        """The value text of the first module-level `NAME = value` line, or None."""
        m = self._match(files)
        return m.group("value") if m else None

    def current_number(self, files: dict[str, str]) -> float | None:
        """The current value as a number, or None when absent or not a plain literal."""
        text = self.current(files)
        if text is None:
            return None
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return value

    def clamp(self, value: float) -> float | int:
        """value inside [low, high], as an int for an int knob."""
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.type == "int" else float(value)

    def format(self, value: float) -> str:
        """Python source for value: short (4 significant digits) but still inside
        [low, high] and still a float literal for a float knob ("1.0", never "1")."""
        value = self.clamp(value)
        if self.type == "int":
            return str(value)
        text = f"{value:.4g}"
        if not self.low <= float(text) <= self.high:  # rounding stepped outside the range
            text = repr(value)
        if not any(c in text for c in ".en"):  # "100" would read back as an int
            text += ".0"
        return text

    def snap(self, value: float) -> float | int:
        """The value the file will actually hold after `edit(files, value)`."""
        text = self.format(value)
        return int(text) if self.type == "int" else float(text)

    def edit(self, files: dict[str, str], value: float) -> Edit:
        """The SEARCH/REPLACE edit that rewrites the knob's line to `NAME = <value>`,
        keeping any annotation, spacing and trailing comment.

        SEARCH holds whole lines with their line ends and grows by neighbouring lines
        until it matches exactly once (`LR = 0.1` also occurs inside `MY_LR = 0.1`).
        """
        m = self._match(files)
        if m is None:
            raise KnobNotFound(
                f"knob {self.name!r}: no module-level line `{self.name} = ...` in {self.file}",
                hint=f"add `{self.name} = <value>` at the start of a line in {self.file}, "
                "or remove the knob from playbook.toml",
            )
        text = files[self.file]
        # apply_edits lets a block match a last line without "\n"; build on the same view.
        haystack = text if text.endswith("\n") else text + "\n"
        line_start = m.start()
        line_end = haystack.index("\n", m.end()) + 1
        new_line = m.group("head") + self.format(value) + m.group("tail") + haystack[m.end():line_end]
        start, end = line_start, line_end
        while not _unique(haystack, start, end):
            if start > 0:
                start = haystack.rfind("\n", 0, start - 1) + 1
            elif end < len(haystack):
                end = haystack.index("\n", end) + 1
            else:
                break  # the whole file: unique by definition
        search = haystack[start:end]
        replace = haystack[start:line_start] + new_line + haystack[line_end:end]
        return Edit(file=self.file, search=search, replace=replace)


def _unique(text: str, start: int, end: int) -> bool:
    """True when text[start:end] occurs in text only at start (overlaps counted)."""
    window = text[start:end]
    return text.find(window) == start and text.find(window, start + 1) == -1


@dataclass(frozen=True)
class Playbook:
    ideas: tuple[Idea, ...] = ()
    knobs: tuple[Knob, ...] = ()

    def idea(self, idea_id: str) -> Idea | None:
        return next((i for i in self.ideas if i.id == idea_id), None)

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)


def load_playbook(task: TaskSpec) -> Playbook:
    """Read and validate the playbook.toml beside task.toml; none there is an empty one."""
    where = Path(task.path) / PLAYBOOK_FILE
    if not where.is_file():
        return Playbook()
    try:
        doc = tomllib.loads(where.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PlaybookError(
            f"{PLAYBOOK_FILE}: not valid TOML: {exc}", hint=f"fix the TOML syntax in {where}"
        ) from None
    return parse_playbook(doc, task.editable, where)


def parse_playbook(doc: dict[str, Any], editable: tuple[str, ...], where: Path | None = None) -> Playbook:
    """Validate a parsed playbook document against the task's editable files."""
    v = _Validator(editable, where)
    v.keys(doc, {"idea", "knob"}, "")
    ideas = tuple(v.idea(t, f"idea[{n}]") for n, t in enumerate(v.tables(doc, "idea"), start=1))
    knobs = tuple(v.knob(t, f"knob[{n}]") for n, t in enumerate(v.tables(doc, "knob"), start=1))
    _no_duplicates([i.id for i in ideas], "idea", "id", v)
    _no_duplicates([k.name for k in knobs], "knob", "name", v)
    return Playbook(ideas=ideas, knobs=knobs)


def _no_duplicates(values: list[str], table: str, key: str, v: _Validator) -> None:
    first: dict[str, int] = {}
    for n, value in enumerate(values, start=1):
        if value in first:
            raise v.error(f"{table}[{n}].{key}", f"{value!r} duplicates {table}[{first[value]}].{key}; each {key} must be unique")
        first[value] = n


class _Validator:
    def __init__(self, editable: tuple[str, ...], where: Path | None):
        self.editable = editable
        self.where = where

    def error(self, field: str, problem: str) -> PlaybookError:
        hint = f"fix `{field}` in {self.where or PLAYBOOK_FILE}"
        return PlaybookError(f"{PLAYBOOK_FILE}: {field} {problem}", hint=hint)

    def keys(self, table: dict, allowed: set[str], prefix: str) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.error(prefix + unknown[0], f"is not known; allowed: {', '.join(sorted(allowed))}")

    def tables(self, doc: dict, key: str, prefix: str = "") -> list[dict]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.error(prefix + key, f"must be an array of tables ([[{prefix}{key}]])")
        return value

    def get(self, table: dict, key: str, kind: type | tuple[type, ...], field: str, default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise self.error(field, "is required")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            want = " or ".join(k.__name__ for k in kinds)
            raise self.error(field, f"must be {want}, got {type(value).__name__} {value!r}")
        return value

    def file(self, table: dict, field: str) -> str:
        name = self.get(table, "file", str, field)
        if name not in self.editable:
            raise self.error(field, f"names {name!r}, which is not editable; editable: {', '.join(self.editable)}")
        return name

    def text(self, table: dict, key: str, field: str, allow_empty: bool = False) -> str:
        value = self.get(table, key, str, field)
        if not value.strip() and not allow_empty:
            raise self.error(field, "must not be empty")
        return value

    def idea(self, t: dict, p: str) -> Idea:
        self.keys(t, {"id", "title", "hypothesis", "edit"}, f"{p}.")
        idea_id = self.get(t, "id", str, f"{p}.id")
        if not _IDEA_ID.fullmatch(idea_id):
            raise self.error(f"{p}.id", f"must match [a-z0-9_-]+, got {idea_id!r}")
        if "edit" not in t:
            raise self.error(f"{p}.edit", "is required: at least one [[idea.edit]] table")
        edits = []
        for n, e in enumerate(self.tables(t, "edit", f"{p}."), start=1):
            q = f"{p}.edit[{n}]"
            self.keys(e, {"file", "search", "replace"}, f"{q}.")
            edits.append(Edit(
                file=self.file(e, f"{q}.file"),
                search=self.text(e, "search", f"{q}.search"),
                replace=self.text(e, "replace", f"{q}.replace", allow_empty=True),
            ))
        if not edits:
            raise self.error(f"{p}.edit", "must hold at least one [[idea.edit]] table")
        return Idea(
            id=idea_id,
            title=self.text(t, "title", f"{p}.title"),
            hypothesis=self.text(t, "hypothesis", f"{p}.hypothesis"),
            edits=tuple(edits),
        )

    def knob(self, t: dict, p: str) -> Knob:
        self.keys(t, {"name", "file", "low", "high", "log", "type"}, f"{p}.")
        name = self.get(t, "name", str, f"{p}.name")
        if not _KNOB_NAME.fullmatch(name):
            raise self.error(f"{p}.name", f"must be a Python identifier, got {name!r}")
        kind = self.get(t, "type", str, f"{p}.type", "float")
        if kind not in _KNOB_TYPES:
            raise self.error(f"{p}.type", f"must be 'float' or 'int', got {kind!r}")
        number = int if kind == "int" else (int, float)
        low = self.get(t, "low", number, f"{p}.low")
        high = self.get(t, "high", number, f"{p}.high")
        for key, value in (("low", low), ("high", high)):
            if not math.isfinite(value):
                raise self.error(f"{p}.{key}", f"must be a finite number, got {value}")
        if low >= high:
            raise self.error(f"{p}.low", f"must be below {p}.high, got low={low} high={high}")
        log = self.get(t, "log", bool, f"{p}.log", False)
        if log and low <= 0:
            raise self.error(f"{p}.low", f"must be positive when {p}.log is true, got {low}")
        return Knob(
            name=name,
            file=self.file(t, f"{p}.file"),
            low=low if kind == "int" else float(low),
            high=high if kind == "int" else float(high),
            log=log,
            type=kind,
        )
