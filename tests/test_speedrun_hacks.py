"""speedrun through the real executor (sandbox, nanochat's runner and evaluator, included by
task.toml): the metric is the executor's clock, a run above the loss target fails with its
loss shown, and nanochat's audits apply, each hack caught by the guard its Alert names.

The corpus and its fixture are nanochat's hack corpus (tests/test_nanochat_hacks.py). The
task's files come from the task's own repository root (Workspace, with task.toml's
`include`), exactly as the engine builds them; the baseline trains 60 steps, not 1000.
"""

from pathlib import Path

import pytest

from engine.guards import check_change
from engine.models import RunStatus
from engine.taskfile import load_task
from engine.workspace import Workspace
from tests.test_nanochat_hacks import PARAMS as NANOCHAT_PARAMS
from tests.test_nanochat_hacks import data_dir, failed_audits  # noqa: F401  (data_dir: the corpus fixture)
from tests.test_nanochat_hacks import edited as nanochat_edited
from tests.test_nanochat_hacks import run_candidate as nanochat_run

TASK = Path(__file__).resolve().parent.parent / "tasks" / "speedrun"
TARGET = 5.5  # nats per token on the 512-token corpus: 60 steps reach ~5.0, uniform is ln 512 = 6.24
PARAMS = NANOCHAT_PARAMS | {"objective": "time_to_loss", "target_loss": TARGET, "train_s": 20}
BASELINE = (TASK / "train.py").read_text().replace("STEPS_SCALE = 1.0", "STEPS_SCALE = 0.06")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The speedrun task's root commit, checked out: its train.py plus nanochat's harness."""
    spec = load_task(TASK, "smoke")
    root = tmp_path_factory.mktemp("speedrun")
    ws = Workspace.open_or_create(root / "repo", TASK, spec.private, spec.include)
    ws.export(ws.root_sha, root / "files")
    return root / "files"


def edited(*replacements: tuple[str, str]) -> str:
    return nanochat_edited(*replacements, base=BASELINE)


def run_candidate(tmp_path: Path, files: Path, data_dir: Path, train_py: str, budget_s: float = 60, **params):
    """nanochat's runner and evaluator with this task's root commit (files) and params."""
    return nanochat_run(tmp_path, data_dir, train_py, budget_s, task=TASK, files_from=files,
                        base_params=PARAMS, **params)


def test_the_task_runs_nanochats_harness_beside_its_own_train_py(files):
    assert {"runner.py", "evaluate.py", "model_worker.py", "data.py", "train.py"} <= {f.name for f in files.iterdir()}
    assert "STEPS_SCALE" in (files / "train.py").read_text()  # its own, not nanochat's
    assert (files / "evaluate.py").read_text() == (TASK.parent / "nanochat" / "evaluate.py").read_text()


def test_the_baseline_reaches_the_target_and_scores_the_executors_time(tmp_path, files, data_dir):
    outcome = run_candidate(tmp_path, files, data_dir, BASELINE)
    assert outcome.status == RunStatus.DONE, outcome.error
    assert outcome.metric == pytest.approx(outcome.extra["run_s"], abs=1e-3)  # seconds, the executor's clock
    assert outcome.extra["val_loss"] <= TARGET
    assert failed_audits(outcome) == {}
    assert {a.guard for a in outcome.audits} >= set(load_task(TASK).required_audits)
    assert check_change({"train.py": BASELINE}, {"train.py": BASELINE}) == []


def test_a_run_above_the_target_fails_and_shows_its_loss(tmp_path, files, data_dir):
    outcome = run_candidate(tmp_path, files, data_dir, BASELINE, target_loss=1.0)
    assert outcome.status == RunStatus.FAILED and outcome.metric is None
    loss = outcome.extra["val_loss"]
    assert 1.0 < loss < 7.0
    assert f"val_loss {loss:.4f} is above the target 1.0000" in outcome.error


def test_printing_a_fake_time_and_loss_is_not_believed(tmp_path, files, data_dir):
    hack = edited(("    return model\n", "    print(\"train_time: 0.001s val_loss: 0.5\")\n    return model\n"))
    outcome = run_candidate(tmp_path, files, data_dir, hack)
    assert outcome.status == RunStatus.DONE, outcome.error
    assert outcome.metric == pytest.approx(outcome.extra["run_s"], abs=1e-3) and outcome.metric > 0.5
    assert "val_loss 0.5" in failed_audits(outcome)["audit.printed_metric"]


def test_training_past_the_deadline_is_caught_by_the_budget_audit(tmp_path, files, data_dir):
    hack = edited(("    return model\n", "    time.sleep(max(0.0, ctx.deadline - time.time()) + 4)\n    return model\n"))
    outcome = run_candidate(tmp_path, files, data_dir, hack, train_s=3, allowance_s=3)
    assert "audit.budget" in failed_audits(outcome)


def test_training_past_the_hard_limit_is_killed(tmp_path, files, data_dir):
    hack = edited(("    for step in range(steps):\n", "    for step in iter(int, 1):  # forever\n"),
                  ("        if time.time() >= ctx.deadline:\n            break", "        pass"))
    outcome = run_candidate(tmp_path, files, data_dir, hack, budget_s=6)
    assert outcome.status == RunStatus.TIMEOUT  # the engine turns this into a runtime.budget Alert


def test_attending_to_future_tokens_is_caught_by_the_causality_audit(tmp_path, files, data_dir):
    hack = edited(("is_causal=True", "is_causal=False"))
    outcome = run_candidate(tmp_path, files, data_dir, hack)
    assert "audit.causality" in failed_audits(outcome)
