"""task.toml: one clear error naming the field and what is allowed."""

import shutil
from pathlib import Path

import pytest

from engine.config import parse_duration, parse_proposers
from engine.errors import TaskError, ThreadlabError
from engine.models import Direction
from engine.taskfile import find_task, load_task

BOWL = Path(__file__).parent / "fixtures" / "bowl"


@pytest.fixture
def task(tmp_path):
    folder = tmp_path / "bowl"
    shutil.copytree(BOWL, folder)
    return folder


def edit_toml(folder: Path, old: str, new: str) -> None:
    path = folder / "task.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_editable_paths_are_normalised(task):
    edit_toml(task, 'editable = ["solution.py"]', 'editable = ["./solution.py"]')
    assert load_task(task).editable == ("solution.py",)


def test_the_fixture_loads(task):
    spec = load_task(task)
    assert spec.name == "bowl" and spec.direction is Direction.MINIMIZE
    assert spec.all_seeds == (0, 1, 2, 3, 4) and spec.profile == "smoke"
    assert spec.better(1.0, 2.0) and spec.improvement(1.0, 2.0) == 1.0


@pytest.mark.parametrize(
    "old, new, field, allowed",
    [
        ('direction = "minimize"', 'direction = "lower"', "metric.direction", "'minimize' or 'maximize'"),
        ("seconds = 10", 'seconds = "ten"', "budget.seconds", "must be float"),
        ("seconds = 10", "seconds = -1", "budget.seconds", "must be positive"),
        ('editable = ["solution.py"]', 'editable = ["missing.py"]', "editable", "does not exist"),
        ('editable = ["solution.py"]', 'editable = ["../x.py"]', "editable", "inside the task folder"),
        ("confidence = 0.95", "confidence = 1.5", "seeds.confidence", "[0.5, 1)"),
        ("validate = [1, 2, 3, 4]", "validate = [1]", "seeds.validate", "at least two seeds"),
        ("validate = [1, 2, 3, 4]", "validate = [1, 1, 2]", "seeds", "must not repeat a seed"),
        ("validate = [1, 2, 3, 4]", "validate = [0, 1, 2]", "seeds", "must not repeat a seed"),
        ("grace = 2", "grace = -1", "budget.grace", "must not be negative"),
        ("timeout = 30", "timout = 30", "evaluate.timout", "is not known"),
        ("confidence = 0.95", "confidance = 0.95", "seeds.confidance", "is not known"),
        ('[run]\ncommand = ["{python}", "run.py"]', '[run]\ncommand = []', "run.command", "must not be empty"),
        ('name = "bowl"', 'name = "bowl"\ncolour = "red"', "colour", "is not known"),
        ("[budget]\nseconds = 10\ngrace = 2\n", "", "budget", "is required"),
    ],
)
def test_malformed_fields_are_named(task, old, new, field, allowed):
    edit_toml(task, old, new)
    with pytest.raises(TaskError) as info:
        load_task(task)
    message = str(info.value)
    assert f"`{field}`" in message and allowed in message
    assert "\n" not in message and info.value.hint


def test_bad_toml_syntax_names_the_line(task):
    (task / "task.toml").write_text('name = "bowl\n')
    with pytest.raises(TaskError, match="not valid TOML.*line 1"):
        load_task(task)


def test_unknown_profile_lists_the_defined_ones(task):
    with pytest.raises(TaskError) as info:
        load_task(task, "gpu")
    assert "smoke" in info.value.hint


def test_profile_overrides_apply(task):
    with open(task / "task.toml", "a") as f:
        f.write('\n[profiles.long]\nbudget = { seconds = 99 }\nseeds = { validate = [7, 8] }\nparams = { n = 3 }\n')
    spec = load_task(task, "long")
    assert spec.budget_s == 99 and spec.validate_seeds == (7, 8) and spec.params == {"n": 3}
    assert load_task(task).budget_s == 10


def test_a_profile_can_name_its_own_metric(task):
    with open(task / "task.toml", "a") as f:
        f.write('\n[profiles.check]\nmetric = { name = "check_score", direction = "maximize", unit = "S" }\n'
                '\n[profiles.renamed]\nmetric = { name = "smoke_loss" }\n')
    check = load_task(task, "check")
    assert (check.metric_name, check.direction, check.unit) == ("check_score", Direction.MAXIMIZE, "S")
    assert check.better(2.0, 1.0)  # the profile's direction, not the task's
    renamed = load_task(task, "renamed")  # what it does not name comes from [metric]
    assert renamed.metric_name == "smoke_loss" and renamed.direction is Direction.MINIMIZE
    assert renamed.unit == load_task(task).unit
    assert load_task(task).metric_name == "loss"


@pytest.mark.parametrize(
    "override, field, allowed",
    [
        ('metric = { direction = "up" }', "profiles.bad.metric.direction", "'minimize' or 'maximize'"),
        ('metric = { nme = "x" }', "profiles.bad.metric.nme", "is not known; allowed: direction, name, unit"),
        ("metric = { name = 3 }", "profiles.bad.metric.name", "must be str"),
        ('metric = { name = " " }', "profiles.bad.metric.name", "must not be empty"),
        ("metric = { unit = false }", "profiles.bad.metric.unit", "must be str"),
        ('metric = "x"', "profiles.bad.metric", "must be dict"),
    ],
)
def test_a_bad_profile_metric_is_named(task, override, field, allowed):
    with open(task / "task.toml", "a") as f:
        f.write(f"\n[profiles.bad]\n{override}\n")
    with pytest.raises(TaskError) as info:
        load_task(task, "bad")
    message = str(info.value)
    assert f"`{field}`" in message and allowed in message, message
    assert "\n" not in message and info.value.hint
    load_task(task)  # another profile is not affected


def test_find_task_by_path_and_unknown_name(task):
    assert find_task(str(task)) == task.resolve()
    with pytest.raises(TaskError, match="no task named 'nope'"):
        find_task("nope")


def test_durations_and_proposer_specs():
    assert parse_duration("90") == 90 and parse_duration("15m") == 900 and parse_duration("1h30m") == 5400
    for bad in ("", "soon", "0s"):
        with pytest.raises(ThreadlabError):
            parse_duration(bad)
    assert parse_proposers("search", 4) == (("search", 0),)
    assert parse_proposers("search:2", 4) == (("search", 2),)
    with pytest.raises(ThreadlabError, match="unknown proposer"):
        parse_proposers("gpt:2", 4)
    with pytest.raises(ThreadlabError, match="more threads"):
        parse_proposers("search:5", 2)
