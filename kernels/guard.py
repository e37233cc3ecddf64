"""Runtime guards inside the worker process that runs a candidate.

Installed by trusted code before the candidate is imported; each finding is kept under
the name of the check that made it, and the worker reports them to the evaluator:

  runtime.patched       torch, timing or harness functions replaced (identity snapshot of
                        module and class attributes, taken before the import and compared
                        after it and after every command), or a torch/triton/time class
                        patched from candidate code (audit event object.__setattr__)
  runtime.threads       a thread started: Python threads and native ones (/proc/self/task)
  runtime.file_access   a file opened from candidate code outside the libraries, the
                        compiler caches and the candidate's own file; any fd reopened
  runtime.network       any socket from candidate code
  runtime.process       a process started from candidate code (ptxas and ldconfig, which
                        Triton runs to compile, excepted)
  runtime.library_op    the reference's library op called during a call (TorchFunctionMode)
  runtime.triton_launch no Triton kernel launched by a call
  runtime.triton_output an output whose memory no Triton kernel of that call was handed

The evaluator never relies on these alone: it checks the outputs itself, in its own
process, and cross-checks the timings against its own clock (see kernels/README.md).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

CHECKS = ("runtime.patched", "runtime.threads", "runtime.file_access", "runtime.network", "runtime.process",
          "runtime.library_op", "runtime.triton_launch", "runtime.triton_output")
_MAX_NOTES = 5
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "pty.spawn")
_ALLOWED_TOOLS = ("ptxas", "ldconfig", "cuobjdump", "nvdisasm")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def resolve(dotted: str) -> Any | None:
    """The object a dotted name like 'torch.nn.functional.rms_norm' names, or None."""
    parts = dotted.split(".")
    obj: Any = sys.modules.get(parts[0]) or __import__(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        nxt = getattr(obj, part, None)
        if nxt is None:
            try:
                nxt = __import__(".".join(parts[: i + 1]), fromlist=["_"])
            except ImportError:
                return None
        obj = nxt
    return obj


class _Probe(Exception):
    pass


class Guard:
    def __init__(self, candidate_file: str | None, library_ops: Iterable[str], cache_dirs: Iterable[str]):
        self.candidate = os.path.realpath(candidate_file) if candidate_file else None
        self.findings: dict[str, list[str]] = {name: [] for name in CHECKS}
        self.launches = 0
        self.launch_storages: set[int] = set()
        self.forbidden: dict[Any, str] = {}
        for name in library_ops:
            obj = resolve(name)
            if obj is not None:
                try:
                    self.forbidden[obj] = name
                except TypeError:  # unhashable: cannot be matched by identity
                    pass
        self.library_calls: list[str] = []
        # libraries and system files; never the working directory (the task's other files)
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(), *_package_dirs(),
                 "/usr", "/lib", "/lib64", "/etc", "/opt", "/proc/self", "/sys", "/dev", *cache_dirs}
        self.read_roots = tuple(sorted({os.path.realpath(r) for r in roots if r and os.path.isabs(r)}))
        self.write_roots = tuple(os.path.realpath(d) for d in cache_dirs)
        self._snapshot: dict[str, Any] = {}
        self._threads: set[int] = set()
        self._tasks = 0

    # -- findings ---------------------------------------------------------------------

    def note(self, check: str, message: str) -> None:
        notes = self.findings[check]
        if message not in notes and len(notes) < _MAX_NOTES:
            notes.append(message)

    def report(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.findings.items()}

    # -- installation -----------------------------------------------------------------

    def install(self, watched_modules: Iterable[Any], watched_classes: Iterable[type]) -> None:
        """Count Triton launches, hook audit events, snapshot identities and threads."""
        self._wrap_launchers()
        self._wrap_thread_start()
        sys.addaudithook(self._audit)
        self._watched = [(m.__name__, m) for m in watched_modules] + [
            (f"{c.__module__}.{c.__qualname__}", c) for c in watched_classes]
        self._snapshot = self._identities()
        self._threads = {t.ident for t in threading.enumerate()}
        self._tasks = _native_threads()

    def _identities(self) -> dict[str, Any]:
        found = {}
        for prefix, owner in self._watched:
            for key, value in list(vars(owner).items()):
                if callable(value) or isinstance(value, types.ModuleType):  # not data that changes
                    found[f"{prefix}.{key}"] = value
        return found

    def check_integrity(self) -> None:
        """Compare the snapshot and the threads with what was there before the candidate."""
        now = self._identities()
        changed = [k for k, v in self._snapshot.items() if now.get(k, _MISSING) is not v]
        for key in changed[:_MAX_NOTES]:
            self.note("runtime.patched", f"{key} was replaced after the candidate was imported")
        new = [t for t in threading.enumerate() if t.ident not in self._threads]
        for t in new:
            self.note("runtime.threads", f"a Python thread {t.name!r} was started")
        tasks = _native_threads()
        if tasks > self._tasks and not new:
            self.note("runtime.threads", f"{tasks - self._tasks} native thread(s) were started")

    def _wrap_thread_start(self) -> None:
        import _thread

        original = _thread.start_new_thread
        guard = self

        def start_new_thread(function, *args, **kwargs):
            guard.note("runtime.threads", f"a thread was started to run {getattr(function, '__qualname__', function)}")
            return original(function, *args, **kwargs)

        _thread.start_new_thread = start_new_thread
        threading._start_new_thread = start_new_thread  # what threading.Thread.start calls

    def _wrap_launchers(self) -> None:
        from triton.runtime import jit

        classes = [jit.JITFunction]
        try:
            from triton.runtime import interpreter

            classes.append(interpreter.InterpretedFunction)
        except ImportError:
            pass
        guard = self
        for cls in classes:
            original = cls.run
            if getattr(original, "_threadlab_counted", False):
                continue

            def run(self, *args, _original=original, **kwargs):
                if not kwargs.get("warmup", False):
                    guard.launches += 1
                    for a in (*args, *kwargs.values()):
                        if isinstance(a, torch.Tensor):
                            guard.launch_storages.add(a.untyped_storage().data_ptr())
                return _original(self, *args, **kwargs)

            run._threadlab_counted = True
            cls.run = run

    # -- audit events -----------------------------------------------------------------

    def _from_candidate(self) -> bool:
        if self.candidate is None:
            return False
        try:
            raise _Probe
        except _Probe as exc:  # a frame without sys._getframe, which is itself audited
            frame = exc.__traceback__.tb_frame.f_back
        depth = 0
        while frame is not None and depth < 200:
            if frame.f_code.co_filename == self.candidate:
                return True
            frame, depth = frame.f_back, depth + 1
        return False

    def _audit(self, event: str, args: tuple) -> None:
        if event == "open":
            self._on_open(args)
        elif event.startswith("socket."):
            if self._from_candidate():
                self.note("runtime.network", f"{event} {str(args)[:120]}")
        elif event in _PROCESS_EVENTS or event.startswith(("os.exec", "os.spawn")):
            exe = _executable(event, args)
            if os.path.basename(exe) not in _ALLOWED_TOOLS and self._from_candidate():
                self.note("runtime.process", f"{event} {exe[:120]}")
        elif event == "object.__setattr__":
            target = args[0] if args else None
            if isinstance(target, type) and str(getattr(target, "__module__", "")).startswith(
                    ("torch", "triton", "time", "threading", "kernels")) and self._from_candidate():
                self.note("runtime.patched", f"{target.__module__}.{target.__qualname__}.{args[1]} was set")

    def _on_open(self, args: tuple) -> None:
        path, mode, flags = (list(args) + [None, None, 0])[:3]
        if isinstance(path, int):
            if self._from_candidate():
                self.note("runtime.file_access", f"reopened file descriptor {path}")
            return
        if path is None:
            return
        real = os.path.realpath(os.fsdecode(path))
        if real == self.candidate:
            return
        writing = bool(mode and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        roots = self.write_roots if writing else self.read_roots
        if not _under(real, roots) and self._from_candidate():
            self.note("runtime.file_access", f"opened {real} for {'writing' if writing else 'reading'}")

    # -- a call -----------------------------------------------------------------------

    def spy(self) -> "_LibrarySpy":
        return _LibrarySpy(self)

    def check_outputs(self, outputs: tuple[torch.Tensor, ...], launches_before: int, storages: set[int]) -> None:
        if self.launches == launches_before:
            self.note("runtime.triton_launch", "a call launched no Triton kernel")
            return
        for i, out in enumerate(outputs):
            if out.numel() and out.untyped_storage().data_ptr() not in storages:
                self.note("runtime.triton_output", f"output {i} was not written by a Triton kernel of the call")


class _LibrarySpy(TorchFunctionMode):
    """Sees every torch function a call makes; records those on the problem's list."""

    def __init__(self, guard: Guard):
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = self.guard.forbidden.get(func) if _hashable(func) else None
        if name:
            self.guard.note("runtime.library_op", f"called {name}")
        return func(*args, **(kwargs or {}))


_MISSING = object()


def _executable(event: str, args: tuple) -> str:
    """The program an audited process start runs."""
    try:
        if event == "subprocess.Popen":  # (executable, args, cwd, env); executable may be None
            argv = args[1]
            return str(args[0] or (argv if isinstance(argv, (str, bytes)) else argv[0]))
        if event == "os.system":
            return str(args[0]).split()[0]
        return str(args[0])
    except (IndexError, TypeError):
        return ""


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _package_dirs() -> list[str]:
    import triton

    import kernels

    return [os.path.dirname(m.__file__) for m in (torch, triton, kernels)]


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0
