"""Two task.toml features the speedrun task rests on, each through the engine:

- `include`: harness files kept in another folder join the task's files (so speedrun runs
  nanochat's evaluator without a copy of it);
- `[accept]`: a constraint on an evaluator extra that an accepted node must also meet, a
  one-sided one-sample t-test over the validation seeds (the speedrun's loss target).
"""

import json
import shutil
from pathlib import Path

import pytest

from engine.errors import TaskError
from engine.models import Edit, Proposal
from engine.stats import beyond_target
from engine.taskfile import load_task
from engine.workspace import Workspace
from tests.conftest import BOWL, make_task

# ---- include ----------------------------------------------------------------------------


@pytest.fixture
def split_task(tmp_path):
    """The bowl fixture with its bowl.py moved to a shared folder beside it."""
    task = tmp_path / "bowl"
    shutil.copytree(BOWL, task)
    shared = tmp_path / "shared"
    shared.mkdir()
    (task / "bowl.py").rename(shared / "bowl.py")
    (shared / "solution.py").write_text("# another task's editable file: the task's own wins\n")
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace('editable = ["solution.py"]',
                                             'editable = ["solution.py"]\ninclude = ["../shared/*.py"]'))
    return task


def test_included_files_join_the_root_commit_and_the_tasks_own_win(split_task, tmp_path):
    spec = load_task(split_task)
    assert spec.include == {"bowl.py": str((tmp_path / "shared" / "bowl.py").resolve())}
    ws = Workspace.open_or_create(tmp_path / "repo", split_task, include=spec.include)
    assert sorted(ws.list_files(ws.root_sha)) == ["bowl.py", "evaluate.py", "playbook.toml", "run.py",
                                                  "solution.py", "task.toml"]
    assert ws.read_file(ws.root_sha, "solution.py") == (split_task / "solution.py").read_text()
    assert ws.changed_since_root(split_task, include=spec.include) == []
    (tmp_path / "shared" / "bowl.py").write_text("# the shared harness changed\n")
    assert ws.changed_since_root(split_task, include=spec.include) == ["bowl.py"]


@pytest.mark.parametrize("include, problem", [
    ('["../nowhere/*.py"]', "matches no file"),
    ('"../shared"', "must be list"),
    ('["../shared/*.py", "../other/*.py"]', "two files named 'bowl.py'"),
])
def test_a_bad_include_is_named(split_task, include, problem):
    other = split_task.parent / "other"
    other.mkdir()
    (other / "bowl.py").write_text("")
    toml = split_task / "task.toml"
    toml.write_text(toml.read_text().replace('include = ["../shared/*.py"]', f"include = {include}"))
    with pytest.raises(TaskError, match="`include`") as err:
        load_task(split_task)
    assert problem in str(err.value)


async def test_a_session_runs_with_included_harness_files(split_task, start_engine):
    s = await start_engine(split_task, threads=1)
    baseline = await s.wait(lambda: s.rows("SELECT * FROM nodes WHERE id = 1 AND status = 'baseline'"), 30,
                            "the baseline measured with bowl.py included")
    assert baseline[0]["metric"] is not None


# ---- [accept]: the schema ----------------------------------------------------------------


def with_accept(table: str):
    def edit(toml: str) -> str:
        toml = toml.replace("[seeds]", f"[accept]\n{table}\n\n[seeds]")
        return toml.replace('[profiles.smoke]\ndescription = "the whole bowl, CPU"',
                            '[profiles.smoke]\ndescription = "the whole bowl, CPU"\nparams = { target = 3.5 }')
    return edit


def test_accept_reads_a_number_or_a_profile_param(tmp_path):
    spec = load_task(make_task(tmp_path / "a", task_toml=with_accept('extra = "shape"\nbelow = 2\nalpha = 0.01')))
    assert (spec.accept.key, spec.accept.target, spec.accept.below, spec.accept.alpha) == ("shape", 2.0, True, 0.01)
    spec = load_task(make_task(tmp_path / "b", task_toml=with_accept('extra = "shape"\nabove = "{params.target}"')))
    assert (spec.accept.target, spec.accept.below, spec.accept.alpha) == (3.5, False, 0.05)
    assert load_task(make_task(tmp_path / "c")).accept is None


@pytest.mark.parametrize("table, field, problem", [
    ('below = 2', "accept.extra", "is required"),
    ('extra = ""\nbelow = 2', "accept.extra", "must name a key"),
    ('extra = "shape"', "accept.below", "exactly one of them"),
    ('extra = "shape"\nbelow = 1\nabove = 2', "accept.below", "exactly one of them"),
    ('extra = "shape"\nbelow = "low"', "accept.below", "finite number"),
    ('extra = "shape"\nbelow = "{params.nothing}"', "accept.below", "uses {params.nothing}"),
    ('extra = "shape"\nbelow = true', "accept.below", "must be int or float or str"),
    ('extra = "shape"\nbelow = 2\nalpha = 0.9', "accept.alpha", "(0, 0.5]"),
    ('extra = "shape"\nbelow = 2\nlevel = 0.9', "accept.level", "is not known"),
])
def test_a_bad_accept_field_is_named(tmp_path, table, field, problem):
    with pytest.raises(TaskError, match=f"`{field}`") as err:
        load_task(make_task(tmp_path / "bowl", task_toml=with_accept(table)))
    assert problem in str(err.value)


# ---- [accept]: the test --------------------------------------------------------------------


def test_the_target_test_is_a_one_sided_one_sample_t_test():
    from scipy import stats

    losses = [3.270, 3.272, 3.271, 3.273]  # std ~0.0013, as in the speedrun records
    result = beyond_target(losses, 3.28, below=True, alpha=0.01, name="val_loss")
    assert result.p_value == pytest.approx(stats.ttest_1samp(losses, 3.28, alternative="less").pvalue)
    assert result.passed and "val_loss" in result.reason and "3.28" in result.reason
    near = beyond_target([3.27, 3.285, 3.279, 3.281], 3.28, below=True, alpha=0.01, name="val_loss")
    assert not near.passed and near.mean < 3.28  # below on average, but not at p < 0.01
    assert beyond_target([0.9, 0.95, 0.92], 0.8, below=False, alpha=0.01, name="acc").passed
    assert beyond_target([1.0, 1.0], 2.0, below=True, alpha=0.01, name="x").passed  # exact values
    assert not beyond_target([2.0, 2.0], 2.0, below=True, alpha=0.01, name="x").passed


# ---- [accept]: the judge, with real runs --------------------------------------------------

# The bowl's evaluator reports extra "shape" = |x[0]|; the minimum is at x = 1. Twice the steps
# at a larger step size end at the minimum (shape 1.0000); the other also moves x[0] by 0.1:
# still far better than the baseline, but its shape is over the target of 1.05.
BETTER = Proposal("Better", "A bigger step, twice the steps.", edits=(
    Edit("solution.py", "LR = 0.02\nSTEPS = 40", "LR = 0.05\nSTEPS = 80"),), origin={"kind": "idea", "idea": "lr"})
BETTER_BUT_OFF = Proposal("Better but off target", "The same, ending a little off the minimum.", edits=(
    Edit("solution.py", "LR = 0.02\nSTEPS = 40", "LR = 0.05\nSTEPS = 80"),
    Edit("solution.py", "    return x\n", "    return [x[0] + 0.1] + x[1:]\n"),
), origin={"kind": "idea", "idea": "off"})


def bowl_with_accept(dest: Path) -> Path:
    task = make_task(dest, task_toml=with_accept('extra = "shape"\nbelow = 1.05\nalpha = 0.01'))
    evaluate = task / "evaluate.py"
    evaluate.write_text(evaluate.read_text().replace('"audits": [', '"extra": {"shape": abs(x[0])},\n    "audits": ['))
    return task


async def decided(s, title):
    rows = await s.wait(
        lambda: s.rows("SELECT * FROM nodes WHERE title = ? AND status NOT IN ('queued', 'running', 'validating')",
                       (title,)), 60, f"node {title!r} to be decided")
    return rows[0]


async def test_a_better_node_that_misses_the_constraint_is_rejected(tmp_path, start_engine, script_proposals):
    script_proposals([BETTER_BUT_OFF], fallback=False)
    s = await start_engine(bowl_with_accept(tmp_path / "bowl"), threads=1)
    node = await decided(s, BETTER_BUT_OFF.title)
    verdict = (await s.rows("SELECT * FROM verdicts WHERE node_id = ?", (node["id"],)))[-1]
    details = json.loads(verdict["details"])
    assert node["status"] == "rejected", verdict["summary"]
    assert node["p_value"] < 0.05  # better than its parent on the metric, by the Welch test
    accept = details["accept"]
    assert accept["mean"] == pytest.approx(1.1, abs=0.01) and accept["p_value"] > 0.5
    assert f"mean shape {accept['mean']:.6g}" in verdict["summary"] and "target 1.05" in verdict["summary"]
    assert f"p = {accept['p_value']:.3g}" in verdict["summary"]
    assert accept["passed"] is False and accept["target"] == 1.05


async def test_a_better_node_that_meets_the_constraint_is_accepted(tmp_path, start_engine, script_proposals):
    script_proposals([BETTER], fallback=False)
    s = await start_engine(bowl_with_accept(tmp_path / "bowl"), threads=1)
    node = await decided(s, BETTER.title)
    verdict = (await s.rows("SELECT * FROM verdicts WHERE node_id = ?", (node["id"],)))[-1]
    assert node["status"] == "accepted", verdict["summary"]
    accept = json.loads(verdict["details"])["accept"]
    assert accept["passed"] and accept["mean"] < 1.05 and accept["p_value"] < 0.01
