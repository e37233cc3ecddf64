"""The trusted kernel evaluator: checks and times one candidate in worker processes.

    python -m kernels.evaluate --problem rmsnorm --solution solution.py --mode cpu|gpu

As a task's evaluator (THREADLAB_RESULT_FD set) it writes one JSON result to that fd:
{"metric": S or null, "audits": [...], "extra": {...}}, and exits 1 with the reason on
stderr when the candidate cannot be scored (does not import, raises, hangs, is wrong).
Without the fd it prints the result. The trust boundary is described in kernels/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kernels import channel, checks, guard, sol, static
from kernels.problem import Problem, Shape, as_tuple, generator, get, label
from kernels.worker import mutate_, sample_index

CORRECT = ("correct.type", "correct.shape", "correct.dtype", "correct.finite", "correct.nonzero", "correct.match",
           "correct.max_error", "correct.inputs_unchanged", "correct.replay_probe", "correct.timed_outputs")
TIMING = ("timing.host_clock", "timing.side_stream", "sol.below_sol", "sol.speedup")
# the worker's channel carried something other than the protocol (candidate code writing into it)
CHANNEL = ("runtime.result_channel",)
ALL_CHECKS = static.CHECKS + CORRECT + guard.CHECKS + CHANNEL + TIMING
# the directory that holds the kernels package: put on the workers' path explicitly, so they
# import this very package whether or not threadlab is installed and whatever the caller's
# PYTHONPATH (a worker runs with -P in a scratch directory)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GpuGate:
    """Lets several evaluations share one GPU: start-up, compiling and the correctness checks
    run side by side (`shared`), timing runs alone (`exclusive`; waiting timers go first, so
    no new evaluation starts while one waits). While one evaluation times, every other one
    is either blocked here or idle between requests: its workers wait on their pipes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_ALONE = GpuGate()  # an evaluation with no gate of its own shares nothing


@dataclass(frozen=True)
class Config:
    mode: str = "cpu"  # "cpu": TRITON_INTERPRET=1, tiny shapes; "gpu": CUDA, H100 shapes
    rounds: int = 5  # correctness rounds of fresh inputs per shape
    warmup: int = 10
    iters: int = 50  # timed calls of each implementation, in `interleave` interleaved rounds
    interleave: int = 5
    compile_baseline: bool = True  # T_b = min(eager, torch.compile) on the GPU
    correct_shapes: tuple[Shape, ...] | None = None  # default: the problem's
    timed_shapes: tuple[Shape, ...] | None = None
    time_it: bool = True
    full_fetch_bytes: int = 64 << 20  # larger tensors are checked on a random sample
    sample_n: int = 1 << 20
    timed_sample_n: int = 4096
    probe_frac: float = 0.1
    startup_timeout_s: float = 300.0
    call_timeout_s: float = 300.0
    speedup_cap: float = 10.0
    # a GPU spin before each timed call hides the host's launch overhead (kernels/timing.py);
    # False times from an idle GPU, launch included (the protocol before 2026-12-06)
    hide_launch: bool = True
    peaks: dict | None = None  # GPU peaks; measured (or read from the cache) when None
    gate: GpuGate | None = None  # shared by evaluations run in parallel (bench): timing runs alone


@dataclass
class Report:
    problem: str
    metric: float | None = None
    error: str = ""
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def failed(self) -> dict[str, str]:
        return {k: a["message"] for k, a in self.audits.items() if not a["ok"]}

    def result(self) -> dict[str, Any]:
        """The executor's result object (engine/executor.py's THREADLAB_RESULT_FD contract)."""
        audits = [{"guard": k, **a} for k, a in self.audits.items()]
        extra = {**self.extra, **({"error": self.error} if self.error else {})}
        return {"metric": self.metric, "audits": audits, "extra": extra}


class CandidateError(Exception):
    """The candidate cannot be scored: the message names the problem."""


def protect_process() -> bool:
    """Make this process non-dumpable: a same-uid worker can then not open /proc/<pid>/fd
    or /proc/<pid>/mem of it (root, or CAP_SYS_PTRACE, still can)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------- workers


class WorkerProcess:
    """A `python -m kernels.worker` child with its own pipes and process group."""

    def __init__(self, problem: Problem, mode: str, role: str, solution: str | None, tmp: str,
                 warm_shapes: tuple = ()):
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLAB_", "ANTHROPIC_"))}
        private_tmp = os.path.join(tmp, f"tmp-{role}")  # Triton writes its ptx and cubin files here
        os.makedirs(private_tmp, exist_ok=True)
        env.update(TRITON_CACHE_DIR=os.path.join(tmp, f"triton-{role}"), TMPDIR=private_tmp,
                   TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, f"inductor-{role}"), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                              if p and p != PACKAGE_ROOT)]))
        if mode == "cpu":
            env["TRITON_INTERPRET"] = "1"
        else:
            env.pop("TRITON_INTERPRET", None)
        argv = [sys.executable, "-P", "-m", "kernels.worker", "--problem", problem.name, "--mode", mode,
                "--role", role, "--fds", f"{cmd_r},{rep_w}"]
        if solution:
            argv += ["--solution", os.path.abspath(solution)]
        if warm_shapes:
            argv += ["--warm-shapes", json.dumps(list(warm_shapes))]
        self.role = role
        try:
            self.proc = subprocess.Popen(argv, pass_fds=(cmd_r, rep_w), env=env, stdin=subprocess.DEVNULL,
                                         cwd=tmp, start_new_session=True)
        finally:
            os.close(cmd_r)
            os.close(rep_w)
        self.w, self.r = cmd_w, rep_r
        self.findings: dict[str, list[str]] = {}
        self.excused: list[str] = []
        self.hello: dict[str, Any] = {}

    def wait_hello(self, timeout: float) -> dict[str, Any]:
        """The start-up reply: {"ok": true} or {"error": ..., "detail": ...}."""
        if not self.hello:
            self.hello = self._recv(timeout)[0]
        return self.hello

    def request(self, msg: dict[str, Any], timeout: float) -> tuple[dict[str, Any], list[bytes], float]:
        """Send one command; returns the reply, its blobs and the wall time by our clock (ms)."""
        t0 = time.perf_counter()
        try:
            channel.send(self.w, msg)
        except OSError:
            raise channel.ChannelError("the worker closed its channel (it crashed or exited)") from None
        reply, blobs = self._recv(timeout)
        return reply, blobs, (time.perf_counter() - t0) * 1e3

    def _recv(self, timeout: float) -> tuple[dict[str, Any], list[bytes]]:
        reply, blobs = channel.recv(self.r, timeout)
        if isinstance(reply.get("findings"), dict):
            self.findings = reply["findings"]
        if isinstance(reply.get("excused"), list):
            self.excused = [str(x)[:200] for x in reply["excused"][:20]]
        return reply, blobs

    def close(self) -> None:
        with contextlib.suppress(OSError, channel.ChannelError):
            channel.send(self.w, {"op": "exit"})
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left behind
        self.proc.wait()
        for fd in (self.w, self.r):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- evaluation


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _share(flags: list) -> float | None:
    return sum(map(bool, flags)) / len(flags) if flags else None


class Evaluation:
    def __init__(self, problem: Problem, solution: str, cfg: Config):
        self.p = problem
        self.solution = solution
        self.cfg = cfg
        self.device = "cuda" if cfg.mode == "gpu" else "cpu"
        self.dtype = problem.dtype(cfg.mode)
        self.report = Report(problem.name)
        self._peaks: dict | None = None  # GPU peaks, measured before any worker starts
        for name in ALL_CHECKS:
            self.report.audits[name] = {"ok": True, "message": "", "evidence": {}}

    # -- audits -----------------------------------------------------------------------

    def fail(self, check: str, message: str, **evidence: Any) -> None:
        audit = self.report.audits[check]
        if audit["ok"]:  # the first failure is the evidence
            audit.update(ok=False, message=message, evidence=evidence)

    def _findings(self, found: list[checks.Finding]) -> bool:
        for f in found:
            self.fail(f.check, f.message, **f.evidence)
        return not found

    def _worker_findings(self, w: WorkerProcess) -> None:
        for check, notes in w.findings.items():
            if check in guard.CHECKS and isinstance(notes, list) and notes:
                self.fail(check, "; ".join(str(n) for n in notes[:5]), notes=[str(n) for n in notes[:5]])

    # -- the whole evaluation ---------------------------------------------------------

    def run(self) -> Report:
        try:
            source = open(self.solution, encoding="utf-8", errors="replace").read()
        except OSError as exc:
            self.report.error = f"cannot read the candidate {self.solution}: {exc}"
            return self.report
        self._findings(static.scan(source, self.p.library_ops, os.path.basename(self.solution)))
        if self.cfg.mode == "gpu" and self.cfg.time_it:
            # before any worker exists: work the candidate left on the GPU cannot lower them
            self._peaks = self.cfg.peaks or sol.peaks(write_cache=False)
            self.report.extra["peaks"] = self._peaks
        gate = self.cfg.gate or _ALONE
        with tempfile.TemporaryDirectory(prefix="threadlab-kernels-") as tmp:
            workers: list[WorkerProcess] = []
            try:
                with gate.shared():  # start-up, compiling, checks: other evaluations may run beside
                    cand = self._start(workers, "candidate", self.solution, tmp)
                    base = None
                    if self.cfg.time_it and self.cfg.mode == "gpu":  # compiles while the candidate is checked
                        base = self._baseline(workers, tmp)
                    self._hello(cand)
                    timed = self._correctness(cand) and self.cfg.time_it
                    if timed:
                        base = base or self._baseline(workers, tmp)
                        self._hello(base)  # compiled before the GPU is ours alone
                if timed:
                    with gate.exclusive():
                        self._timing(cand, base)
                cand.request({"op": "status"}, self.cfg.call_timeout_s)
                self._worker_findings(cand)
            except CandidateError as exc:
                self.report.error = str(exc)
            except channel.ChannelError as exc:
                if exc.garbled:
                    self.fail("runtime.result_channel", f"the worker's channel carried something else than the "
                              f"protocol (candidate code writing into it?): {exc}")
                self.report.error = f"{self.p.name}: the candidate's worker failed: {exc}"
            finally:
                if workers:
                    self._worker_findings(workers[0])
                    if workers[0].excused:  # a claim of the worker's, shown, never trusted
                        self.report.extra["triton_excused"] = workers[0].excused
                with gate.shared():  # a worker's exit frees GPU memory: not while another times
                    for w in workers:
                        w.close()
        if self.report.error:
            self.report.metric = None
        return self.report

    def _start(self, workers: list, role: str, solution: str | None, tmp: str) -> WorkerProcess:
        w = WorkerProcess(self.p, self.cfg.mode, role, solution, tmp)
        workers.append(w)
        return w

    def _baseline(self, workers: list, tmp: str) -> WorkerProcess:
        shapes = self.cfg.timed_shapes or self.p.timed_shapes(self.cfg.mode)
        w = WorkerProcess(self.p, self.cfg.mode, "baseline", None, tmp, shapes if self.cfg.compile_baseline else ())
        workers.append(w)
        return w

    def _hello(self, w: WorkerProcess) -> None:
        role = w.role
        try:
            w.wait_hello(self.cfg.startup_timeout_s)
        except channel.ChannelError as exc:
            if exc.garbled:
                self.fail("runtime.result_channel", f"the worker's channel carried something else than the "
                          f"protocol while it started (candidate code writing into it?): {exc}")
            raise CandidateError(f"{self.p.name}: the {role} worker did not start: {exc}") from None
        if "error" in w.hello:
            detail = str(w.hello.get("detail", "")).strip()
            last = detail.splitlines()[-1] if detail else ""
            what = "does not import" if w.hello.get("error") == "import" else "failed to start"
            raise CandidateError(f"{self.p.name}: the {role} {what}: {last}\n{detail}")

    # -- correctness ------------------------------------------------------------------

    def _inputs(self, shape: Shape, seed: int) -> tuple[torch.Tensor, ...]:
        return self.p.make_inputs(shape, generator(seed, self.device), self.device, self.dtype)

    def _reference(self, inputs) -> tuple[torch.Tensor, ...]:
        return as_tuple(self.p.reference(*(x.clone() for x in inputs)))  # on pristine clones

    def _call_ok(self, reply: dict, ref: tuple, where: str) -> bool:
        if "error" in reply:
            detail = str(reply.get("detail", "")).strip()
            last = detail.splitlines()[-1] if detail else reply["error"]
            raise CandidateError(f"{self.p.name}: the candidate raised on {where}: {last}\n{detail[-2000:]}")
        outs = reply.get("outputs")
        if not isinstance(outs, list):
            raise channel.ChannelError("a call reply without outputs")
        want_tuple = len(ref) > 1
        if len(outs) != len(ref) or bool(reply.get("tuple")) != want_tuple:
            self.fail("correct.type", f"{where}: returned {len(outs)} output(s)"
                      f"{' in a tuple' if reply.get('tuple') else ''}; expected "
                      f"{'a tuple of ' + str(len(ref)) if want_tuple else 'one torch.Tensor'}")
            return False
        ok = True
        for i, (o, r) in enumerate(zip(outs, ref)):
            if o.get("type") != "torch.Tensor":
                self.fail("correct.type", f"{where}: output {i} is a {o.get('type')}, not exactly torch.Tensor "
                          "(subclasses and lazy tensors are refused)", type=o.get("type"))
                ok = False
            elif o.get("shape") != list(r.shape):
                self.fail("correct.shape", f"{where}: output {i} has shape {o.get('shape')}, expected {list(r.shape)}")
                ok = False
            elif o.get("dtype") != _dtype_name(r.dtype):
                self.fail("correct.dtype", f"{where}: output {i} is {o.get('dtype')}, expected {_dtype_name(r.dtype)}")
                ok = False
        return ok

    def _fetch(self, w: WorkerProcess, msg: dict, like: torch.Tensor, sample_n: int) -> tuple[torch.Tensor, Any]:
        """A tensor of the worker's, whole or on a random sample chosen now; with the index."""
        nbytes = like.numel() * like.element_size()
        idx = None
        if nbytes > self.cfg.full_fetch_bytes or sample_n < like.numel():
            seed = secrets.randbits(62)
            msg = {**msg, "sample": {"seed": seed, "n": sample_n}}
            idx = sample_index(like.numel(), seed, sample_n, self.device)
        reply, blobs, _ = w.request({"op": "fetch", **msg}, self.cfg.call_timeout_s)
        if "error" in reply or len(blobs) != 1:
            raise channel.ChannelError(f"fetch failed: {reply.get('detail', reply)}")
        shape = tuple(like.shape) if idx is None else (idx.numel(),)
        return channel.tensor_from(blobs[0], like.dtype, shape, self.device), idx

    def _check_outputs(self, w, slot, ref, where, check=None) -> bool:
        ok = True
        for j, r in enumerate(ref):
            out, idx = self._fetch(w, {"slot": slot, "kind": "outputs", "which": j}, r, self.cfg.sample_n)
            want = r if idx is None else r.reshape(-1)[idx]
            tol = self.p.tolerance(r.dtype, self.cfg.mode)
            ok &= self._findings(checks.compare(out, want, tol, f"{where} output {j}", check))
        return ok

    def _check_inputs(self, w, slot, pristine, where) -> bool:
        for i, x in enumerate(pristine):
            after, idx = self._fetch(w, {"slot": slot, "kind": "inputs", "which": i}, x, self.cfg.sample_n)
            if not checks.unchanged(after, x if idx is None else x.reshape(-1)[idx]):
                self.fail("correct.inputs_unchanged", f"{where}: input {i} was modified by the call")
                return False
        return True

    def _correctness(self, w: WorkerProcess) -> bool:
        slot = 0
        for shape in self.cfg.correct_shapes or self.p.shapes(self.cfg.mode):
            for r in range(self.cfg.rounds):
                where = f"shape {label(shape)} round {r + 1}"
                seed = secrets.randbits(62)  # secret, fresh: nothing to predict
                inputs = self._inputs(shape, seed)
                pristine = tuple(x.clone() for x in inputs)
                ref = self._reference(inputs)
                specs = [[list(t.shape), _dtype_name(t.dtype)] for t in ref]
                reply, _, _ = w.request({"op": "call", "shape": shape, "seed": seed, "slot": slot, "out_specs": specs},
                                        self.cfg.call_timeout_s)
                if not (self._call_ok(reply, ref, where) and self._check_outputs(w, slot, ref, where)
                        and self._check_inputs(w, slot, pristine, where)):
                    return False
                if r == 0:  # first, before any address could be reused by a later round
                    for frac in (self.cfg.probe_frac, 0.0):
                        if not self._probe(w, slot, pristine, ref, specs, frac, where):
                            return False
                        pristine = self._probed
                        ref = self._probed_ref
                w.request({"op": "drop", "slot": slot}, self.cfg.call_timeout_s)
                slot += 1
        return True

    def _probe(self, w, slot, before, ref_before, specs, frac, where) -> bool:
        """The same input tensors (same addresses) with some values new, in place: a tenth of
        them, then a single one. Where the reference changed, the output must change with
        it; an output replayed by pointer or by a fingerprint of the inputs does not."""
        seed = secrets.randbits(62)
        mutated = tuple(x.clone() for x in before)
        mutate_(mutated, seed, frac)
        ref = self._reference(mutated)
        self._probed, self._probed_ref = mutated, ref
        reply, _, _ = w.request({"op": "probe", "slot": slot, "new_slot": slot, "seed": seed, "frac": frac,
                                 "out_specs": specs}, self.cfg.call_timeout_s)
        where = f"{where}, replay probe ({'one value' if frac == 0 else f'{frac:.0%} of values'} changed in place)"
        if not self._call_ok(reply, ref, where):
            return False
        for j, (r, r0) in enumerate(zip(ref, ref_before)):
            out, idx = self._fetch(w, {"slot": slot, "kind": "outputs", "which": j}, r, self.cfg.sample_n)
            want = r if idx is None else r.reshape(-1)[idx]
            old = r0 if idx is None else r0.reshape(-1)[idx]
            tol = self.p.tolerance(r.dtype, self.cfg.mode)
            if not self._findings(checks.compare(out, want, tol, f"{where} output {j}", "correct.replay_probe")):
                return False
            changed = checks.changed(want, old, tol)
            if changed.any() and checks.compare(out[changed], want[changed], replace(tol, match=0.99),
                                                f"{where} output {j}"):
                self.fail("correct.replay_probe", f"{where} output {j}: the values that had to change did not "
                          "(an output replayed from an earlier call)", changed=int(changed.sum()))
                return False
        return True

    # -- timing -----------------------------------------------------------------------

    def _time(self, w: WorkerProcess, impl: str, n: int, keep: bool = False) -> tuple[dict, list[int], float]:
        seeds = [secrets.randbits(62) for _ in range(n)]
        reply, _, wall = w.request({"op": "time", "impl": impl, "seeds": seeds, "keep": keep,
                                    "hide_launch": self.cfg.hide_launch}, self.cfg.call_timeout_s)
        if "error" in reply:
            if w.role == "baseline":
                return {}, seeds, wall
            detail = str(reply.get("detail", "")).strip()
            raise CandidateError(f"{self.p.name}: the candidate raised while timed: "
                                 f"{detail.splitlines()[-1] if detail else reply['error']}")
        for key in ("main_ms", "total_ms", "host_ms"):
            xs = reply.get(key)
            if not (isinstance(xs, list) and len(xs) == n and all(isinstance(x, (int, float)) for x in xs)):
                raise channel.ChannelError(f"a timing reply without {n} numbers in {key}")
        return reply, seeds, wall

    def _timing(self, cand: WorkerProcess, base: WorkerProcess) -> None:
        cfg = self.cfg
        peaks = self._peaks if cfg.mode == "gpu" else None
        rows = []
        impls = ["eager"] + (["compiled"] if cfg.mode == "gpu" and cfg.compile_baseline else [])
        for shape in cfg.timed_shapes or self.p.timed_shapes(cfg.mode):
            for w in (cand, base):
                w.request({"op": "prepare", "shape": shape}, cfg.call_timeout_s)
            self._time(cand, "candidate", cfg.warmup)
            for impl in impls:
                self._time(base, impl, cfg.warmup)
            got: dict[str, dict[str, list]] = {k: {"main_ms": [], "total_ms": [], "host_ms": [], "hidden": []}
                                               for k in ["null", "candidate", *impls]}
            walls = {"null": 0.0, "candidate": 0.0}
            cand_seeds: list[int] = []
            per = max(1, cfg.iters // cfg.interleave)
            for _ in range(cfg.interleave):  # interleaved: drifting clocks hit all alike
                for impl in ("null", "candidate"):
                    reply, seeds, wall = self._time(cand, impl, per, keep=impl == "candidate")
                    walls[impl] += wall
                    if impl == "candidate":
                        cand_seeds += seeds
                    for k in got[impl]:
                        got[impl][k] += reply.get(k, [])
                for impl in impls:
                    reply, _, _ = self._time(base, impl, per)
                    for k in got[impl]:
                        got[impl][k] += reply.get(k, [])
            self._recheck_timed(cand, shape, cand_seeds)
            cand.request({"op": "drop", "slot": -1, "timed": True}, cfg.call_timeout_s)
            rows.append(self._score_shape(shape, got, walls, peaks))
        self.report.extra["shapes"] = rows
        scores = [r["S"] for r in rows]
        self.report.metric = sum(scores) / len(scores) if scores else None

    def _recheck_timed(self, w: WorkerProcess, shape: Shape, seeds: list[int]) -> None:
        """Every timed call's output, after the loop, against the reference of its inputs."""
        for i, seed in enumerate(seeds):
            ref = self._reference(self._inputs(shape, seed))
            for j, r in enumerate(ref):
                out, idx = self._fetch(w, {"slot": "timed", "index": i, "which": j}, r, self.cfg.timed_sample_n)
                want = r if idx is None else r.reshape(-1)[idx]
                found = checks.compare(out, want, self.p.tolerance(r.dtype, self.cfg.mode),
                                       f"timed call {i + 1} output {j}", check="correct.timed_outputs")
                if found:
                    self._findings(found)
                    return

    def _score_shape(self, shape: Shape, got: dict, walls: dict, peaks: dict | None) -> dict[str, Any]:
        cfg, where = self.cfg, label(shape)
        c, n = got["candidate"], got["null"]
        # the events lie inside the host interval; the worker's host times against ours
        for impl in ("candidate",):
            for m, t, h in zip(got[impl]["main_ms"], got[impl]["total_ms"], got[impl]["host_ms"]):
                if m > h + 0.05 or t > h + 0.05 or m < 0:
                    self.fail("timing.host_clock", f"{where}: an event interval ({max(m, t):.4f} ms) is longer "
                              f"than the host interval around it ({h:.4f} ms)")
                    break
        ours = walls["candidate"] - walls["null"]
        claimed = sum(c["host_ms"]) - sum(n["host_ms"])
        slack = 1.0 * cfg.interleave  # pipe and scheduling noise, ms
        if claimed < 0.5 * ours - slack:
            self.fail("timing.host_clock", f"{where}: the worker's calls took {claimed:.3f} ms by its account, "
                      f"{ours:.3f} ms by the evaluator's clock", claimed_ms=claimed, measured_ms=ours)
        gap = _median([t - m for t, m in zip(n["total_ms"], n["main_ms"])]) if cfg.mode == "gpu" else 0.0
        t_main = _median(c["main_ms"])
        side = _median([t - m for t, m in zip(c["total_ms"], c["main_ms"])]) - gap
        t_k = t_main
        if cfg.mode == "gpu" and side > max(0.1 * t_main, 0.01):
            self.fail("timing.side_stream", f"{where}: {side:.4f} ms of work still ran after the calling stream "
                      "was done (another stream); timed in full", side_ms=side)
            t_k = _median(c["total_ms"]) - gap
        t_eager = _median(got["eager"]["main_ms"])
        t_comp = _median(got["compiled"]["main_ms"]) if "compiled" in got and got["compiled"]["main_ms"] else None
        t_b = min(t for t in (t_eager, t_comp) if t is not None and not math.isnan(t))
        inputs = self._inputs(shape, 0)
        flops, nbytes = self.p.flops(shape), self.p.bytes(shape, inputs, self._reference(inputs))
        t_sol = sol.sol_ms(flops, nbytes, peaks) if peaks else 0.0
        s = sol.score(t_k, t_b, t_sol)
        if peaks and t_k < t_sol:
            self.fail("sol.below_sol", f"{where}: T_k {t_k:.4f} ms is below the speed of light {t_sol:.4f} ms",
                      t_k_ms=t_k, t_sol_ms=t_sol)
        if t_b / t_k > cfg.speedup_cap:
            self.fail("sol.speedup", f"{where}: {t_b / t_k:.1f}x faster than the baseline (cap "
                      f"{cfg.speedup_cap:g}x): flagged for a person to check", speedup=t_b / t_k)
        return {"shape": where, "T_k_ms": t_k, "T_b_ms": t_b, "T_eager_ms": t_eager, "T_compiled_ms": t_comp,
                "T_SOL_ms": t_sol, "S": s, "speedup": t_b / t_k, "flops": flops, "bytes": nbytes,
                "side_ms": side if cfg.mode == "gpu" else 0.0,
                # the share of timed calls whose launch the spin hid (kernels/timing.py)
                "launch_hidden": {impl: _share(got[impl].get("hidden", [])) for impl in got if impl != "null"}}


def evaluate(problem: str, solution: str, cfg: Config | None = None) -> Report:
    """Check, time and score `solution` (a path) for `problem`; never raises for a bad candidate."""
    cfg = cfg or Config()
    prob = get(problem)
    report = Evaluation(prob, solution, cfg).run()
    report.extra.update(mode=cfg.mode, metric_kind="sol_score" if cfg.mode == "gpu" else "cpu_interpreter_score",
                        device=torch.cuda.get_device_name() if cfg.mode == "gpu" else "cpu (TRITON_INTERPRET=1)")
    if cfg.mode == "cpu":
        report.extra["note"] = ("CPU only: the interpreter's time against eager PyTorch on the CPU, with no "
                                "speed-of-light bound; it says nothing about GPU speed")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", required=True)
    ap.add_argument("--solution", default="solution.py")
    ap.add_argument("--mode", choices=("cpu", "gpu"))
    args = ap.parse_args()
    fd = os.environ.pop("THREADLAB_RESULT_FD", None)  # never in a worker's environment
    protected = protect_process()
    params = json.loads(os.environ.get("THREADLAB_PARAMS") or "{}")
    mode = args.mode or params.get("mode") or ("gpu" if torch.cuda.is_available() else "cpu")
    cfg = Config(mode=mode)
    for key in ("rounds", "warmup", "iters", "interleave"):
        if key in params:
            cfg = replace(cfg, **{key: int(params[key])})
    report = evaluate(args.problem, args.solution, cfg)
    report.extra["evaluator_non_dumpable"] = protected
    text = json.dumps(report.result())
    if fd is not None:
        with os.fdopen(int(fd), "w") as out:
            out.write(text)
    else:
        print(text)
    if report.error:
        print(report.error, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
