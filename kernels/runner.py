"""Phase 1 of a kernel task: import the candidate and call it once, in the sandbox.

Nothing here is scored: it fails fast (with the candidate's own error) when solution.py
does not import or crash on a first call, and reports how long compiling took. The score
comes from kernels/evaluate.py, in another process, on other inputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", required=True)
    ap.add_argument("--mode", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--solution", default="solution.py")
    args = ap.parse_args()
    if args.mode == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(), "triton"))
    import torch

    from kernels.problem import as_tuple, generator, get

    prob = get(args.problem)
    device = "cuda" if args.mode == "gpu" else "cpu"
    spec = importlib.util.spec_from_file_location("solution", args.solution)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shape = prob.shapes(args.mode)[-1]  # the smallest: a quick first call
    inputs = prob.make_inputs(shape, generator(0, device), device, prob.dtype(args.mode))
    t0 = time.perf_counter()
    out = as_tuple(module.solution(*inputs))
    if device == "cuda":
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    print(f"{args.problem}: first call on {shape} took {first_call_s:.2f} s and returned "
          f"{[tuple(o.shape) for o in out if isinstance(o, torch.Tensor)]}; the evaluator scores it")
    fd = os.environ.get("THREADLAB_SAMPLES_FD")
    if fd:
        with os.fdopen(int(fd), "w") as samples:
            samples.write(json.dumps({"step": 0, "name": "first_call_s", "value": first_call_s}) + "\n")


if __name__ == "__main__":
    main()
