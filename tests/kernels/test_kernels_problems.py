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


def _check(p, solution, shape, seed=1):
    inputs = p.make_inputs(shape, generator(seed, "cpu"), "cpu", torch.float32)
    outs, refs = as_tuple(solution(*inputs)), as_tuple(p.reference(*[x.clone() for x in inputs]))
    for o, r in zip(outs, refs):
        assert o.shape == r.shape and checks.compare(o, r, p.tolerance(r.dtype, "cpu"), str(shape)) == []


def test_the_argmax_two_stage_path_is_correct_under_the_interpreter(load_solution):
    """The timed rows are long enough for segments and a combine; the CPU shapes are not:
    small segments make them take that path (a padded segment count included)."""
    p, module = problems()["argmax"], load_solution(SOLUTIONS / "argmax.py")
    module.LOG2_BLOCK, module.LOG2_SEGMENT = 5, 6  # 300 columns: 5 segments, padded to 8
    for shape in ({"M": 13, "N": 300}, {"M": 3, "N": 256}, {"M": 2, "N": 65}):
        _check(p, module.solution, shape)
    x = torch.zeros(2, 300)
    x[0, [70, 7, 299]] = 5.0  # ties across segments: the first index wins
    x[1, [128, 64]] = 3.0
    assert module.solution(x).tolist() == [7, 64]


def test_the_attention_gpu_path_is_correct_under_the_interpreter(load_solution):
    """The GPU's loop (runtime bounds: unmasked blocks left of the diagonal, masked ones on
    it) cannot run in the interpreter as written; with `range` taking the interpreter's
    scalars it does, and must agree with the reference, block sizes either way round."""
    import builtins

    import numpy as np
    import triton

    p, module = problems()["gqa_attention"], load_solution(SOLUTIONS / "gqa_attention.py")

    def scalar(x):
        return int(np.asarray(x.handle.data).reshape(-1)[0]) if hasattr(x, "handle") else int(x)

    module._attention.fn.__globals__["range"] = lambda *a: builtins.range(*map(scalar, a))
    for shape, (bm, bn) in (({"B": 1, "Hq": 4, "Hkv": 2, "T": 77, "D": 16}, (32, 16)),
                            ({"B": 1, "Hq": 2, "Hkv": 1, "T": 64, "D": 16}, (16, 32)),
                            ({"B": 2, "Hq": 4, "Hkv": 1, "T": 130, "D": 32}, (64, 32))):
        q, k, v = p.make_inputs(shape, generator(3, "cpu"), "cpu", torch.float32)
        o = torch.empty_like(q)
        b, hq, t, d = q.shape
        module._attention[(triton.cdiv(t, bm), b * hq)](
            q, k, v, o, 1.4426950408889634 / d ** 0.5, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *o.stride()[:3], T=t, HQ=hq, GROUP=hq // k.shape[1], D=d, BM=bm, BN=bn, RUNTIME_BOUND=True)
        assert checks.compare(o, p.reference(q, k, v), p.tolerance(torch.float32, "cpu"), str(shape)) == []


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
            # the CPU profile's number is not a SOL score and is not called one
            want = "sol_score" if profile == "gpu" else "cpu_interpreter_score"
            assert task.metric_name == want and task.direction.value == "maximize"
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
    fast = {"main_ms": [0.001] * 4, "total_ms": [0.001] * 4, "host_ms": [0.05] * 4,
            "hidden": [True, True, False, True]}
    got = {"candidate": fast, "null": {"main_ms": [0.0] * 4, "total_ms": [0.0] * 4, "host_ms": [0.04] * 4},
           "eager": {"main_ms": [0.2] * 4, "total_ms": [0.2] * 4, "host_ms": [0.3] * 4}}
    row = ev._score_shape({"M": 4096, "N": 4096}, got, {"candidate": 0.2, "null": 0.16},
                          {"flops": 1e15, "bandwidth": 3e12})
    assert row["S"] == 1.0 and row["T_k_ms"] < row["T_SOL_ms"]
    assert not ev.report.audits["sol.below_sol"]["ok"]
    assert not ev.report.audits["sol.speedup"]["ok"]  # 200x the baseline: flagged for a person
    assert math.isfinite(row["speedup"])
    assert row["launch_hidden"] == {"candidate": 0.75, "eager": None}  # the eager reply had no flags


def test_every_playbook_idea_applies_to_the_shipped_solution():
    """A variant's SEARCH text must be in the solution (once) when its edits are applied in
    order, or the search proposer's idea is refused on every try."""
    import tomllib

    for path in sorted(tasks.VARIANTS.glob("*.toml")):
        code = (SOLUTIONS / f"{path.stem}.py").read_text()
        for idea in tomllib.loads(path.read_text())["idea"]:
            text = code
            for edit in idea["edit"]:
                assert text.count(edit["search"]) == 1, f"{path.name}: idea {idea['id']} does not apply"
                text = text.replace(edit["search"], edit["replace"])
