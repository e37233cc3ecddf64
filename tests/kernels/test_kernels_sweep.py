"""The sweep (benchmarks/kernels_sweep.py) and what it sweeps: the row kernels' knobs, on the
masked and the unmasked (EVEN) path; the TMA alternative files; the sweep's plumbing through
the real evaluator at the CPU shapes; applying its winners."""

import json
import time

import pytest
import torch

from benchmarks import kernels_sweep, kernels_sweep_apply
from kernels import checks
from kernels.problem import as_tuple, generator, problems

from .conftest import ROOT, SOLUTIONS


def _check(p, solution, shape, seed=1):
    inputs = p.make_inputs(shape, generator(seed, "cpu"), "cpu", torch.float32)
    pristine = [x.clone() for x in inputs]
    outs, refs = as_tuple(solution(*inputs)), as_tuple(p.reference(*pristine))
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape and checks.compare(o, r, p.tolerance(r.dtype, "cpu"), str(shape)) == []


@pytest.mark.parametrize("name", ["rmsnorm", "add_rmsnorm", "layernorm", "softmax"])
def test_the_row_kernels_are_correct_for_every_rows_knob_masked_or_not(name, load_solution):
    p, module = problems()[name], load_solution(SOLUTIONS / f"{name}.py")
    # 8 x 64: every row and column in range (the unmasked path, as at the timed shape); 9 x 64 and
    # 6 x 50: a partial last row block, a padded row
    for rows in (0, 1, 2):
        module.LOG2_ROWS = rows
        for shape in ({"M": 8, "N": 64}, {"M": 9, "N": 64}, {"M": 6, "N": 50}):
            _check(p, module.solution, shape)


@pytest.mark.parametrize("name", ["gemm", "gemm_bias_gelu"])
def test_the_tma_alternatives_are_correct_under_the_interpreter(name, load_solution):
    p, module = problems()[name], load_solution(ROOT / "kernels" / "variants" / f"{name}_tma.py")
    module.LOG2_BLOCK_M, module.LOG2_BLOCK_N, module.LOG2_BLOCK_K = 4, 4, 4
    for shape in (*p.cpu_shapes, {"M": 20, "N": 24, "K": 40}):  # K % 8 != 0 (padded) and == 0
        _check(p, module.solution, shape)


FILE_VARIANTS = sorted({(n, v["file"]) for n, vs in kernels_sweep.VARIANTS.items() for v in vs if "file" in v})


@pytest.mark.parametrize("name,path", FILE_VARIANTS)
def test_every_alternative_file_of_the_sweep_is_correct_under_the_interpreter(name, path, load_solution):
    p, module = problems()[name], load_solution(ROOT / path)
    for shape in p.cpu_shapes:
        _check(p, module.solution, shape)


def test_the_tma_attention_gpu_path_is_correct_under_the_interpreter(load_solution):
    """Its GPU loop (runtime bounds: unmasked blocks left of the diagonal, masked ones on it)
    with `range` taking the interpreter's scalars; tiles that run past a head's rows included."""
    import builtins

    import numpy as np

    p, module = problems()["gqa_attention"], load_solution(ROOT / "kernels" / "variants" / "gqa_attention_tma.py")

    def scalar(x):
        return int(np.asarray(x.handle.data).reshape(-1)[0]) if hasattr(x, "handle") else int(x)

    runtime_bounds = []

    def patched_range(*a):
        runtime_bounds.append(any(hasattr(x, "handle") for x in a))
        return builtins.range(*map(scalar, a))

    module._attention_tma.fn.__globals__["range"] = patched_range
    real_cuda = torch.Tensor.is_cuda
    try:
        torch.Tensor.is_cuda = property(lambda self: True)  # RUNTIME_BOUND=True: the GPU's loop
        for shape, (bm, bn) in (({"B": 1, "Hq": 4, "Hkv": 2, "T": 77, "D": 16}, (5, 4)),
                                ({"B": 1, "Hq": 2, "Hkv": 1, "T": 64, "D": 16}, (4, 5)),
                                ({"B": 2, "Hq": 4, "Hkv": 1, "T": 130, "D": 32}, (6, 5))):
            module.LOG2_BLOCK_M, module.LOG2_BLOCK_N = bm, bn
            _check(p, module.solution, shape)
    finally:
        torch.Tensor.is_cuda = real_cuda
    assert any(runtime_bounds), "the GPU loop (runtime bounds) never ran"


def test_knobs_are_set_in_the_source_and_a_missing_knob_is_an_error():
    src = "A = 1\nLOG2_WARPS = 3  # note\nx = LOG2_WARPS\n"
    assert kernels_sweep.with_knobs(src, {"LOG2_WARPS": 4}) == "A = 1\nLOG2_WARPS = 4  # note\nx = LOG2_WARPS\n"
    with pytest.raises(KeyError):
        kernels_sweep.with_knobs(src, {"NUM_STAGES": 2})
    for name, variants in kernels_sweep.VARIANTS.items():  # every listed variant applies to its file
        assert len(variants) <= 6, name
        for v in variants:
            base = ROOT / v["file"] if "file" in v else SOLUTIONS / f"{name}.py"
            kernels_sweep.with_knobs(base.read_text(), {k: x for k, x in v.items() if k != "file"})


def test_the_order_is_round_robin_shipped_first(monkeypatch):
    monkeypatch.setitem(kernels_sweep.VARIANTS, "rotary", [])
    monkeypatch.setitem(kernels_sweep.VARIANTS, "gemm", [{"GROUP_M": 4}, {"NUM_STAGES": 2}, {"NUM_STAGES": 4}])
    got = kernels_sweep.jobs(["rmsnorm", "rotary", "gemm"], 2)
    assert [(n, kernels_sweep.label(v)) for n, v in got[:3]] == [("rmsnorm", "shipped"), ("rotary", "shipped"),
                                                                 ("gemm", "shipped")]
    assert [n for n, _ in got[3:]] == ["rmsnorm", "gemm", "rmsnorm", "gemm"]


def test_the_sweep_scores_variants_through_the_evaluator_and_keeps_to_its_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(kernels_sweep.VARIANTS, "rmsnorm", [{"LOG2_ROWS": 2}, {"NO_SUCH_KNOB": 1},
                                                            {"file": "tests/kernels/hacks/library_op.py"}])
    result = kernels_sweep.sweep(tmp_path, ["rmsnorm"], "cpu", 2, time.monotonic() + 600, 6)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["problems"].keys() == result["problems"].keys() == {"rmsnorm"}
    got = saved["problems"]["rmsnorm"]["variants"]
    assert set(got) == {"shipped", "LOG2_ROWS=2", "NO_SUCH_KNOB=1", "file:library_op"}
    for tag in ("shipped", "LOG2_ROWS=2"):
        e = got[tag]
        assert e["correct"] and e["S"] is not None and e["T_k_ms"] > 0 and e["T_b_ms"] > 0, (tag, e)
        assert e["metric_kind"] == "cpu_interpreter_score"
    assert got["LOG2_ROWS=2"]["knobs"]["LOG2_ROWS"] == 2 and got["shipped"]["knobs"]["LOG2_ROWS"] == 1
    assert not got["NO_SUCH_KNOB=1"]["correct"] and "NO_SUCH_KNOB" in got["NO_SUCH_KNOB=1"]["error"]
    hack = got["file:library_op"]  # the evaluator's checks run on every variant: a library call is flagged
    assert not hack["correct"] and (hack["failed"] or hack["error"])
    assert saved["problems"]["rmsnorm"]["best"] in ("shipped", "LOG2_ROWS=2")

    late = kernels_sweep.sweep(tmp_path / "late", ["rmsnorm"], "cpu", 2, time.monotonic() - 1, 6)
    assert late["problems"]["rmsnorm"]["variants"] == {} and len(late["skipped"]) == 4


def test_applying_a_sweep_writes_the_winning_knobs_only_past_the_margin(tmp_path):
    for name in ("rmsnorm", "softmax", "gemm"):
        (tmp_path / f"{name}.py").write_text((SOLUTIONS / f"{name}.py").read_text())
    sweep = {"problems": {
        "rmsnorm": {"best": "LOG2_ROWS=2,LOG2_WARPS=4", "variants": {
            "shipped": {"correct": True, "S": 0.40, "variant": {}},
            "LOG2_ROWS=2,LOG2_WARPS=4": {"correct": True, "S": 0.55, "variant": {"LOG2_ROWS": 2, "LOG2_WARPS": 4}}}},
        "softmax": {"best": "LOG2_WARPS=3", "variants": {  # within the margin: left alone
            "shipped": {"correct": True, "S": 0.500, "variant": {}},
            "LOG2_WARPS=3": {"correct": True, "S": 0.505, "variant": {"LOG2_WARPS": 3}}}},
        "gemm": {"best": "file:gemm_tma,NUM_STAGES=4", "variants": {
            "shipped": {"correct": True, "S": 0.34, "variant": {}},
            "file:gemm_tma,NUM_STAGES=4": {"correct": True, "S": 0.40,
                                           "variant": {"file": "kernels/variants/gemm_tma.py", "NUM_STAGES": 4}}}}}}
    lines = kernels_sweep_apply.apply(sweep, 0.01, solutions=tmp_path)
    assert [line.split(":")[0] for line in lines if not line.startswith(" ")] == ["rmsnorm", "gemm"]
    # gemm's playbook ideas search for NUM_STAGES = 3, now 4: named, so the toml gets fixed
    assert [line for line in lines if line.startswith(" ")] == [
        "  gemm: fix kernels/variants/gemm.toml, these ideas no longer apply: k32_four_stages, square_tile_four_stages"]
    assert kernels_sweep.knobs_of((tmp_path / "rmsnorm.py").read_text())["LOG2_ROWS"] == 2
    assert kernels_sweep.knobs_of((tmp_path / "rmsnorm.py").read_text())["LOG2_WARPS"] == 4
    assert (tmp_path / "softmax.py").read_text() == (SOLUTIONS / "softmax.py").read_text()
    gemm = (tmp_path / "gemm.py").read_text()
    assert "TensorDescriptor" in gemm and kernels_sweep.knobs_of(gemm)["NUM_STAGES"] == 4
    # a playbook idea that no longer applies to the new solution is reported
    assert not kernels_sweep_apply._applies([{"search": "LOG2_BLOCK_N = 6  # 64", "replace": "x"}], gemm)
