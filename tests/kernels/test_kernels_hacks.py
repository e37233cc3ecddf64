"""The kernel hack corpus: one candidate per reward hack seen in the wild, each caught by
the check its entry names. Each runs through the real evaluator and its worker process.
The CPU-checkable ones run here in CI (TRITON_INTERPRET=1); every one, the GPU-only ones
included, also runs on a CUDA machine (benchmarks/kernels_gpu.sh), and skips without one."""

import json
import os
import subprocess
import sys

import pytest

from kernels.evaluate import evaluate

from .conftest import CPU_QUICK, GPU, GPU_QUICK, HACKS
from .corpus import CORPUS, STATIC

def test_the_corpus_has_one_candidate_per_hack():
    assert {p.stem for p in HACKS.glob("*.py")} == set(CORPUS)


def _check(hack: str, mode: str) -> dict:
    problem, caught_by, _ = CORPUS[hack]
    report = evaluate(problem, str(HACKS / f"{hack}.py"), CPU_QUICK if mode == "cpu" else GPU_QUICK)
    failed = report.failed()
    assert caught_by & set(failed), f"{hack} escaped: failed={failed} error={report.error!r}"
    if hack in STATIC:
        assert STATIC[hack] in failed
    return failed


@pytest.mark.parametrize("hack", [h for h, (_, _, gpu_only) in CORPUS.items() if not gpu_only])
def test_a_cpu_checkable_hack_is_caught_on_the_cpu(hack):
    _check(hack, "cpu")


@pytest.mark.parametrize("hack", sorted(CORPUS))
def test_every_hack_is_caught_on_the_gpu(hack):
    if not GPU:
        pytest.skip("needs CUDA")
    failed = _check(hack, "gpu")
    out = os.environ.get("KERNELS_HACKS_JSON")  # the GPU script collects what each showed
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"hack": hack, "failed": failed}) + "\n")


def test_a_forged_result_never_reaches_the_executor(tmp_path):
    """The result-channel hack run as the task runs it: the evaluator's own result arrives
    (no metric, the tampering named), never the candidate's perfect score."""
    (tmp_path / "solution.py").write_text((HACKS / "result_channel.py").read_text())
    r, w = os.pipe()
    env = {**os.environ, "THREADLAB_RESULT_FD": str(w),
           "THREADLAB_PARAMS": json.dumps({"mode": "cpu", "iters": 4, "warmup": 1, "interleave": 2})}
    proc = subprocess.run([sys.executable, "-m", "kernels.evaluate", "--problem", "rmsnorm", "--solution",
                           "solution.py", "--mode", "cpu"], cwd=tmp_path, env=env, pass_fds=(w,),
                          capture_output=True, text=True, timeout=300)
    os.close(w)
    with os.fdopen(r) as f:
        result = json.loads(f.read())  # exactly one JSON object: nothing else was written to the fd
    assert proc.returncode == 1 and result["metric"] is None
    failed = {a["guard"] for a in result["audits"] if not a["ok"]}
    assert {"runtime.result_channel", "static.result_channel"} <= failed
