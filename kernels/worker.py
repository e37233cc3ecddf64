"""A worker process: runs one candidate (or the trusted baseline) for the evaluator.

Started by kernels/evaluate.py as `python -m kernels.worker ...` with two pipe fds and a
clean environment. Everything here is trusted code, but the process is not: the
candidate is imported into it, and may have changed anything in it by the time it
answers. The evaluator therefore treats every reply as a claim, checks outputs against
its own reference, and times the whole exchange with its own clock.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback
from typing import Any

import torch

from kernels import channel, guard as guard_mod, problem as problem_mod, timing

STARTUP_ERROR_CHARS = 4000


def _poison(specs: list, device: str) -> None:
    """Leave NaN (or -1) in freed blocks of each output's size, so an output the candidate
    allocates but does not fully write holds poison rather than stale values."""
    for shape, dtype_name in specs:
        dtype = getattr(torch, dtype_name)
        t = torch.empty(shape, dtype=dtype, device=device)
        t.fill_(float("nan") if dtype.is_floating_point else -1)
        del t


def mutate_(inputs: tuple[torch.Tensor, ...], seed: int, frac: float) -> None:
    """New values, in place, at a random `frac` of the positions of every float input, or
    at exactly one position when frac is 0 (a sparse input fingerprint misses that)."""
    for i, x in enumerate(inputs):
        if not x.is_floating_point():
            continue
        gen = problem_mod.generator(seed + i, str(x.device.type))
        flat = x.view(-1)
        if frac > 0:
            pick = torch.rand(flat.numel(), generator=gen, device=x.device) < frac
        else:
            at = torch.randint(0, flat.numel(), (1,), generator=gen, device=x.device)
            pick = torch.zeros(flat.numel(), dtype=torch.bool, device=x.device).index_fill_(0, at, True)
        new = (torch.randn(flat.numel(), generator=gen, device=x.device) * 2).to(x.dtype)
        flat.copy_(torch.where(pick, new, flat))


def sample_index(numel: int, seed: int, n: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, numel, (min(n, numel),), generator=gen).to(device)


class Worker:
    def __init__(self, args: argparse.Namespace, rfd: int, wfd: int):
        self.rfd, self.wfd = rfd, wfd
        self.problem = problem_mod.get(args.problem)
        self.mode = args.mode
        self.device = "cuda" if args.mode == "gpu" else "cpu"
        self.dtype = self.problem.dtype(args.mode)
        self.role = args.role
        self.slots: dict[int, dict[str, Any]] = {}
        self.timed: list[Any] = []
        self.buffers: tuple[torch.Tensor, ...] = ()
        self.shape: dict | None = None
        self.guard: guard_mod.Guard | None = None
        self.fns: dict[str, Any] = {"null": timing.null}
        self.solution_path = args.solution
        self.warm_shapes = json.loads(args.warm_shapes) if args.warm_shapes else []

    # -- start-up -----------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        from kernels import warmup

        if self.device == "cpu":
            torch.set_num_threads(1)
        warmup.warm(self.device)
        s = self.problem.shapes(self.mode)[-1]
        self.problem.reference(*self.problem.make_inputs(s, problem_mod.generator(0, self.device), self.device,
                                                         self.dtype))
        self.timer = timing.Timer(self.device)
        if self.role == "baseline":
            self.fns["eager"] = self.problem.baseline
            if self.device == "cuda":
                self.fns["compiled"] = torch.compile(self.problem.baseline, dynamic=False)
                for shape in self.warm_shapes:  # compile now, in parallel with the candidate's checks
                    self.fns["compiled"](*self._inputs(shape, 0))
                torch.cuda.synchronize()
            return {"ok": True}
        caches = [os.environ.get(k, "") for k in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR")]
        self.guard = guard_mod.Guard(self.solution_path, self.problem.library_ops, [c for c in caches if c],
                                     cuda=self.device == "cuda")
        import shutil
        import subprocess
        import tempfile

        import triton
        import triton.language
        from triton.compiler import compiler as triton_compiler
        from triton.runtime import build as triton_build, cache as triton_cache, jit

        # Triton's compile path too: the guard excuses what it does only by its functions' identity
        triton_modules = [triton.knobs, triton_build, triton_cache, jit, triton_compiler] + [
            sys.modules[m] for m in ("triton.backends.nvidia.driver", "triton.backends.nvidia.compiler")
            if m in sys.modules]
        watched_modules = [torch, torch.nn.functional, torch.cuda, torch.Tensor, torch.overrides, triton,
                           triton.language, timing, guard_mod, channel, problem_mod, sys.modules[__name__],
                           __import__("time"), __import__("threading"), __import__("_thread"), __import__("os"),
                           subprocess, tempfile, shutil, *triton_modules]
        classes = [torch.cuda.Event, torch.cuda.Stream, jit.JITFunction, timing.Timer, guard_mod.Guard,
                   triton_cache.FileCacheManager, triton_compiler.CompiledKernel]
        for name in ("CudaLauncher", "CudaUtils", "CUDABackend"):
            for m in triton_modules:
                if isinstance(getattr(m, name, None), type):
                    classes.append(getattr(m, name))
        self.guard.install([m for m in watched_modules if not isinstance(m, type)],
                           classes + [torch.Tensor, torch._C.TensorBase])
        try:
            spec = importlib.util.spec_from_file_location("solution", self.solution_path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["solution"] = module
            spec.loader.exec_module(module)
        except BaseException:
            return {"error": "import", "detail": traceback.format_exc()[-STARTUP_ERROR_CHARS:]}
        fn = getattr(module, "solution", None)
        if not callable(fn):
            return {"error": "import", "detail": f"{self.solution_path} defines no callable `solution`"}
        self.fns["candidate"] = fn
        self.guard.check_integrity()
        return {"ok": True}

    # -- commands -----------------------------------------------------------------------

    def _inputs(self, shape: dict, seed: int) -> tuple[torch.Tensor, ...]:
        return self.problem.make_inputs(shape, problem_mod.generator(seed, self.device), self.device, self.dtype)

    def _call(self, fn, inputs, out_specs: list) -> tuple[dict[str, Any], tuple | None]:
        _poison(out_specs, self.device)
        g = self.guard
        before, storages = (g.launches, set()) if g else (0, set())
        if g:
            g.launch_storages = storages
        try:
            if g:
                with g.spy():
                    out = fn(*inputs)
            else:
                out = fn(*inputs)
            if self.device == "cuda":
                torch.cuda.synchronize()
        except BaseException:
            return {"error": "call", "detail": traceback.format_exc()[-STARTUP_ERROR_CHARS:]}, None
        finally:
            if g:
                g.launch_storages = None
        outs = out if type(out) is tuple else (out,)
        described = [{"type": f"{type(o).__module__}.{type(o).__qualname__}"} for o in outs]
        if any(type(o) is not torch.Tensor for o in outs):
            return {"ok": True, "outputs": described, "tuple": type(out) is tuple}, None
        for d, o in zip(described, outs):
            d.update(shape=list(o.shape), dtype=str(o.dtype).removeprefix("torch."))
        if g:
            g.check_outputs(outs, before, storages)
        return {"ok": True, "outputs": described, "tuple": type(out) is tuple}, outs

    def handle(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        op = msg.get("op")
        if op == "call":
            inputs = self._inputs(msg["shape"], msg["seed"])
            reply, outs = self._call(self.fns["candidate"], inputs, msg.get("out_specs", []))
            if outs is not None:
                self.slots[msg["slot"]] = {"inputs": inputs, "outputs": outs}
            return reply, []
        if op == "probe":  # the same input tensors, partly new values: replay must not pay
            inputs = self.slots[msg["slot"]]["inputs"]
            mutate_(inputs, msg["seed"], msg["frac"])
            reply, outs = self._call(self.fns["candidate"], inputs, msg.get("out_specs", []))
            if outs is not None:
                self.slots[msg["new_slot"]] = {"inputs": inputs, "outputs": outs}
            return reply, []
        if op == "fetch":
            if msg["slot"] == "timed":
                out = self.timed[msg["index"]]
                t = (out if type(out) is tuple else (out,))[msg["which"]]
            else:
                t = self.slots[msg["slot"]][msg["kind"]][msg["which"]]
            if msg.get("sample"):
                idx = sample_index(t.numel(), msg["sample"]["seed"], msg["sample"]["n"], self.device)
                t = t.reshape(-1)[idx]
            return {"ok": True}, [channel.tensor_bytes(t)]
        if op == "drop":
            self.slots.pop(msg["slot"], None)
            if msg.get("timed"):
                self.timed.clear()
            return {"ok": True}, []
        if op == "prepare":
            self.shape = msg["shape"]
            self.timed.clear()
            self.buffers = self._inputs(self.shape, 0)
            return {"ok": True}, []
        if op == "time":
            fn = self.fns.get(msg["impl"])
            if fn is None:
                return {"error": "impl", "detail": f"no implementation {msg['impl']!r} in this worker"}, []
            g = self.guard
            before = g.launches if g else 0
            make = lambda gen: self.problem.make_inputs(self.shape, gen, self.device, self.dtype)  # noqa: E731
            try:
                result = self.timer.run(fn, self.buffers, make, msg["seeds"], self.timed if msg.get("keep") else None,
                                        hide_launch=msg.get("hide_launch", True))
            except BaseException:
                return {"error": "call", "detail": traceback.format_exc()[-STARTUP_ERROR_CHARS:]}, []
            result["launches"] = (g.launches - before) if g else None
            return {"ok": True, **result}, []
        if op == "status":
            return {"ok": True}, []
        return {"error": "protocol", "detail": f"unknown op {op!r}"}, []

    def serve(self) -> None:
        hello = self.start()
        self._reply(hello, [])
        if "error" in hello:
            return
        while True:
            msg, _ = channel.recv(self.rfd)
            if msg.get("op") == "exit":
                return
            reply, blobs = self.handle(msg)
            self._reply(reply, blobs)

    def _reply(self, reply: dict[str, Any], blobs: list[bytes]) -> None:
        if self.guard is not None:
            self.guard.check_integrity()
            reply["findings"] = self.guard.report()
            reply["excused"] = list(self.guard.excused)  # what Triton did on the candidate's behalf
        channel.send(self.wfd, reply, blobs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", required=True)
    ap.add_argument("--mode", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--role", choices=("candidate", "baseline"), required=True)
    ap.add_argument("--solution")
    ap.add_argument("--fds", required=True)
    ap.add_argument("--warm-shapes", help="JSON list of shapes to compile the baseline for at start-up")
    args = ap.parse_args()
    rfd, wfd = (int(x) for x in args.fds.split(","))
    # what the candidate prints is log: keep it out of the evaluator's stdout
    os.dup2(2, 1)
    try:
        Worker(args, rfd, wfd).serve()
    except channel.ChannelError:
        pass  # the evaluator went away


if __name__ == "__main__":
    main()
