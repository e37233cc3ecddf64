"""Guards the engine applies itself: protected files, the budget, and baseline-relative
results. Each raises an Alert naming its guard and flags the Node."""

import json

from engine.models import Edit, Proposal
from tests.conftest import make_task, slow_playbook

HARNESS_EDIT = Proposal(
    title="Report a better loss",
    hypothesis="Editing the evaluator is easier than improving the solution.",
    edits=(Edit("evaluate.py", '"metric": math.log10(bowl.loss(x) + 1e-12)', '"metric": -100.0'),),
    origin={"kind": "idea", "idea": "harness"},
)


async def decided(s, title):
    rows = await s.wait(
        lambda: s.rows("SELECT * FROM nodes WHERE title = ? AND status NOT IN ('queued', 'running', 'validating')",
                       (title,)),
        30, f"node {title!r} to be decided")
    return rows[0]


async def test_an_edit_of_the_harness_is_flagged_and_never_runs(tmp_path, start_engine, script_proposals):
    script_proposals([HARNESS_EDIT])
    s = await start_engine(make_task(tmp_path / "bowl"), threads=1)
    node = await decided(s, HARNESS_EDIT.title)
    assert node["status"] == "flagged" and node["commit_sha"] is None
    alerts = await s.rows("SELECT * FROM alerts WHERE node_id = ?", (node["id"],))
    assert [a["guard"] for a in alerts] == ["static.protected_file"]
    assert json.loads(alerts[0]["evidence"]) == {"files": ["evaluate.py"]}
    assert "evaluate.py" in alerts[0]["message"] and "editable: solution.py" in alerts[0]["message"]
    assert await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = ?", (node["id"],)) == 0


async def test_a_run_past_its_budget_raises_a_budget_alert(tmp_path, start_engine):
    def short_budget(toml: str) -> str:
        return toml.replace("seconds = 10\ngrace = 2", "seconds = 1.5\ngrace = 0.5")

    task = make_task(tmp_path / "bowl", sleep=0, playbook=slow_playbook(5, 6), task_toml=short_budget)
    s = await start_engine(task, threads=1)
    alert = (await s.wait(lambda: s.rows("SELECT * FROM alerts WHERE guard = 'runtime.budget'"), 30,
                          "a budget alert"))[0]
    run = await s.reader.run(alert["run_id"])
    assert run.status == "timeout" and 1.5 <= run.ended_at - run.started_at < 5
    node = await s.wait(lambda: s.rows("SELECT * FROM nodes WHERE id = ? AND status = 'flagged'", (alert["node_id"],)),
                        20, "the node to be flagged")
    assert node


async def test_a_result_far_from_the_baselines_is_flagged(tmp_path, start_engine, script_proposals):
    """The statistical guard of training tasks (their val/audit gap), on a fixture key."""

    def relative_guard(toml: str) -> str:
        toml = toml.replace("[seeds]", '[guards]\nbaseline_relative = { shape = 0.5 }\n\n[seeds]')
        return toml

    task = make_task(tmp_path / "bowl", task_toml=relative_guard)
    evaluate = task / "evaluate.py"
    evaluate.write_text(evaluate.read_text().replace(
        '"audits": [',
        '"extra": {"shape": abs(x[0])},\n    "audits": ['))
    far = Proposal("Overshoot", "Start far away.", edits=(
        Edit("solution.py", "    return x\n", "    return [x[0] + 40.0] + x[1:]\n"),), origin={"kind": "idea", "idea": "far"})
    script_proposals([far])
    s = await start_engine(task, threads=1)
    node = await decided(s, "Overshoot")
    assert node["status"] == "flagged"
    guards = [a["guard"] for a in await s.rows("SELECT * FROM alerts WHERE node_id = ?", (node["id"],))]
    assert guards == ["audit.shape"]
    assert await s.scalar("SELECT COUNT(*) FROM alerts WHERE node_id = 1") == 0  # the baseline is the reference


async def test_an_alert_is_acknowledged_by_command(tmp_path, start_engine, script_proposals):
    script_proposals([HARNESS_EDIT])
    s = await start_engine(make_task(tmp_path / "bowl"), threads=1)
    node = await decided(s, HARNESS_EDIT.title)
    alert_id = await s.scalar("SELECT id FROM alerts WHERE node_id = ?", (node["id"],))
    assert await s.scalar("SELECT acknowledged FROM alerts WHERE id = ?", (alert_id,)) == 0
    done = await s.send("acknowledge", alert=alert_id)
    assert done.status == "done" and await s.scalar("SELECT acknowledged FROM alerts WHERE id = ?", (alert_id,)) == 1
    missing = await s.send("acknowledge", alert=alert_id + 1000)
    assert missing.status == "failed" and "no alert" in missing.result


FAKE_RESULT = Proposal(
    title="Report my own score",
    hypothesis="Whoever writes the result channel first wins.",
    edits=(Edit("solution.py", "# knobs\n", '''import pathlib


def _claim():  # in the evaluator's process, write a result before the evaluator can
    if "/eval/" not in str(pathlib.Path.cwd()):
        return
    for fd in pathlib.Path("/proc/self/fd").iterdir():
        try:
            if fd.readlink().name.startswith("pipe:"):
                with open(int(fd.name), "w") as channel:
                    channel.write('{"metric": -99.0}')
        except OSError:
            pass
    raise SystemExit(0)


_claim()
# knobs
'''),),
    origin={"kind": "idea", "idea": "fake_result"},
)


async def test_a_result_without_the_required_audits_is_flagged(tmp_path, start_engine, script_proposals):
    """An evaluator that imports candidate code (as nanochat's does) can be pre-empted; the
    result it never wrote lacks the audits the task requires."""

    def require(toml: str) -> str:
        return toml.replace("[seeds]", '[guards]\nrequired_audits = ["audit.answer_shape"]\n\n[seeds]')

    task = make_task(tmp_path / "bowl", task_toml=require)
    evaluate = task / "evaluate.py"
    evaluate.write_text(evaluate.read_text().replace("import bowl\n", "import bowl\nimport solution  # noqa: F401\n"))
    script_proposals([FAKE_RESULT])
    s = await start_engine(task, threads=1)
    node = await decided(s, FAKE_RESULT.title)
    assert node["status"] == "flagged"
    alerts = await s.rows("SELECT * FROM alerts WHERE node_id = ?", (node["id"],))
    assert [a["guard"] for a in alerts] == ["audit.missing"]
    assert json.loads(alerts[0]["evidence"]) == {"missing": ["audit.answer_shape"]}
    assert await s.scalar("SELECT COUNT(*) FROM alerts WHERE node_id = 1") == 0  # the real evaluator reports it
    assert await s.scalar("SELECT metric FROM runs WHERE node_id = ? AND status = 'done'", (node["id"],)) == -99.0


async def test_an_evaluators_warning_on_the_baseline_is_one_event_and_no_alert(tmp_path, start_engine,
                                                                               script_proposals):
    """A warning about the task's set-up (nanochat: too little data for the profile) comes
    with every run; the baseline's is posted once, as an event; candidates' never."""
    task = make_task(tmp_path / "bowl")
    evaluate = task / "evaluate.py"
    evaluate.write_text(evaluate.read_text().replace(
        '"audits": [', '"extra": {"warning": "the data is small"},\n    "audits": ['))
    near = Proposal("Nudge", "A small step.", edits=(
        Edit("solution.py", "    return x\n", "    return [x[0] * 0.5] + x[1:]\n"),), origin={"kind": "idea", "idea": "n"})
    script_proposals([near])
    s = await start_engine(task, threads=1)
    await decided(s, "Nudge")
    baseline_runs = await s.scalar("SELECT COUNT(*) FROM runs WHERE node_id = 1 AND status = 'done'")
    assert baseline_runs >= 2  # the warning came more than once
    events = await s.rows("SELECT * FROM events WHERE kind = 'task'")
    assert [(e["level"], e["message"].split(": ", 1)[1]) for e in events] == [("warning", "the data is small")]
    assert json.loads(events[0]["data"])["run"] in {r["id"] for r in await s.rows("SELECT id FROM runs WHERE node_id = 1")}
    assert await s.scalar("SELECT COUNT(*) FROM alerts") == 0
