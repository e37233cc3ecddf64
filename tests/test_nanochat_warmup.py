"""nanochat's set-up call (runner.py, warmup.py): a few steps on random tokens before the
budget starts, so that the timed call in the same process compiles nothing."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TASK = Path(__file__).resolve().parent.parent / "tasks" / "nanochat"
sys.path.insert(0, str(TASK))
import train  # noqa: E402  (the task's baseline)
from warmup import WarmupContext  # noqa: E402

VOCAB = 512


def test_the_set_up_call_takes_its_steps_however_long_the_model_takes_to_build(monkeypatch):
    # a clock deadline would pass while CUDA starts up, before the first (compiling) step
    build = train.make_model

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return build(*args, **kwargs)

    monkeypatch.setattr(train, "make_model", slow)
    ctx = WarmupContext(VOCAB, "tiny", "cpu")
    train.train(ctx)
    assert ctx.drawn == WarmupContext.STEPS


def test_after_its_steps_the_deadline_stays_put():
    # a candidate that trains to `deadline + 1` must stop a second later, not chase a
    # deadline that moves with the clock
    ctx = WarmupContext(VOCAB, "tiny", "cpu")
    batches = ctx.batches(2, 8)
    assert ctx.deadline > time.time() + 3000
    for _ in range(WarmupContext.STEPS):
        next(batches)
    fixed = ctx.deadline
    time.sleep(0.05)
    assert ctx.deadline == fixed <= time.time()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the CPU path is tested above)")
def test_after_the_set_up_the_timed_call_compiles_nothing(tmp_path):
    # runner.py's two calls in one process: the second, timed one must find every graph
    # compiled (its first steps within seconds), or the budget pays for compilation
    probe = f"""
import json, sys, time, torch
sys.path.insert(0, {str(TASK)!r})
import train
from warmup import WarmupContext
from torch._dynamo.utils import counters
train.train(WarmupContext({VOCAB}, "full"))
torch.cuda.synchronize()
graphs = counters["stats"]["unique_graphs"]
t0 = time.perf_counter()
train.train(WarmupContext({VOCAB}, "full"))
torch.cuda.synchronize()
print(json.dumps({{"s": time.perf_counter() - t0, "new_graphs": counters["stats"]["unique_graphs"] - graphs}}))
"""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TRITON_CACHE_DIR=str(tmp_path / "triton"))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         check=True, env=env)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(figures)
    assert figures["new_graphs"] == 0 and figures["s"] < 5.0
