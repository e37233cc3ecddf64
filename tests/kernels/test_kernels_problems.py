"""The suite itself: every shipped Triton solution is correct under the interpreter, the
static scan finds nothing in them, the task folders match the suite, the SOL score."""

import math

import pytest
import torch

from kernels import checks, sol, static, tasks
from kernels.problem import as_tuple, generator, problems

from .conftest import SOLUTIONS

NAMES = sorted(problems())


def test_the_suite_has_at_least_twelve_problems_each_with_shapes_and_counts():
    assert len(NAMES) >= 12
    for p in problems().values():
        assert p.cpu_shapes and p.gpu_timed and set(map(str, p.gpu_timed)) <= set(map(str, p.gpu_shapes)), p.name
        assert len(p.gpu_shapes) >= 3, f"{p.name}: a realistic, an odd and a tail shape"
        assert all(p.flops(s) > 0 for s in p.gpu_shapes)
        assert (SOLUTIONS / f"{p.name}.py").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_the_shipped_solution_is_correct_under_the_interpreter(name, load_solution):
    p = problems()[name]
    solution = load_solution(SOLUTIONS / f"{name}.py").solution
    for shape in p.cpu_shapes:
        for seed in (1, 2):
            inputs = p.make_inputs(shape, generator(seed, "cpu"), "cpu", torch.float32)
            pristine = [x.clone() for x in inputs]
            outs, refs = as_tuple(solution(*inputs)), as_tuple(p.reference(*pristine))
            assert len(outs) == len(refs)
            for o, r in zip(outs, refs):
                assert type(o) is torch.Tensor and o.shape == r.shape and o.dtype == r.dtype
                assert checks.compare(o, r, p.tolerance(r.dtype, "cpu"), f"{name} {shape}") == []
            assert all(checks.unchanged(a, b) for a, b in zip(inputs, pristine))


@pytest.mark.parametrize("name", NAMES)
def test_the_static_scan_finds_nothing_in_the_shipped_solution(name):
    p = problems()[name]
    assert static.scan((SOLUTIONS / f"{name}.py").read_text(), p.library_ops) == []


def test_the_static_scan_names_its_findings():
    src = ("import threading, os\nimport torch.nn.functional as F\nimport triton.language as tl\n"
           "def solution(x, w):\n    y = tl.max(x)\n    open('/etc/passwd')\n    torch.cuda.Stream()\n"
           "    os.environ['THREADLAB_RESULT_FD']\n    return F.rms_norm(x, (4,), w) @ w\n")
    found = {f.check for f in static.scan(src, problems()["rmsnorm"].library_ops + ("torch.matmul",))}
    assert found >= {"static.threads", "static.file_access", "static.side_stream", "static.result_channel",
                     "static.library_op"}
    assert not any("tl.max" in f.message for f in static.scan(src, ("torch.max",)))  # a kernel op, not torch's


def test_the_task_folders_are_what_the_generator_writes():
    for p in problems().values():
        folder = tasks.tasks_dir() / f"kernel-{p.name}"
        for fname, text in tasks.render(p).items():
            assert (folder / fname).read_text() == text, f"{folder / fname} is stale: run python -m kernels.tasks"


def test_the_task_folders_load_with_their_playbooks():
    from engine.playbook import load_playbook
    from engine.taskfile import load_task

    for p in problems().values():
        for profile in ("cpu", "gpu"):
            task = load_task(tasks.tasks_dir() / f"kernel-{p.name}", profile)
            assert task.metric_name == "sol_score" and task.direction.value == "maximize"
        playbook = load_playbook(task)
        code = {"solution.py": (task.path / "solution.py").read_text()}
        assert playbook.knobs and all(k.current(code) is not None for k in playbook.knobs)


def test_sol_score_matches_sol_execbench_and_is_clamped():
    assert sol.score(t_k=2.0, t_b=2.0, t_sol=1.0) == pytest.approx(0.5)  # the baseline's speed
    assert sol.score(t_k=1.0, t_b=2.0, t_sol=1.0) == pytest.approx(1.0)  # the speed of light
    assert sol.score(t_k=1.5, t_b=3.0, t_sol=1.0) == pytest.approx(2 / 2.5)
    assert sol.score(t_k=0.5, t_b=2.0, t_sol=1.0) == 1.0  # below the bound: clamped (and audited)
    assert sol.score(t_k=1000.0, t_b=2.0, t_sol=1.0) == pytest.approx(1 / 1000, rel=1e-2)
    assert 0.0 <= sol.score(t_k=3.0, t_b=0.5, t_sol=1.0) <= 1.0  # a bound above the baseline: clamped
    assert sol.sol_ms(flops=2e12, nbytes=1e9, peaks={"flops": 1e15, "bandwidth": 2e12}) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        sol.score(0.0, 1.0, 0.1)


def test_a_time_below_the_speed_of_light_is_audited_not_celebrated():
    from kernels.evaluate import Config, Evaluation

    ev = Evaluation(problems()["rmsnorm"], "unused.py", Config(mode="gpu"))
    ev.device = "cpu"  # only the bookkeeping runs here, no GPU
    fast = {"main_ms": [0.001] * 4, "total_ms": [0.001] * 4, "host_ms": [0.05] * 4}
    got = {"candidate": fast, "null": {"main_ms": [0.0] * 4, "total_ms": [0.0] * 4, "host_ms": [0.04] * 4},
           "eager": {"main_ms": [0.2] * 4, "total_ms": [0.2] * 4, "host_ms": [0.3] * 4}}
    row = ev._score_shape({"M": 4096, "N": 4096}, got, {"candidate": 0.2, "null": 0.16},
                          {"flops": 1e15, "bandwidth": 3e12})
    assert row["S"] == 1.0 and row["T_k_ms"] < row["T_SOL_ms"]
    assert not ev.report.audits["sol.below_sol"]["ok"]
    assert not ev.report.audits["sol.speedup"]["ok"]  # 200x the baseline: flagged for a person
    assert math.isfinite(row["speedup"])
