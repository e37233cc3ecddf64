"""The evaluator on real worker processes: shipped solutions pass every check, bad
candidates get one clear error, and the task's entry point writes the executor's result."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from kernels.evaluate import ALL_CHECKS, evaluate
from kernels.problem import problems

from .conftest import CPU_QUICK, GPU, GPU_QUICK, ROOT, SOLUTIONS


@pytest.mark.parametrize("name", sorted(problems()))
def test_every_shipped_solution_passes_every_check_on_the_cpu(name):
    cfg = CPU_QUICK if name in ("rmsnorm", "gemm") else replace(CPU_QUICK, time_it=False)
    report = evaluate(name, str(SOLUTIONS / f"{name}.py"), cfg)
    assert report.error == "" and report.failed() == {}
    assert set(report.audits) == set(ALL_CHECKS)
    if cfg.time_it:
        (row,) = report.extra["shapes"]
        assert 0.0 <= report.metric <= 1.0 and row["T_k_ms"] > 0 and row["T_b_ms"] > 0
        assert report.extra["metric_kind"] == "cpu_interpreter_score"  # never passed off as a GPU score


@pytest.mark.skipif(not GPU, reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(problems()))
def test_every_shipped_solution_passes_every_check_on_the_gpu(name):
    report = evaluate(name, str(SOLUTIONS / f"{name}.py"), GPU_QUICK)
    assert report.error == "" and report.failed() == {}
    assert 0.0 <= report.metric <= 1.0


def _candidate(tmp_path, body: str):
    path = tmp_path / "solution.py"
    path.write_text(body)
    return str(path)


def test_a_candidate_that_does_not_import_gets_one_clear_error(tmp_path):
    report = evaluate("rmsnorm", _candidate(tmp_path, "def solution(x, w):\n    return x +\n"), CPU_QUICK)
    assert report.metric is None
    assert report.error.startswith("rmsnorm: the candidate does not import: SyntaxError")


def test_a_candidate_without_a_solution_function_is_refused(tmp_path):
    report = evaluate("rmsnorm", _candidate(tmp_path, "def kernel(x, w):\n    return x\n"), CPU_QUICK)
    assert "defines no callable `solution`" in report.error


def test_a_candidate_that_raises_names_the_shape_and_the_error(tmp_path):
    body = "def solution(x, w):\n    raise ValueError('block too large')\n"
    report = evaluate("rmsnorm", _candidate(tmp_path, body), CPU_QUICK)
    assert report.metric is None
    assert report.error.startswith("rmsnorm: the candidate raised on shape M37xN200 round 1: ValueError: block too large")


def test_a_candidate_that_returns_garbage_fails_the_type_check(tmp_path):
    report = evaluate("rmsnorm", _candidate(tmp_path, "def solution(x, w):\n    return [1, 2, 3]\n"), CPU_QUICK)
    assert report.metric is None
    assert "not exactly torch.Tensor" in report.failed()["correct.type"]


def test_a_candidate_that_hangs_is_stopped_with_a_clear_error(tmp_path):
    body = "import time\n\ndef solution(x, w):\n    time.sleep(3600)\n"
    report = evaluate("rmsnorm", _candidate(tmp_path, body), replace(CPU_QUICK, call_timeout_s=3))
    assert report.metric is None and "timed out" in report.error


def _run_task_evaluator(workdir, env_extra=None):
    """`python -m kernels.evaluate` as the executor runs it: the result on THREADLAB_RESULT_FD."""
    r, w = os.pipe()
    env = {**os.environ, "THREADLAB_RESULT_FD": str(w),
           "THREADLAB_PARAMS": json.dumps({"mode": "cpu", "iters": 4, "warmup": 1, "interleave": 2}),
           **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "kernels.evaluate", "--problem", "rmsnorm", "--solution",
                           "solution.py", "--mode", "cpu"], cwd=workdir, env=env, pass_fds=(w,),
                          capture_output=True, text=True, timeout=300)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    return proc, json.loads(data)


def test_the_task_entry_point_writes_the_executors_result(tmp_path):
    (tmp_path / "solution.py").write_text((ROOT / "tasks" / "kernel-rmsnorm" / "solution.py").read_text())
    proc, result = _run_task_evaluator(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 0.0 <= result["metric"] <= 1.0
    assert {a["guard"] for a in result["audits"]} == set(ALL_CHECKS)
    assert all(a["ok"] for a in result["audits"])


def test_the_gpu_gate_lets_checks_overlap_and_times_alone():
    """Shared sections overlap; an exclusive one waits for them, and once it waits no new
    shared section starts (the bench's timing never runs beside another evaluation)."""
    import threading

    from kernels.evaluate import GpuGate

    gate = GpuGate()
    events = {k: threading.Event() for k in ("a_in", "a_out", "b_in", "b_out", "c_in", "c_out")}

    def hold(kind: str, name: str) -> None:
        with getattr(gate, kind)():
            events[f"{name}_in"].set()
            events[f"{name}_out"].wait(30)

    a = threading.Thread(target=hold, args=("shared", "a"))
    a.start()
    assert events["a_in"].wait(30)
    b = threading.Thread(target=hold, args=("exclusive", "b"))
    b.start()
    with gate._cond:  # b is waiting before c asks
        assert gate._cond.wait_for(lambda: gate._waiting == 1, 30)
    c = threading.Thread(target=hold, args=("shared", "c"))
    c.start()
    assert not events["b_in"].wait(0.2) and not events["c_in"].is_set()
    events["a_out"].set()
    assert events["b_in"].wait(30) and not events["c_in"].wait(0.2)
    events["b_out"].set()
    assert events["c_in"].wait(30)
    events["c_out"].set()
    for t in (a, b, c):
        t.join(30)


def test_parallel_evaluations_through_a_gate_score_like_serial_ones():
    import concurrent.futures

    from kernels.evaluate import GpuGate

    cfg = replace(CPU_QUICK, gate=GpuGate())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda n: evaluate(n, str(SOLUTIONS / f"{n}.py"), cfg), ["rmsnorm", "softmax"]))
    for r in reports:
        assert r.error == "" and r.failed() == {} and 0.0 <= r.metric <= 1.0
