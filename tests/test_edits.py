"""SEARCH/REPLACE parsing, formatting and application."""

from __future__ import annotations

import pytest

from engine.edits import apply_edits, format_edit_blocks, parse_edit_blocks
from engine.errors import EditError
from engine.models import Edit

SOLUTION = "def f(x):\n    lr = 0.1\n    return x * lr\n\n\ndef g():\n    return 0\n"

TWO_BLOCKS = """Here is the change:

```python
solution.py
<<<<<<< SEARCH
    lr = 0.1
=======
    lr = 0.05
>>>>>>> REPLACE
```

`lib/util.py`
<<<<<<< SEARCH
=======
VALUE = 1
>>>>>>> REPLACE
"""


def test_parse_reads_paths_and_sections_around_fences_and_prose() -> None:
    assert parse_edit_blocks(TWO_BLOCKS) == [
        Edit("solution.py", "    lr = 0.1\n", "    lr = 0.05\n"),
        Edit("lib/util.py", "", "VALUE = 1\n"),
    ]


def test_format_round_trips_with_parse() -> None:
    edits = [
        Edit("solution.py", "    lr = 0.1\n", "    lr = 0.05\n    warmup = 3\n"),
        Edit("solution.py", "def g():\n    return 0\n", ""),
        Edit("new.py", "", "x = 1\n"),
    ]
    text = format_edit_blocks(edits)
    assert parse_edit_blocks(text) == edits
    assert format_edit_blocks(parse_edit_blocks(text)) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a.py\n<<<<<<< SEARCH\nold\n>>>>>>> REPLACE\n", "edit block 1: missing '======='"),
        ("a.py\n<<<<<<< SEARCH\nold\n=======\nnew\n", "edit block 1: missing '>>>>>>> REPLACE'"),
        ("<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE\n", "edit block 1: no file path"),
        (
            "a.py\n<<<<<<< SEARCH\no\n=======\nn\n>>>>>>> REPLACE\n"
            "<<<<<<< SEARCH\no\n=======\nn\n>>>>>>> REPLACE\n",
            "edit block 2: no file path",
        ),
    ],
)
def test_malformed_blocks_name_the_block_and_what_is_missing(text: str, problem: str) -> None:
    with pytest.raises(EditError, match="^" + problem.replace("'", ".")) as info:
        parse_edit_blocks(text)
    assert info.value.hint


def test_apply_returns_new_dict_and_leaves_input_alone() -> None:
    files = {"solution.py": SOLUTION, "run.py": "main()\n"}
    snapshot = dict(files)
    out = apply_edits(files, [Edit("solution.py", "    lr = 0.1\n", "    lr = 0.2\n")], ["solution.py"])
    assert out["solution.py"] == SOLUTION.replace("lr = 0.1", "lr = 0.2")
    assert out["run.py"] == "main()\n"
    assert files == snapshot
    assert out is not files


def test_edits_to_one_file_chain_in_order() -> None:
    edits = [
        Edit("solution.py", "    lr = 0.1\n", "    lr = 0.2\n"),
        Edit("solution.py", "    lr = 0.2\n", "    lr = 0.3\n"),  # sees the first edit's result
    ]
    out = apply_edits({"solution.py": SOLUTION}, edits, ["solution.py"])
    assert "    lr = 0.3\n" in out["solution.py"]


def test_empty_search_creates_a_missing_file_only() -> None:
    out = apply_edits({}, [Edit("new.py", "", "x = 1\n")], ["new.py"])
    assert out == {"new.py": "x = 1\n"}
    with pytest.raises(EditError, match="edit 1 to 'solution.py': SEARCH is empty"):
        apply_edits({"solution.py": SOLUTION}, [Edit("solution.py", "", "x\n")], ["solution.py"])


def test_search_on_missing_file_is_refused() -> None:
    with pytest.raises(EditError, match="edit 1: file 'gone.py' does not exist"):
        apply_edits({}, [Edit("gone.py", "a\n", "b\n")], ["gone.py"])


def test_protected_file_is_refused_with_the_editable_list() -> None:
    edits = [Edit("solution.py", "    lr = 0.1\n", "    lr = 0.2\n"), Edit("run.py", "main()\n", "")]
    with pytest.raises(EditError) as info:
        apply_edits({"solution.py": SOLUTION, "run.py": "main()\n"}, edits, ["solution.py"])
    assert str(info.value) == "edit 2 touches protected file 'run.py'; editable: solution.py"


def test_path_tricks_do_not_escape_the_editable_list() -> None:
    with pytest.raises(EditError, match="protected file 'run.py'"):
        apply_edits({"run.py": "x\n"}, [Edit("./lib/../run.py", "x\n", "y\n")], ["solution.py"])
    with pytest.raises(EditError, match="invalid file path"):
        apply_edits({}, [Edit("../solution.py", "", "y\n")], ["solution.py"])


def test_no_match_shows_the_most_similar_region() -> None:
    wrong = Edit("solution.py", "    return x*lr\n", "    return x\n")
    with pytest.raises(EditError) as info:
        apply_edits({"solution.py": SOLUTION}, [wrong], ["solution.py"])
    message = str(info.value)
    assert message.startswith("edit 1 to 'solution.py': SEARCH matches nowhere")
    assert "most similar lines (3-3)" in message
    assert message.endswith("    return x * lr")


def test_double_match_says_how_many_times() -> None:
    content = "x = 1\ny = 2\nx = 1\nx = 1\n"
    with pytest.raises(EditError, match="edit 1 to 'a.py': SEARCH matches 3 times") as info:
        apply_edits({"a.py": content}, [Edit("a.py", "x = 1\n", "x = 3\n")], ["a.py"])
    assert "surrounding lines" in info.value.hint


def test_last_line_without_newline_still_matches_and_stays_without_newline() -> None:
    out = apply_edits({"a.py": "a\nb"}, [Edit("a.py", "b\n", "c\n")], ["a.py"])
    assert out == {"a.py": "a\nc"}
