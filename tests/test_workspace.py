"""The task repository: nodes are commits, threads are branches."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.errors import EditError, MergeConflict, WorkspaceError
from engine.models import Edit
from engine.workspace import ROOT_REF, Workspace

SOLUTION = "import math\n\nLR = 0.1\nSTEPS = 10\n\n\ndef train():\n    return LR * STEPS\n"
EDITABLE = ["solution.py"]


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    task = tmp_path / "quadratic"
    (task / "data").mkdir(parents=True)
    (task / "__pycache__").mkdir()
    (task / "solution.py").write_text(SOLUTION)
    (task / "run.py").write_text("import solution\nsolution.train()\n")
    (task / "data" / "train.txt").write_text("1 2 3\n")
    (task / "data" / "val.txt").write_text("secret\n")
    (task / "__pycache__" / "solution.cpython-311.pyc").write_bytes(b"\0")
    return task


@pytest.fixture()
def ws(tmp_path: Path, task_dir: Path) -> Workspace:
    return Workspace.open_or_create(tmp_path / "repo", task_dir, exclude=[str(task_dir / "data" / "val.txt")])


def lr_edit(old: str, new: str) -> Edit:
    return Edit("solution.py", f"LR = {old}\n", f"LR = {new}\n")


def test_baseline_imports_task_files_but_not_excluded_or_cache(ws: Workspace, tmp_path: Path,
                                                              task_dir: Path) -> None:
    assert ws.list_files(ws.root_sha) == ["data/train.txt", "run.py", "solution.py"]
    assert ws.read_file(ws.root_sha, "solution.py") == SOLUTION
    again = Workspace.open_or_create(tmp_path / "repo", task_dir)  # reused, not re-imported
    assert again.root_sha == ws.root_sha
    assert ws._git("log", "-1", "--format=%s", ROOT_REF).decode().strip() == "baseline: quadratic"


def test_read_missing_file_or_commit_is_a_workspace_error(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="file 'data/val.txt' does not exist"):
        ws.read_files(ws.root_sha, ["solution.py", "data/val.txt"])
    with pytest.raises(WorkspaceError, match="unknown commit 'deadbeef'"):
        ws.read_file("deadbeef", "solution.py")


def test_commit_edits_makes_a_child_commit_and_moves_the_branch(ws: Workspace) -> None:
    sha = ws.commit_edits(ws.root_sha, [lr_edit("0.1", "0.2")], EDITABLE, "lower lr", branch="t1")
    assert ws.read_file(sha, "solution.py") == SOLUTION.replace("LR = 0.1", "LR = 0.2")
    assert ws.read_file(sha, "run.py") == ws.read_file(ws.root_sha, "run.py")
    assert ws._git("rev-parse", f"{sha}^@").decode().split() == [ws.root_sha]
    assert ws.branch_sha("t1") == sha
    assert ws.is_ancestor(ws.root_sha, sha) and not ws.is_ancestor(sha, ws.root_sha)

    diff = ws.diff(ws.root_sha, sha)
    assert "-LR = 0.1\n+LR = 0.2\n" in diff and "\x1b[" not in diff


def test_commit_edits_refusals(ws: Workspace) -> None:
    with pytest.raises(EditError, match="protected file 'run.py'"):
        ws.commit_edits(ws.root_sha, [Edit("run.py", "import solution\n", "")], EDITABLE, "hack")
    with pytest.raises(EditError, match="unchanged"):
        ws.commit_edits(ws.root_sha, [lr_edit("0.1", "0.1")], EDITABLE, "noop")
    assert ws.branch_sha("t1") is None


def test_export_writes_the_commit_files(ws: Workspace, tmp_path: Path) -> None:
    sha = ws.commit_edits(ws.root_sha, [lr_edit("0.1", "0.3")], EDITABLE, "lr")
    dest = tmp_path / "out"
    dest.mkdir()
    ws.export(sha, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "data/train.txt", "run.py", "solution.py"]
    assert "LR = 0.3" in (dest / "solution.py").read_text()


def test_fork_from_an_older_node(ws: Workspace) -> None:
    first = ws.commit_edits(ws.root_sha, [lr_edit("0.1", "0.2")], EDITABLE, "a", branch="main")
    ws.commit_edits(first, [lr_edit("0.2", "0.3")], EDITABLE, "b", branch="main")
    ws.set_branch("fork", first)
    forked = ws.commit_edits(ws.branch_sha("fork"), [lr_edit("0.2", "0.4")], EDITABLE, "c", branch="fork")
    assert ws._git("rev-parse", f"{forked}^").decode().strip() == first
    assert "LR = 0.4" in ws.read_file(ws.branch_sha("fork"), "solution.py")
    assert "LR = 0.3" in ws.read_file(ws.branch_sha("main"), "solution.py")


def test_merge_combines_changes_on_different_lines(ws: Workspace) -> None:
    ours = ws.commit_edits(ws.root_sha, [lr_edit("0.1", "0.2")], EDITABLE, "lr", branch="a")
    double = Edit("solution.py", "    return LR * STEPS\n", "    return 2 * LR * STEPS\n")
    theirs = ws.commit_edits(ws.root_sha, [double], EDITABLE, "double", branch="b")
    merged = ws.merge(ours, theirs, "merge b into a", branch="a")
    text = ws.read_file(merged, "solution.py")
    assert "LR = 0.2\n" in text and "return 2 * LR * STEPS\n" in text
    assert ws._git("rev-parse", f"{merged}^@").decode().split() == [ours, theirs]
    assert ws.branch_sha("a") == merged
    with pytest.raises(WorkspaceError, match="nothing to merge"):
        ws.merge(merged, theirs, "again")


def test_conflicting_merge_names_the_file_and_leaves_refs(ws: Workspace) -> None:
    ours = ws.commit_edits(ws.root_sha, [lr_edit("0.1", "0.2")], EDITABLE, "x", branch="a")
    theirs = ws.commit_edits(ws.root_sha, [lr_edit("0.1", "0.5")], EDITABLE, "y", branch="b")
    with pytest.raises(MergeConflict, match="conflicts in: solution.py"):
        ws.merge(ours, theirs, "merge", branch="a")
    assert (ws.branch_sha("a"), ws.branch_sha("b")) == (ours, theirs)


def test_concurrent_commits_from_threads_all_succeed(ws: Workspace) -> None:
    def propose(i: int) -> str:
        return ws.commit_edits(ws.root_sha, [lr_edit("0.1", f"0.{i + 2}")], EDITABLE, f"try {i}",
                               branch=f"thread-{i}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        shas = list(pool.map(propose, range(8)))
    assert len(set(shas)) == 8
    for i, sha in enumerate(shas):
        assert ws.branch_sha(f"thread-{i}") == sha
        assert f"LR = 0.{i + 2}\n" in ws.read_file(sha, "solution.py")


def test_changes_to_the_task_folder_since_the_root_are_named(tmp_path):
    task = tmp_path / "task"
    (task / "data").mkdir(parents=True)
    (task / "run.py").write_text("print('harness')\n")
    (task / "solution.py").write_text("X = 1\n")
    (task / "data" / "val.bin").write_text("private")
    ws = Workspace.open_or_create(tmp_path / "repo", task, exclude=["data"])
    assert ws.changed_since_root(task, ["data"]) == []
    (task / "data" / "val.bin").write_text("private, changed")  # excluded: not the repository's
    assert ws.changed_since_root(task, ["data"]) == []
    (task / "run.py").write_text("print('a fixed harness')\n")
    (task / "extra.py").write_text("")
    assert ws.changed_since_root(task, ["data"]) == ["extra.py", "run.py"]
