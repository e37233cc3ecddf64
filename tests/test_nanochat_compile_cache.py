"""nanochat's warm compile cache: made once from the baseline, copied privately into each run."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TASK = Path(__file__).resolve().parent.parent / "tasks" / "nanochat"
sys.path.insert(0, str(TASK))
import compile_cache  # noqa: E402  (the task's own module)

VOCAB = 512


def test_without_a_gpu_nothing_is_warmed_and_runs_stay_cold(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compile_cache.warm(tmp_path, VOCAB, "tiny") is None
    assert not (tmp_path / "public" / "compile").exists()


def test_a_run_gets_a_private_copy_of_the_cache(tmp_path, monkeypatch):
    shared = tmp_path / "data" / "public" / "compile" / "key"
    (shared / "inductor").mkdir(parents=True)
    (shared / "inductor" / "graph.py").write_text("cached")
    monkeypatch.setattr(compile_cache, "folder", lambda root, vocab, size: shared)
    monkeypatch.setattr(compile_cache.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # restored afterwards
        monkeypatch.delenv(name, raising=False)
    assert not compile_cache.use(tmp_path / "data", VOCAB, "full")  # no stamp: an unfinished warm-up

    (shared / compile_cache.STAMP).write_text("abc")
    assert compile_cache.use(tmp_path / "data", VOCAB, "full")
    private = Path(compile_cache.os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert private.parent == tmp_path / "tmp" / "compile-cache"
    (private / "graph.py").write_text("the candidate's own")
    assert (shared / "inductor" / "graph.py").read_text() == "cached"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the CPU path is tested above)")
def test_a_warm_cache_makes_the_baselines_compilation_a_cache_hit(tmp_path, monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # warm() sets them
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "nanochat"
    assert compile_cache.warm(root, VOCAB, "full") is not None
    probe = f"""
import json, sys, time, torch
sys.path.insert(0, {str(TASK)!r})
import compile_cache, train
assert compile_cache.use(__import__("pathlib").Path({str(root)!r}), {VOCAB}, "full")
t0 = time.perf_counter()
train.train(compile_cache.WarmupContext({VOCAB}, "full"))
torch.cuda.synchronize()
from torch._dynamo.utils import counters
print(json.dumps({{"s": time.perf_counter() - t0, "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(figures)
    assert figures["hits"] > 0 and figures["misses"] == 0


def test_the_set_up_call_takes_its_steps_however_long_the_model_takes_to_build(monkeypatch):
    # a clock deadline would pass while CUDA starts up, before the first (compiling) step
    import train

    build = train.make_model

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return build(*args, **kwargs)

    monkeypatch.setattr(train, "make_model", slow)
    ctx = compile_cache.WarmupContext(VOCAB, "tiny", "cpu")
    train.train(ctx)
    assert ctx.drawn == compile_cache.WarmupContext.STEPS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the CPU path is tested above)")
def test_after_the_set_up_the_timed_call_compiles_nothing(tmp_path):
    # runner.py's two calls in one process: the second, timed one must find every graph
    # compiled (its first step within a second), or the budget pays for compilation
    probe = f"""
import json, sys, time, torch
sys.path.insert(0, {str(TASK)!r})
import compile_cache, train
from torch._dynamo.utils import counters
train.train(compile_cache.WarmupContext({VOCAB}, "full"))
torch.cuda.synchronize()
frames = counters["stats"]["unique_graphs"]
ctx = compile_cache.WarmupContext({VOCAB}, "full")
t0 = time.perf_counter()
train.train(ctx)
torch.cuda.synchronize()
print(json.dumps({{"s": time.perf_counter() - t0, "new_graphs": counters["stats"]["unique_graphs"] - frames}}))
"""
    env = dict(__import__("os").environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               TRITON_CACHE_DIR=str(tmp_path / "triton"))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         check=True, env=env)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(figures)
    assert figures["new_graphs"] == 0 and figures["s"] < 3.0
