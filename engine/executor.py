"""The local executor: turns a Run into sandboxed processes on a Slot of this machine.

The contract a task's harness relies on
=======================================

Phase 1, the candidate run
    `req.run_command` runs with cwd = `<run_dir>/work`, a fresh copy of `req.files_dir`.
    Under the sandbox (engine/sandbox.py) only `<run_dir>` is writable, the files named in
    `req.protected` (relative to work/) are read-only and every path in
    `req.private_paths` is hidden (an empty directory, or a file that cannot be opened).
    There is no network and /tmp is a private tmpfs; everything else, $HOME included, is
    read-only, so tools that cache (Triton, torch.compile) need their cache directories
    pointed at /tmp or the run dir through `req.env`. Environment: the engine's own minus
    every `THREADLAB_*` and `ANTHROPIC_*` variable, plus the Slot's env, plus `req.env`,
    plus

    THREADLAB_SEED         the run's seed
    THREADLAB_DEADLINE     unix time at which the budget is spent (start + budget)
    THREADLAB_BUDGET_S     the budget in seconds
    THREADLAB_OUT          `<run_dir>/out`, an empty directory for artifacts (checkpoints...)
    THREADLAB_SAMPLES_FD   a pipe's write end: JSON lines {"step": int, "name": str,
                           "value": float}, the live measurements (sparklines)
    PYTHONUNBUFFERED=1

    stdout and stderr go to `<run_dir>/stdout.log` and `<run_dir>/stderr.log`. The run is
    its own process group; at budget + grace the executor's own clock sends SIGTERM to the
    group, then SIGKILL 2 s later (under bwrap the whole sandbox dies at once: its PID
    namespace goes with it). When the candidate exits, whatever it left running is killed,
    and the executor waits until it is really gone before it goes on (a GPU is free when
    execute() returns). Without bwrap a process that leaves the group (setsid) escapes.
    Sample lines that are not such JSON objects, have a non-finite value, or are longer
    than 64 KiB are ignored (counted); at most 100,000 samples are kept per run.

Phase 1 with an untimed set-up (`req.setup_s` > 0)
    The run gets THREADLAB_GATE_FD instead of THREADLAB_DEADLINE: one end of a Unix socket.
    It sets itself up (imports, compilation on dummy data), writes the line `ready`, and
    reads one message, `go DEADLINE JSON`, sent when its budget starts: DEADLINE is the
    unix time the budget is spent, JSON maps each path of `req.timed_paths` to its index
    among the descriptors that come with the message (SCM_RIGHTS; O_PATH handles, read a
    directory's files as /proc/self/fd/N/name). Those paths are hidden during the set-up,
    so the set-up cannot train on them. A set-up that outlasts `req.setup_s` is killed
    (TIMEOUT, extra.killed_in = "setup"); one that exits first ends the run as an exit
    would. The budget (and run_s) counts from go: slots that share a turn (two slots of
    one GPU) take turns at the part from go to exit, so that one run's set-up and the
    evaluation of another overlap a third's training. extra: setup_s, turn_wait_s and
    timed_at (the unix time of go).

Phase 2, the evaluator (only when the candidate exited 0 within its budget)
    `req.eval_command` runs in its own sandbox with cwd = `<run_dir>/eval/files`, a fresh
    read-only copy of `req.files_dir` (never the candidate's work dir). Only the rest of
    `<run_dir>/eval` is writable and the run directory is readable. Private paths are hidden here too: the
    evaluator gets each as an open file descriptor instead (THREADLAB_PRIVATE), which
    nothing it starts inherits or can reach (`req.sealed` paths are hidden in both
    phases). The evaluator is its sandbox's PID 1, with no reaper beside it, so once it
    makes itself non-dumpable (prctl PR_SET_DUMPABLE 0) no process it starts can open its
    file descriptors through /proc: it may then run the candidate's code in a child.
    Environment as in phase 1 (THREADLAB_DEADLINE is the evaluator's own, from
    `req.eval_timeout_s`; THREADLAB_BUDGET_S is still the candidate's budget), plus

    THREADLAB_OUT          the candidate's out dir
    THREADLAB_RUN_DIR      the run directory
    THREADLAB_WORK         the candidate's (possibly modified) work dir
    THREADLAB_RUN_S        how long the candidate ran, measured by the executor
    THREADLAB_PRIVATE      JSON {private path: "/proc/self/fd/N"}: read the private data
                           through these paths (a directory's files as .../N/name)
    THREADLAB_RESULT_FD    a pipe only the evaluator holds: it writes ONE JSON object
                           {"metric": float, "audits": [{"guard": str, "ok": bool,
                           "message": str, "evidence": {...}}], "extra": {...}}
                           (with "metric": null and "error": str when it cannot score)

    There is no samples pipe in phase 2. At most 1 MiB is read from the result pipe; its
    stdout and stderr go to `<run_dir>/eval.log`; `req.eval_timeout_s` is enforced like
    the budget. The metric comes ONLY from this result, never from what the candidate
    printed. The evaluator's "extra" is merged into the outcome's extra (the executor's
    own keys win).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from engine import sandbox
from engine.errors import ExecutorError
from engine.models import AuditResult, RunOutcome, RunRequest, RunStatus, Slot

log = logging.getLogger(__name__)

SampleSink = Callable[[list[dict[str, Any]]], Awaitable[None]]

FLUSH_S = 0.25  # a sample waits at most this long before it is handed to the sink
BATCH_MAX = 200
MAX_SAMPLES = 100_000
MAX_LINE = 64 * 1024
MAX_NAME = 200
MAX_RESULT = 1 << 20
KILL_AFTER_S = 2.0  # SIGTERM, then SIGKILL this much later
# After a process group is dead its pipes reach EOF at once, unless a process escaped the
# group (possible only without the sandbox); this bounds the wait for such a pipe.
PIPE_EOF_WAIT_S = 1.0
TAIL_LINES = 20
_READ_CHUNK = 64 * 1024
_STRIPPED_ENV_PREFIXES = ("THREADLAB_", "ANTHROPIC_")


# --------------------------------------------------------------------------- slots


def detect_slots(cpu_slots: int = 2, device: str = "cpu", per_gpu: int = 1) -> list[Slot]:
    """Slots of this machine: `per_gpu` per GPU (taking turns at the timed part of their
    runs), or `cpu_slots` CPU slots sharing the cores."""
    if device == "gpu":
        ids = _gpu_ids()
        if not ids:
            raise ExecutorError(
                "no GPU found (nvidia-smi -L lists none, or CUDA_VISIBLE_DEVICES is empty)",
                hint="check `nvidia-smi -L` and CUDA_VISIBLE_DEVICES, or use CPU slots",
            )
        if per_gpu < 1:
            raise ExecutorError(f"per_gpu must be at least 1, not {per_gpu}")
        return [Slot(f"gpu{i}" + (f".{k}" if k else ""), "gpu", (("CUDA_VISIBLE_DEVICES", ident),),
                     turn=f"gpu{i}")
                for i, ident in enumerate(ids) for k in range(per_gpu)]
    if device != "cpu":
        raise ExecutorError(f"unknown device {device!r}", hint="use 'cpu' or 'gpu'")
    if cpu_slots < 1:
        raise ExecutorError(f"cpu_slots must be at least 1, not {cpu_slots}")
    threads = str(max(1, (os.cpu_count() or 1) // cpu_slots))
    env = (("CUDA_VISIBLE_DEVICES", ""), ("MKL_NUM_THREADS", threads),
           ("OMP_NUM_THREADS", threads))
    return [Slot(f"cpu{i}", "cpu", env) for i in range(cpu_slots)]


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for ident in (part.strip() for part in visible.split(",")):
            if not ident or ident.startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on
            ids.append(ident)
        return ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi -L failed: %s", exc)
        return []
    return re.findall(r"^GPU (\d+):", done.stdout, flags=re.MULTILINE)


# --------------------------------------------------------------------------- samples


def _parse_sample(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    step, name, value = obj.get("step"), obj.get("name"), obj.get("value")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or abs(step) >= 2**63:
        return None
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value):  # the store keeps finite numbers only
        return None
    return {"step": step, "name": name, "value": value}


class _SampleStream:
    """Reads sample lines from a pipe and hands them to the sink in batches.

    Reading never waits for the sink, so a slow database cannot block the candidate on a
    full pipe; the sample cap bounds what piles up meanwhile.
    """

    def __init__(self, pipe: BinaryIO, sink: SampleSink):
        self._pipe = pipe
        self._sink = sink
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._eof = False
        self._partial = bytearray()
        self._skipping = False  # inside a line that grew past MAX_LINE
        self._transport: asyncio.BaseTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.accepted = 0
        self.bad = 0
        self.dropped = 0
        self.undelivered = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE)
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._pipe)
        self._tasks = [asyncio.create_task(self._read(reader)),
                       asyncio.create_task(self._deliver())]

    async def finish(self) -> None:
        """Wait for EOF (bounded), then for every sample to reach the sink."""
        reading, delivering = self._tasks
        _, pending = await asyncio.wait({reading}, timeout=PIPE_EOF_WAIT_S)
        if pending:
            log.warning("samples pipe still open after the run ended; closing it")
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        self._close()
        await delivering

    def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._close()

    def stats(self) -> dict[str, int]:
        return {"samples": self.accepted, "samples_bad": self.bad,
                "samples_dropped": self.dropped, "samples_undelivered": self.undelivered}

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._pipe.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(_READ_CHUNK):
                self._feed(chunk, time.time())
            if self._partial and not self._skipping:  # last line without a newline
                self._take(bytes(self._partial), time.time())
        finally:
            self._eof = True
            self._wake.set()

    def _feed(self, chunk: bytes, now: float) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._partial:
                piece = bytes(self._partial) + piece
                self._partial.clear()
            if len(piece) > MAX_LINE:
                self.bad += 1
                continue
            self._take(piece, now)
        if not self._skipping:
            self._partial += chunk[start:]
            if len(self._partial) > MAX_LINE:
                self._partial.clear()
                self._skipping = True
                self.bad += 1

    def _take(self, line: bytes, now: float) -> None:
        if not line.strip():
            return
        sample = _parse_sample(line)
        if sample is None:
            self.bad += 1
            return
        if self.accepted >= MAX_SAMPLES:
            self.dropped += 1
            return
        self.accepted += 1
        sample["t"] = now
        self._pending.append(sample)
        if len(self._pending) == 1 or len(self._pending) >= BATCH_MAX:
            self._wake.set()

    async def _deliver(self) -> None:
        while True:
            if not self._pending:
                if self._eof:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < BATCH_MAX and not self._eof:
                delay = self._pending[0]["t"] + FLUSH_S - time.time()
                if delay > 0:
                    self._wake.clear()  # woken early by a full batch or EOF
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue
            batch = self._pending[:BATCH_MAX]
            del self._pending[:BATCH_MAX]
            try:
                await self._sink(batch)
            except Exception:  # the run goes on; the loss is reported in extra
                log.exception("sample sink failed; %d samples lost", len(batch))
                self.undelivered += len(batch)


# --------------------------------------------------------------------------- helpers


async def _copy_tree(src: str, dst: Path) -> None:
    """Copy a directory off the event loop; reflinks make it near free on btrfs/xfs."""
    if not os.path.isdir(src):
        raise ExecutorError(f"files_dir {src} is not a directory")
    cp = shutil.which("cp")
    if cp is None or not sys.platform.startswith("linux"):
        shutil.copytree(src, dst, symlinks=True)
        return
    proc = await asyncio.create_subprocess_exec(
        cp, "-a", "--reflink=auto", "--", src, str(dst),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise ExecutorError(f"cannot copy {src} to {dst}: {err.decode(errors='replace').strip()}")


def _existing(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never followed) or a directory tree, if present.

    The candidate writes under the run directory: a directory it made unwritable or
    unreadable is opened up first (else every later attempt of the run would fail here,
    and the machine, not the candidate, would get the blame)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        for root, dirs, _files in os.walk(path, onerror=lambda exc: None):
            for name in dirs:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    with contextlib.suppress(OSError):
                        os.chmod(full, 0o700)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        shutil.rmtree(path)


def _open_log(path: Path) -> int:
    """A fresh log file; whatever the candidate left at that path (a symlink...) is removed."""
    _remove(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o644)


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _describe_exit(who: str, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"{who} was killed by signal {name} (exit code {code})"
    return f"{who} exited with code {code}"


def _clean_env(slot: Slot, req: RunRequest) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV_PREFIXES)}
    env.update(slot.env)
    env.update(req.env)
    env["THREADLAB_SEED"] = str(req.seed)
    env["THREADLAB_BUDGET_S"] = repr(float(req.budget_s))
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _read_capped(pipe: BinaryIO, into: bytearray, cap: int) -> None:
    """Read the pipe into `into` until EOF or until more than `cap` bytes arrived."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while len(into) <= cap:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                return
            into += chunk
    finally:
        transport.close()


@dataclass(frozen=True)
class _Result:
    metric: float | None
    audits: tuple[AuditResult, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _parse_audit(item: Any) -> AuditResult:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    guard, ok = item.get("guard"), item.get("ok")
    message, evidence = item.get("message", ""), item.get("evidence", {})
    if not isinstance(guard, str) or not guard:
        raise ValueError("'guard' must be a non-empty string")
    if not isinstance(ok, bool):
        raise ValueError("'ok' must be true or false")
    if not isinstance(message, str):
        raise ValueError("'message' must be a string")
    if not isinstance(evidence, dict):
        raise ValueError("'evidence' must be an object")
    return AuditResult(guard=guard, ok=ok, message=message, evidence=evidence)


def parse_result(data: bytes) -> _Result:
    """The evaluator's result, or the reason it is not usable (in `error`)."""
    if not data.strip():
        return _Result(None, error="evaluator wrote no result")
    if len(data) > MAX_RESULT:
        return _Result(None, error="evaluator result is larger than 1 MiB")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return _Result(None, error=f"evaluator result is not JSON: {exc}")
    if not isinstance(obj, dict):
        return _Result(None, error="evaluator result is not a JSON object")
    raw_audits, extra = obj.get("audits", []), obj.get("extra", {})
    if not isinstance(raw_audits, list):
        return _Result(None, error="evaluator result: 'audits' must be a list")
    if not isinstance(extra, dict):
        return _Result(None, error="evaluator result: 'extra' must be an object")
    audits = []
    for i, item in enumerate(raw_audits):
        try:
            audits.append(_parse_audit(item))
        except ValueError as exc:
            return _Result(None, error=f"evaluator result: audits[{i}]: {exc}")
    found = _Result(None, tuple(audits), extra)
    metric = obj.get("metric")
    if metric is None:  # the evaluator may say why (e.g. the candidate's model failed)
        reason = obj.get("error")
        return _Result(None, found.audits, extra, reason[:2000] if isinstance(reason, str) and reason
                       else "evaluator result has no metric")
    if isinstance(metric, bool) or not isinstance(metric, (int, float)):
        return _Result(None, found.audits, extra, f"metric is not a number: {metric!r}")
    if not math.isfinite(metric):
        return _Result(None, found.audits, extra, f"metric is {metric}")
    return _Result(float(metric), found.audits, extra)


# --------------------------------------------------------------------------- executor


@dataclass
class _Active:
    """A run in progress: its current process group and why it was stopped, if it was."""

    group: sandbox.Confined | None = None
    stop: RunStatus | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Exit:
    code: int
    timed_out: bool
    seconds: float
    in_setup: bool = False  # it ended before its budget started


_STOP_ERRORS = {
    RunStatus.CANCELLED: "cancelled",
    RunStatus.INTERRUPTED: "interrupted: the executor shut down while the run was going on",
}


async def _unless_it_exits(awaitable: Awaitable[Any], group: sandbox.Confined,
                           timeout: float | None = None) -> asyncio.Future:
    """Run `awaitable` until it completes, the group's process exits or `timeout` passes;
    the task comes back done or cancelled (see _succeeded)."""
    task = asyncio.ensure_future(awaitable)
    exited = asyncio.ensure_future(group.proc.wait())
    try:
        await asyncio.wait({task, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, exited, return_exceptions=True)
    return task


def _succeeded(task: asyncio.Future) -> bool:
    return not task.cancelled() and task.exception() is None


class LocalExecutor:
    """Runs on this machine's Slots, one process group (and sandbox) per phase of a Run."""

    def __init__(self, slots: Sequence[Slot]):
        self.slots = tuple(slots)
        self._turns: dict[str, asyncio.Lock] = {}  # Slot.turn -> who holds the timed turn
        self._active: dict[int, _Active] = {}
        self._closed = False

    async def execute(self, req: RunRequest, slot: Slot, on_samples: SampleSink) -> RunOutcome:
        """Both phases of one Run. Candidate problems come back as FAILED/TIMEOUT outcomes;
        this machine's problems (no sandbox binary, a full disk) raise ExecutorError."""
        if req.run_id in self._active:
            raise ExecutorError(f"run {req.run_id} is already executing")
        active = _Active()
        self._active[req.run_id] = active
        try:
            return await self._execute(req, slot, on_samples, active)
        finally:
            if active.group is not None:
                active.group.discard()  # a no-op unless we were cancelled mid-run
            del self._active[req.run_id]
            active.done.set()

    async def cancel(self, run_id: int) -> bool:
        """Stop a run now; it returns CANCELLED. False when no such run is going on."""
        active = self._active.get(run_id)
        if active is None:
            return False
        active.stop = active.stop or RunStatus.CANCELLED
        if active.group is not None:
            active.group.kill(signal.SIGKILL)
        return True

    async def shutdown(self) -> None:
        """Kill every run (they return INTERRUPTED) and wait for their execute() to end."""
        self._closed = True
        for active in self._active.values():
            active.stop = active.stop or RunStatus.INTERRUPTED
            if active.group is not None:
                active.group.kill(signal.SIGKILL)
        waits = [asyncio.ensure_future(a.done.wait()) for a in self._active.values()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=10)
            for fut in pending:
                fut.cancel()

    # ------------------------------------------------------------------ phases

    async def _execute(self, req: RunRequest, slot: Slot, on_samples: SampleSink,
                       active: _Active) -> RunOutcome:
        started = time.time()
        extra: dict[str, Any] = {"sandboxed": sandbox.bwrap_path() is not None,
                                 "run_s": None, "eval_s": None, "samples": 0,
                                 "samples_bad": 0, "samples_dropped": 0}

        def outcome(status: RunStatus, error: str = "", exit_code: int | None = None,
                    metric: float | None = None,
                    audits: tuple[AuditResult, ...] = ()) -> RunOutcome:
            if active.stop is not None:  # cancel()/shutdown() wins over what happened
                status, error, metric = active.stop, _STOP_ERRORS[active.stop], None
            return RunOutcome(status=status, metric=metric, exit_code=exit_code, error=error,
                              started_at=started, ended_at=time.time(), audits=audits,
                              extra=extra)

        if self._closed:
            active.stop = RunStatus.INTERRUPTED
            return outcome(RunStatus.INTERRUPTED)
        run_dir = Path(req.run_dir).absolute()
        work, out = run_dir / "work", run_dir / "out"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            for path in (work, out, run_dir / "eval"):
                _remove(path)
            await _copy_tree(req.files_dir, work)
            out.mkdir()
        except OSError as exc:
            raise ExecutorError(f"cannot prepare run directory {run_dir}: {exc}") from exc
        if active.stop is not None:
            return outcome(active.stop)

        env = _clean_env(slot, req)
        started = time.time()  # outcome() reports phase 1's start, not the copying
        first = await self._run_candidate(req, env, run_dir, on_samples, active, slot, extra)
        extra["run_s"] = None if first.in_setup else round(first.seconds, 3)
        if active.stop is not None:
            return outcome(active.stop, exit_code=first.code)
        if first.timed_out and first.in_setup:
            extra["killed_in"] = "setup"
            return outcome(RunStatus.TIMEOUT, f"killed in its untimed set-up after {req.setup_s:g} s "
                           "(budget.setup): it never signalled ready", first.code)
        if first.in_setup and first.code == 0:
            return outcome(RunStatus.FAILED, "the candidate exited before its budget started (the run "
                           "command must write `ready` to THREADLAB_GATE_FD, then wait for go)", 0)
        if first.timed_out:
            return outcome(RunStatus.TIMEOUT, f"killed at budget {req.budget_s:g} s + grace "
                           f"{req.grace_s:g} s", first.code)
        if first.code != 0:
            tail = _tail(run_dir / "stderr.log")
            return outcome(RunStatus.FAILED, f"{_describe_exit('candidate', first.code)}; "
                           f"last lines of stderr.log:\n{tail}", first.code)

        env["THREADLAB_RUN_S"] = repr(first.seconds)
        second = await self._run_evaluator(req, env, run_dir, active)
        exit_, data = second
        extra["eval_s"] = round(exit_.seconds, 3)
        if active.stop is not None:
            return outcome(active.stop, exit_code=first.code)
        result = parse_result(bytes(data))
        extra.update({k: v for k, v in result.extra.items() if k not in extra})
        if exit_.timed_out:
            return outcome(RunStatus.FAILED, f"evaluator timed out after "
                           f"{req.eval_timeout_s:g} s", first.code, audits=result.audits)
        if len(data) > MAX_RESULT:  # we stopped reading: its write failed with EPIPE
            return outcome(RunStatus.FAILED, result.error, first.code)
        if exit_.code != 0:
            tail = _tail(run_dir / "eval.log")
            return outcome(RunStatus.FAILED, f"{_describe_exit('evaluator', exit_.code)}; "
                           f"last lines of eval.log:\n{tail}", first.code,
                           audits=result.audits)
        if result.metric is None:
            return outcome(RunStatus.FAILED, result.error, first.code, audits=result.audits)
        return outcome(RunStatus.DONE, "", first.code, result.metric, result.audits)

    async def _run_candidate(self, req: RunRequest, env: dict[str, str], run_dir: Path,
                             on_samples: SampleSink, active: _Active, slot: Slot,
                             extra: dict[str, Any]) -> _Exit:
        """Phase 1: how the candidate ended. ExecutorError when it cannot be started."""
        work, out = run_dir / "work", run_dir / "out"
        read_fd, write_fd = os.pipe()
        samples = _SampleStream(os.fdopen(read_fd, "rb", buffering=0), on_samples)
        gate = child_gate = None
        env = env | {"THREADLAB_OUT": str(out), "THREADLAB_SAMPLES_FD": str(write_fd)}
        if req.setup_s > 0:
            gate, child_gate = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            env["THREADLAB_GATE_FD"] = str(child_gate.fileno())
        else:
            env["THREADLAB_DEADLINE"] = repr(time.time() + req.budget_s)
        stdout = stderr = -1
        turn = self._turns.setdefault(slot.turn or slot.name, asyncio.Lock())
        try:
            async with contextlib.AsyncExitStack() as held:
                if gate is None:  # the whole run is timed: it takes its turn before it starts
                    await held.enter_async_context(turn)
                    if active.stop is not None:  # cancelled while it waited
                        return _Exit(-signal.SIGKILL, False, 0.0, in_setup=True)
                await samples.start()
                stdout = _open_log(run_dir / "stdout.log")
                stderr = _open_log(run_dir / "stderr.log")
                hidden = [*req.private_paths, *req.sealed, *(req.timed_paths if gate else ())]
                try:
                    active.group = await sandbox.spawn(
                        req.run_command, cwd=str(work), writable=[str(run_dir)],
                        readonly=[*_existing(req.readable), *(str(work / p) for p in req.protected)],
                        hidden=hidden, env=env, stdout=stdout, stderr=stderr,
                        pass_fds=(write_fd, *([child_gate.fileno()] if child_gate else [])))
                except OSError as exc:  # this machine's fault (sandbox, interpreter), not the candidate's
                    raise ExecutorError(f"cannot start the candidate {list(req.run_command)}: {exc}") from exc
                finally:
                    # Our copies of the child's ends must go, or the pipe never reaches EOF.
                    os.close(write_fd)
                    write_fd = -1
                    if child_gate is not None:
                        child_gate.close()
                if gate is not None:
                    t0 = time.monotonic()
                    early = await self._set_up(active.group, gate, req.setup_s, active)
                    extra["setup_s"] = round(time.monotonic() - t0, 3)
                    if early is not None:
                        return early
                    t0 = time.monotonic()
                    if not await self._take_turn(turn, active.group):  # it ended while it waited
                        ended = await self._wait(active.group, req.setup_s, active)
                        return _Exit(ended.code, False, ended.seconds, in_setup=True)
                    held.callback(turn.release)
                    extra["turn_wait_s"] = round(time.monotonic() - t0, 3)
                    self._go(gate, req)
                extra["timed_at"] = time.time()
                ended = await self._wait(active.group, req.budget_s + req.grace_s, active)
            await samples.finish()
            return ended
        finally:
            samples.abort()
            extra.update(samples.stats())
            if gate is not None:
                gate.close()
            for fd in (write_fd, stdout, stderr):
                if fd >= 0:
                    os.close(fd)

    async def _set_up(self, group: sandbox.Confined, gate: socket.socket, limit_s: float,
                      active: _Active) -> _Exit | None:
        """Wait for the run's `ready` line: None once it came; else how the run ended (it
        exited, or it was killed at `limit_s`)."""
        gate.setblocking(False)
        loop = asyncio.get_running_loop()
        line = bytearray()

        async def ready() -> bool:
            while b"\n" not in line and len(line) < 64:
                chunk = await loop.sock_recv(gate, 64)
                if not chunk:
                    return False
                line.extend(chunk)
            return line.split(b"\n")[0].strip() == b"ready"

        t0 = time.monotonic()
        said = await _unless_it_exits(ready(), group, limit_s)
        if _succeeded(said) and said.result() and group.proc.returncode is None:
            return None
        # It closed the gate, said something else or exited: it ends here, within its limit.
        ended = await self._wait(group, max(0.0, limit_s - (time.monotonic() - t0)), active)
        return _Exit(ended.code, ended.timed_out, ended.seconds, in_setup=True)

    @staticmethod
    async def _take_turn(turn: asyncio.Lock, group: sandbox.Confined) -> bool:
        """Wait for the slot's turn at the timed part: True once held; False when the run
        ended first (killed by cancel(), or it exited), and then the turn is not held."""
        held = _succeeded(await _unless_it_exits(turn.acquire(), group))
        if held and group.proc.returncode is not None:
            turn.release()
            held = False
        return held

    @staticmethod
    def _go(gate: socket.socket, req: RunRequest) -> None:
        """Start the run's budget: the deadline, and handles on the paths it may now read."""
        paths = _existing(req.timed_paths)
        fds = [os.open(p, os.O_PATH) for p in paths]
        try:
            message = f"go {time.time() + req.budget_s!r} {json.dumps({p: i for i, p in enumerate(paths)})}\n"
            gate.setblocking(True)
            socket.send_fds(gate, [message.encode()], fds)
        except OSError:
            pass  # it died in between: _wait() sees the exit
        finally:
            for fd in fds:
                os.close(fd)

    async def _run_evaluator(self, req: RunRequest, env: dict[str, str], run_dir: Path,
                             active: _Active) -> tuple[_Exit, bytearray]:
        """Phase 2: how the evaluator ended and what it wrote. ExecutorError when it cannot start."""
        eval_dir = run_dir / "eval"
        files = eval_dir / "files"
        try:
            _remove(eval_dir)  # the candidate could write there; start from nothing
            eval_dir.mkdir()
            await _copy_tree(req.files_dir, files)
        except (OSError, ExecutorError) as exc:
            raise ExecutorError(f"cannot prepare the evaluator's files: {exc}") from exc
        read_fd, write_fd = os.pipe()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        data = bytearray()
        env = env | {
            "THREADLAB_DEADLINE": repr(time.time() + req.eval_timeout_s),
            "THREADLAB_OUT": str(run_dir / "out"),
            "THREADLAB_RUN_DIR": str(run_dir),
            "THREADLAB_WORK": str(run_dir / "work"),
            "THREADLAB_RESULT_FD": str(write_fd),
        }
        reading = asyncio.create_task(_read_capped(pipe, data, MAX_RESULT))
        log_fd = -1
        private: dict[str, int] = {}  # path -> an O_PATH descriptor of it
        try:
            for path in _existing(req.private_paths):
                private[path] = os.open(path, os.O_PATH)
            env["THREADLAB_PRIVATE"] = json.dumps({p: f"/proc/self/fd/{fd}" for p, fd in private.items()})
            log_fd = _open_log(run_dir / "eval.log")
            try:
                # The run dir is bound read-only too: under the host's /tmp it would
                # otherwise vanish behind the sandbox's own /tmp.
                # eval/files is read-only: it is the evaluator's sys.path[0], and what the
                # evaluator starts must not plant modules it would import later.
                active.group = await sandbox.spawn(
                    req.eval_command, cwd=str(files), writable=[str(eval_dir)],
                    readonly=[str(run_dir), str(files), *_existing(req.readable)],
                    hidden=[*req.private_paths, *req.sealed], env=env, stdout=log_fd,
                    stderr=log_fd, pass_fds=(write_fd, *private.values()), sole=True)
            except OSError as exc:
                raise ExecutorError(f"cannot start the evaluator {list(req.eval_command)}: {exc}") from exc
            finally:
                os.close(write_fd)
                write_fd = -1
            ended = await self._wait(active.group, req.eval_timeout_s, active)
            await asyncio.wait({reading}, timeout=PIPE_EOF_WAIT_S)
            return ended, data
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            pipe.close()
            for fd in (write_fd, log_fd, *private.values()):
                if fd >= 0:
                    os.close(fd)

    async def _wait(self, group: sandbox.Confined, limit_s: float,
                    active: _Active) -> _Exit:
        """Wait for the process, enforcing `limit_s` by our own clock.

        Returns once every process of the group (or sandbox) is gone, so the Slot is
        really free: the next run cannot meet a dying predecessor on its GPU.
        """
        proc = group.proc
        t0 = time.monotonic()
        timed_out = False
        try:
            async with asyncio.timeout(limit_s):
                await proc.wait()
        except TimeoutError:
            timed_out = active.stop is None
            group.kill(signal.SIGTERM)
            try:
                async with asyncio.timeout(KILL_AFTER_S):
                    await proc.wait()
            except TimeoutError:
                group.kill(signal.SIGKILL)
                await proc.wait()
        seconds = time.monotonic() - t0
        await group.reap()  # whatever it left behind
        assert proc.returncode is not None
        return _Exit(proc.returncode, timed_out, seconds)
