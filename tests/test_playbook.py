"""playbook.toml loading, validation, and the knob line edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.edits import apply_edits
from engine.errors import PlaybookError
from engine.playbook import Knob, KnobNotFound, load_playbook
from engine.taskfile import TaskSpec, load_task

TASK_TOML = """\
editable = ["solution.py", "extra.py"]

[metric]
name = "loss"
direction = "{direction}"

[run]
command = ["{{python}}", "run.py"]

[evaluate]
command = ["{{python}}", "evaluate.py"]

[budget]
seconds = 5

[seeds]
explore = [0]
validate = [1, 2]
"""

SOLUTION = """\
\"\"\"A toy solution: gradient descent on x**2.\"\"\"

LR = 0.1  # learning rate
STEPS = 100
MY_LR = 0.1


def solve():
    LR = 5  # a local, never a knob
    x = 1.0
    for _ in range(STEPS):
        g = 2 * x
        x = x - LR * g
    return x
"""

PLAYBOOK = '''\
[[idea]]
id = "momentum"
title = "Heavy-ball momentum"
hypothesis = "Momentum speeds up convergence in the narrow valley."
  [[idea.edit]]
  file = "solution.py"
  search = """        x = x - LR * g\\n"""
  replace = """        v = 0.9 * v + g\\n        x = x - LR * v\\n"""
  [[idea.edit]]
  file = "solution.py"
  search = """    x = 1.0\\n"""
  replace = """    x = 1.0\\n    v = 0.0\\n"""

[[idea]]
id = "clip"
title = "Clip the gradient"
hypothesis = "Clipping keeps large steps stable."
  [[idea.edit]]
  file = "solution.py"
  search = """        g = 2 * x\\n"""
  replace = """        g = max(min(2 * x, 1.0), -1.0)\\n"""

[[idea]]
id = "start"
title = "Start closer"
hypothesis = "A smaller start needs fewer steps."
  [[idea.edit]]
  file = "solution.py"
  search = """    x = 1.0\\n"""
  replace = """    x = 0.5\\n"""

[[knob]]
name = "LR"
file = "solution.py"
low = 0.001
high = 1.0
log = true

[[knob]]
name = "STEPS"
file = "solution.py"
low = 10
high = 200
type = "int"
'''


def make_task(root: Path, playbook: str | None = PLAYBOOK, solution: str = SOLUTION,
              direction: str = "minimize") -> TaskSpec:
    """A tiny task folder under root, loaded through engine.taskfile."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "task.toml").write_text(TASK_TOML.format(direction=direction))
    (root / "solution.py").write_text(solution)
    (root / "extra.py").write_text("A = 1\n")
    if playbook is not None:
        (root / "playbook.toml").write_text(playbook)
    return load_task(root)


def test_loads_ideas_and_knobs(tmp_path: Path) -> None:
    book = load_playbook(make_task(tmp_path))
    assert [i.id for i in book.ideas] == ["momentum", "clip", "start"]
    momentum = book.idea("momentum")
    assert momentum is not None and momentum.title == "Heavy-ball momentum"
    assert len(momentum.edits) == 2
    assert momentum.edits[0].search == "        x = x - LR * g\n"
    assert momentum.edits[0].replace == "        v = 0.9 * v + g\n        x = x - LR * v\n"

    lr, steps = book.knobs
    assert (lr.name, lr.file, lr.low, lr.high, lr.log, lr.type) == ("LR", "solution.py", 0.001, 1.0, True, "float")
    assert (steps.name, steps.low, steps.high, steps.log, steps.type) == ("STEPS", 10, 200, False, "int")
    assert isinstance(steps.low, int)


def test_missing_playbook_is_empty(tmp_path: Path) -> None:
    book = load_playbook(make_task(tmp_path, playbook=None))
    assert book.ideas == () and book.knobs == ()


IDEA_OK = """
[[idea]]
id = "{id}"
title = "T"
hypothesis = "H"
  [[idea.edit]]
  file = "solution.py"
  search = "x = 1.0\\n"
  replace = "x = 2.0\\n"
"""


def knob(**fields: object) -> str:
    base: dict[str, object] = {"name": "LR", "file": "solution.py", "low": 0.001, "high": 1.0}
    base.update(fields)
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in base.items() if v is not None)
    return f"[[knob]]\n{body}\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the third idea's first edit has no search
        (
            IDEA_OK.format(id="a") + IDEA_OK.format(id="b")
            + '[[idea]]\nid = "c"\ntitle = "T"\nhypothesis = "H"\n'
            '  [[idea.edit]]\n  file = "solution.py"\n  replace = "y"\n',
            "playbook.toml: idea[3].edit[1].search is required",
        ),
        (IDEA_OK.format(id="Bad Id"), "idea[1].id must match [a-z0-9_-]+"),
        (IDEA_OK.format(id="same") + IDEA_OK.format(id="same"), "idea[2].id 'same' duplicates idea[1].id"),
        ('[[idea]]\nid = "a"\ntitle = "T"\nhypothesis = "H"\n', "idea[1].edit is required"),
        ('[[idea]]\nid = "a"\nhypothesis = "H"\n  [[idea.edit]]\n  file = "solution.py"\n'
         '  search = "x"\n  replace = "y"\n', "idea[1].title is required"),
        (IDEA_OK.format(id="a").replace('"solution.py"', '"harness.py"'),
         "idea[1].edit[1].file names 'harness.py', which is not editable; editable: solution.py, extra.py"),
        (IDEA_OK.format(id="a").replace('title = "T"', 'title = "T"\ncolour = "red"'),
         "idea[1].colour is not known; allowed: edit, hypothesis, id, title"),
        (knob(low=1.0, high=1.0), "knob[1].low must be below knob[1].high"),
        (knob(low=2.0, high=1.0), "knob[1].low must be below knob[1].high"),
        (knob(low=0.0, log=True), "knob[1].low must be positive when knob[1].log is true"),
        (knob(file="harness.py"), "knob[1].file names 'harness.py', which is not editable"),
        (knob(type="complex"), "knob[1].type must be 'float' or 'int'"),
        (knob(type="int", low=1.5, high=10), "knob[1].low must be int"),
        (knob(high=None), "knob[1].high is required"),
        (knob(name="2fast"), "knob[1].name must be a Python identifier"),
        (knob(log="yes"), "knob[1].log must be bool"),
        (knob() + knob(), "knob[2].name 'LR' duplicates knob[1].name"),
        ('[[stuff]]\nname = "x"\n', "playbook.toml: stuff is not known; allowed: idea, knob"),
        ("[[idea]\nid=", "playbook.toml: not valid TOML"),
    ],
)
def test_validation_errors_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    task = make_task(tmp_path, playbook=text)
    with pytest.raises(PlaybookError) as info:
        load_playbook(task)
    assert expected in str(info.value)
    assert info.value.hint


def test_valid_minimal_forms_load(tmp_path: Path) -> None:
    # int bounds on a float knob, an empty replace (a deletion), a knob in the other editable file
    text = (IDEA_OK.format(id="del-1").replace('replace = "x = 2.0\\n"', 'replace = ""')
            + knob(low=1, high=3) + knob(name="A", file="extra.py", low=0, high=5, type="int"))
    book = load_playbook(make_task(tmp_path, playbook=text))
    assert book.ideas[0].edits[0].replace == ""
    assert book.knobs[0].low == 1.0 and isinstance(book.knobs[0].low, float)
    assert book.knobs[1].file == "extra.py"


LR = Knob(name="LR", file="solution.py", low=0.001, high=1.0, log=True)
STEPS = Knob(name="STEPS", file="solution.py", low=10, high=200, type="int")


def test_knob_current_reads_module_level_line_only() -> None:
    files = {"solution.py": SOLUTION}
    assert LR.current(files) == "0.1"
    assert LR.current_number(files) == 0.1
    assert STEPS.current(files) == "100"
    assert Knob(name="MY_LR", file="solution.py", low=0.0, high=1.0).current(files) == "0.1"
    only_local = "def f():\n    LR = 5\n"
    assert LR.current({"solution.py": only_local}) is None
    assert LR.current({"other.py": SOLUTION}) is None
    with pytest.raises(KnobNotFound) as info:
        LR.edit({"solution.py": only_local}, 0.5)
    assert isinstance(info.value, PlaybookError)


def _changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    a, b = old.splitlines(), new.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def test_knob_edit_replaces_exactly_the_line_and_keeps_the_comment() -> None:
    files = {"solution.py": SOLUTION}
    edit = LR.edit(files, 0.05)
    new = apply_edits(files, [edit], ["solution.py"])["solution.py"]
    assert _changed_lines(SOLUTION, new) == [("LR = 0.1  # learning rate", "LR = 0.05  # learning rate")]
    assert LR.current({"solution.py": new}) == "0.05"


def test_knob_edit_is_unique_when_the_line_also_occurs_inside_another() -> None:
    # "LR = 0.1\n" is also the tail of "MY_LR = 0.1\n"; the edit must touch LR only.
    text = "MY_LR = 0.1\nLR = 0.1\nX = 1\n"
    edit = LR.edit({"solution.py": text}, 0.3)
    new = apply_edits({"solution.py": text}, [edit], ["solution.py"])["solution.py"]
    assert new == "MY_LR = 0.1\nLR = 0.3\nX = 1\n"
    first = "LR = 0.1\nMY_LR = 0.1\n"  # the knob on the first line, the look-alike after it
    new = apply_edits({"solution.py": first}, [LR.edit({"solution.py": first}, 0.3)], ["solution.py"])
    assert new["solution.py"] == "LR = 0.3\nMY_LR = 0.1\n"


def test_int_knob_stays_int_and_float_knob_stays_float() -> None:
    files = {"solution.py": SOLUTION}
    new = apply_edits(files, [STEPS.edit(files, 120.7)], ["solution.py"])["solution.py"]
    assert _changed_lines(SOLUTION, new) == [("STEPS = 100", "STEPS = 121")]
    assert STEPS.current_number({"solution.py": new}) == 121
    assert isinstance(STEPS.current_number({"solution.py": new}), int)

    wide = Knob(name="LR", file="solution.py", low=0.5, high=200.0)
    new = apply_edits(files, [wide.edit(files, 100.0)], ["solution.py"])["solution.py"]
    assert LR.current({"solution.py": new}) == "100.0"
    assert isinstance(LR.current_number({"solution.py": new}), float)


def test_knob_format_is_short_and_stays_in_range() -> None:
    assert LR.format(0.012345678) == "0.01235"
    assert LR.format(1e-5) == "0.001"  # clamped to low
    tight = Knob(name="LR", file="s.py", low=0.00123449, high=0.0013)
    text = tight.format(0.0012345)  # 4 digits would round to 0.001234 < low
    assert tight.low <= float(text) <= tight.high
    assert STEPS.format(500) == "200"


def test_knob_edit_keeps_annotation_spacing_and_missing_final_newline() -> None:
    text = "import math\nLR: float   =  0.1   # tuned\nB = 2"
    new = apply_edits({"solution.py": text}, [LR.edit({"solution.py": text}, 0.2)], ["solution.py"])
    assert new["solution.py"] == "import math\nLR: float   =  0.2   # tuned\nB = 2"
    last = "A = 1\nLR = 0.1"
    new = apply_edits({"solution.py": last}, [LR.edit({"solution.py": last}, 0.2)], ["solution.py"])
    assert new["solution.py"] == "A = 1\nLR = 0.2"
