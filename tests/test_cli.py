"""The `threadlab` command line, run as users run it: a real session with a research budget,
then status, show and export on its database; and the one-line errors."""

from __future__ import annotations

import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.workspace import Workspace

from tests.conftest import BOWL, assert_clean_error, make_task, threadlab


@dataclass
class Session:
    db: Path
    task: Path
    result: object  # the CompletedProcess of `threadlab run`

    def rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def best_accepted(self) -> sqlite3.Row:
        return self.rows("SELECT * FROM nodes WHERE status = 'accepted' ORDER BY metric LIMIT 1")[0]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    """One 15-second research session on a copy of the bowl, shared by this module's tests."""
    root = tmp_path_factory.mktemp("cli")
    task = make_task(root / "bowl")
    db = root / "state.db"
    result = threadlab("run", task, "--no-tui", "--threads", "2", "--budget", "15s", "--db", db, cwd=root, timeout=120)
    return Session(db, task, result)


def test_run_with_a_budget_returns_when_the_engine_stops(session):
    r = session.result
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stdout + r.stderr
    assert re.search(r"engine started \(pid \d+\) on bowl \[smoke\]", r.stdout)
    assert "engine stopped" in r.stdout
    assert session.rows("SELECT * FROM engine_lock") == []
    assert len(session.rows("SELECT id FROM runs WHERE status = 'done'")) >= 20
    assert len(session.rows("SELECT id FROM nodes WHERE status = 'accepted'")) >= 1
    assert session.rows("SELECT elapsed_s FROM session")[0]["elapsed_s"] >= 15
    events = [e["message"] for e in session.rows("SELECT message FROM events")]
    assert any("research time of 15s spent" in m for m in events)
    assert events[-1] == "engine stopped: research time spent"
    # Research time spent means: nothing new starts, but started validations are finished.
    assert session.rows("SELECT id FROM runs WHERE status = 'running'") == []
    assert session.rows("SELECT id, status FROM nodes WHERE status = 'validating'") == []


def test_status_shows_the_best_metric_and_the_accepted_count(session):
    r = threadlab("status", "--db", session.db)
    assert r.returncode == 0, r.stderr
    best = session.best_accepted()
    baseline = session.rows("SELECT metric FROM nodes WHERE status = 'baseline'")[0]["metric"]
    assert best["metric"] < baseline
    accepted = len(session.rows("SELECT id FROM nodes WHERE status = 'accepted'"))
    assert "engine: stopped" in r.stdout
    assert f"best {best['metric']:.6g} at #{best['id']}" in r.stdout, r.stdout
    assert f"baseline {baseline:.6g}" in r.stdout
    assert f"accepted {accepted}" in r.stdout


def test_show_prints_the_diff_runs_and_verdict_of_an_accepted_node(session):
    node = session.best_accepted()
    r = threadlab("show", node["id"], "--db", session.db)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"node #{node['id']} {node['title']}  [accepted]" in out
    assert re.search(r"p = \d", out) and f"p = {node['p_value']:.3g}" in out
    assert "verdict: accepted" in out
    added = [ln for ln in out.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    removed = [ln for ln in out.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    assert added and removed, out
    runs = session.rows("SELECT id, purpose FROM runs WHERE node_id = ? AND status = 'done'", (node["id"],))
    assert len(runs) == 5
    for run in runs:
        assert re.search(rf"^\W*{run['id']}\W.*{run['purpose']}", out, re.MULTILINE), (run["id"], out)


def test_export_writes_the_nodes_files(session, tmp_path):
    node = session.best_accepted()
    dest = tmp_path / "out"
    r = threadlab("export", node["id"], dest, "--db", session.db)
    assert r.returncode == 0, r.stderr
    repo = session.rows("SELECT repo_path FROM tasks")[0]["repo_path"]
    expected = Workspace(Path(repo), "").read_file(node["commit_sha"], "solution.py")
    assert (dest / "solution.py").read_text() == expected
    assert expected != (BOWL / "solution.py").read_text()
    assert (dest / "evaluate.py").read_text() == (BOWL / "evaluate.py").read_text()

    again = threadlab("export", node["id"], dest, "--db", session.db)
    assert_clean_error(again, "not empty")
    assert (dest / "solution.py").read_text() == expected
    missing = threadlab("export", "99999", tmp_path / "other", "--db", session.db)
    assert_clean_error(missing, "no node 99999")


def test_show_of_a_missing_node_is_one_error_line(session):
    assert_clean_error(threadlab("show", "99999", "--db", session.db), "no node 99999")


def test_commands_without_an_engine_say_so(session):
    assert_clean_error(threadlab("pin", "1", "--db", session.db), "no engine is running")
    r = threadlab("stop", "--db", session.db)
    assert r.returncode == 0 and "no engine is running" in r.stdout


# ---- bad input --------------------------------------------------------------------------------


def test_a_malformed_task_toml_is_one_error_naming_the_field(tmp_path):
    task = make_task(tmp_path / "bad", task_toml=lambda t: t.replace('direction = "minimize"', 'direction = "lower"'))
    db = tmp_path / "state.db"
    r = threadlab("run", task, "--no-tui", "--db", db)
    line = assert_clean_error(r, r"`metric\.direction`")
    assert "'lower'" in line and "minimize" in line and "maximize" in line
    assert not db.exists(), "a bad task must not create a session"


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace('editable = ["solution.py"]', 'editable = ["nope.py"]'), "editable"),
    (lambda t: t.replace("seconds = 10", "seconds = -1"), r"budget\.seconds"),
    (lambda t: t.replace("validate = [1, 2, 3, 4]", "validate = []"), r"seeds\.validate"),
    (lambda t: t + "\nsurprise = 1\n", "surprise"),
    (lambda t: t.replace('name = "loss"', "name = "), "TOML"),
])
def test_other_bad_task_tomls_name_their_field(tmp_path, edit, field):
    task = make_task(tmp_path / "bad", task_toml=edit)
    assert_clean_error(threadlab("run", task, "--no-tui", "--db", tmp_path / "state.db"), field)


def test_an_unknown_task_is_one_clear_error(tmp_path):
    r = threadlab("run", "no-such-task", "--no-tui", "--db", tmp_path / "state.db", cwd=tmp_path)
    assert_clean_error(r, "no task named 'no-such-task'")
    assert not (tmp_path / "state.db").exists()


def test_a_bad_budget_is_one_clear_error(tmp_path, bowl):
    r = threadlab("run", bowl, "--no-tui", "--budget", "soon", "--db", tmp_path / "state.db")
    assert_clean_error(r, "cannot read duration 'soon'")


def test_a_folder_without_task_toml_is_not_a_task(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(BOWL / "solution.py", folder)
    assert_clean_error(threadlab("run", folder, "--no-tui", "--db", tmp_path / "state.db"), "no task named")
