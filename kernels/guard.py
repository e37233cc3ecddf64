"""Runtime guards inside the worker process that runs a candidate.

Installed by trusted code before the candidate is imported; each finding is kept under
the name of the check that made it, and the worker reports them to the evaluator:

  runtime.patched       torch, timing or harness functions replaced (identity snapshot of
                        module and class attributes, taken before the import and compared
                        after it and after every command), or a torch/triton/time class
                        patched from candidate code (audit event object.__setattr__)
  runtime.threads       a thread started: Python threads and native ones (/proc/self/task)
  runtime.file_access   a file opened from candidate code: for reading outside the libraries,
                        the compiler caches and the candidate's own file; for writing
                        anywhere (the caches included); any fd reopened
  runtime.network       any socket from candidate code
  runtime.process       a process started from candidate code
  runtime.library_op    the reference's library op called during a call (TorchFunctionMode)
  runtime.triton_launch no Triton kernel launched by a call
  runtime.triton_output an output whose memory no Triton kernel of that call was handed
  runtime.side_stream   a Triton launch or a torch op made while a stream other than the
                        default one was current (GPU): such work can run while the timer's
                        spin hides launches (kernels/timing.py), so it is never trusted

"From candidate code" means the candidate's file is on the call stack. One exception, the
LaunchPolicy below: on a GPU, the first launch of a kernel makes Triton compile it (ptxas,
cache writes, temp files) and build its C launcher stub (gcc, /dev/null); that is Triton's
own work, done on the candidate's behalf. An event is excused only when the frames from it
out to a kernel launch (the original JITFunction.run or CompiledKernel._init_handles, by
code identity) are Triton's and the standard library's alone, the frame that caused it is
the Triton function known to do it (by code identity: gcc only from
triton.runtime.build._build under compile_module_from_src under the launcher's
constructor, ptxas only from make_cubin, cache writes only from the cache manager under
the compiler...), and the program is the exact one Triton resolved before the candidate
was imported. A candidate that calls subprocess or a Triton helper
itself, or slips a callable into the launch (a hook, a pre-run hook, a partial), is not
excused; changing Triton's hooks, build settings or compiler environment is
`runtime.patched`, and so is making code or function objects at run time (a forged file
name). Excused events are kept (`excused`) so a GPU run shows what Triton did.

The evaluator never relies on these alone: it checks the outputs itself, in its own
process, and cross-checks the timings against its own clock (see kernels/README.md).
"""

from __future__ import annotations

import os
import shutil
import site
import sys
import sysconfig
import threading
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

CHECKS = ("runtime.patched", "runtime.threads", "runtime.file_access", "runtime.network", "runtime.process",
          "runtime.library_op", "runtime.triton_launch", "runtime.triton_output", "runtime.side_stream")
_MAX_NOTES = 5
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "pty.spawn")
_CODE_EVENTS = ("code.__new__", "function.__new__")
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


# -- what Triton itself does on the candidate's behalf ------------------------------------


@dataclass(frozen=True)
class Rule:
    """One thing Triton's compile path does: `kind` (process, write, write_cache, read,
    code), the function that does it (`callers`, code objects; empty: any frame in Triton's
    package), the programs or paths allowed (`targets`; empty: any), the next non-stdlib
    frames out from the caller, in order (`parents`: each a tuple of allowed code objects),
    and a frame that must lie between the caller and the launch (`ancestors`)."""

    kind: str
    why: str
    callers: tuple = ()
    targets: frozenset = frozenset()
    parents: tuple = ()
    ancestors: tuple = ()


@dataclass(frozen=True)
class LaunchPolicy:
    entries: tuple  # code objects of a kernel launch: the original JITFunction.run
    builders: tuple  # code objects of the launcher's constructors (trusted wherever they sit)
    library: tuple[str, ...]  # Triton's package dir(s): frames allowed between the event and the launch
    stdlib: tuple[str, ...]
    site: tuple[str, ...]  # site-packages: never the standard library, even under its prefix
    rules: tuple[Rule, ...]


def _prefixes(*paths: str) -> tuple[str, ...]:
    out = set()
    for p in paths:
        if p and os.path.isabs(p):
            out.update({p.rstrip("/") + "/", os.path.realpath(p).rstrip("/") + "/"})
    return tuple(sorted(out))


def _code(fn: Any) -> Any:
    fn = getattr(fn, "__wrapped__", fn)  # functools.lru_cache
    fn = getattr(fn, "__func__", fn)  # staticmethod
    return getattr(fn, "__code__", None)


def _exe(path: str | None) -> str | None:
    if not path:
        return None
    found = path if os.path.isabs(path) else shutil.which(path)
    return os.path.realpath(found) if found else None


def launch_policy(cuda: bool, entries: Iterable[Any] = (), builders: Iterable[Any] = ()) -> LaunchPolicy:
    """What Triton 3.x does when a kernel is first launched, resolved now (before the
    candidate runs): the launch entry, the functions that spawn the compilers or write the
    cache, the exact compiler programs. `entries` and `builders` replace the launch entry
    and the launcher constructors (tests simulate a GPU launch with them)."""
    import triton
    from triton.compiler import compiler as tcompiler
    from triton.runtime import build, cache, jit

    run = jit.JITFunction.run
    run = getattr(run, "_threadlab_original", run)  # the Guard's counting wrapper may be installed
    # a launch: JITFunction.run; or a compiled kernel's handles loaded by hand (the fused
    # softmax tutorial's occupancy query), which builds the launcher and nothing else
    entry_codes = tuple(_code(e) for e in entries) or (_code(run), _code(tcompiler.CompiledKernel._init_handles))
    launcher_inits: list = [_code(b) for b in builders]
    ptxas: set[str] = set()
    toolchain: list = []  # (caller codes, program)
    if not launcher_inits or cuda:
        try:
            from triton.backends.nvidia import compiler as nv_compiler, driver as nv_driver

            launcher_inits += [_code(nv_driver.CudaLauncher.__init__), _code(nv_driver.CudaUtils.__init__)]
            if cuda:
                from triton import knobs

                for name in ("ptxas", "ptxas_blackwell"):
                    try:
                        tool = getattr(knobs.nvidia, name)  # resolved (and cached) now, not under the hooks
                    except Exception:  # noqa: BLE001 - a missing tool is simply not allowed
                        tool = None
                    if tool is not None and _exe(tool.path):
                        ptxas.add(_exe(tool.path))
                ptxas_callers = (_code(nv_compiler.CUDABackend.make_cubin), _code(nv_compiler.get_ptxas_version),
                                 _code(knobs.NvidiaTool.from_path))
                toolchain.append((ptxas_callers, frozenset(ptxas)))
                ldconfig = _exe("/sbin/ldconfig")
                if ldconfig:
                    toolchain.append(((_code(nv_driver.libcuda_dirs),), frozenset({ldconfig})))
        except ImportError:
            pass
    launcher_inits = [c for c in launcher_inits if c is not None]
    # the C compiler triton.runtime.build._build picks: $CC, else gcc, else clang
    cc = _exe(os.environ.get("CC")) or _exe("gcc") or _exe("clang")
    built = ((_code(build.compile_module_from_src),), tuple(launcher_inits))  # _build's callers, in order
    rules = [
        Rule("process", "Triton builds a kernel's C launcher", (_code(build._build),),
             frozenset({cc}) if cc else frozenset(), built),
        Rule("write", "the launcher build discards the compiler's output", (_code(build._build),),
             frozenset({os.devnull}), built),
        Rule("write_cache", "the launcher build writes its C source", (_code(build.compile_module_from_src),),
             parents=(tuple(launcher_inits),)),
        Rule("write_cache", "the compiler caches its artifacts", (_code(cache.FileCacheManager.put),),
             ancestors=(_code(tcompiler.compile), _code(build.compile_module_from_src))),
        Rule("read", "Triton reads its own files while it compiles"),
        Rule("code", "Triton makes code while it compiles"),
    ]
    for callers, programs in toolchain:
        rules.append(Rule("process", f"Triton runs {', '.join(sorted(os.path.basename(p) for p in programs))}",
                          tuple(c for c in callers if c is not None), programs))
    if cuda:
        rules.append(Rule("write_cache", "ptxas gets its temporary files",
                          (_code(nv_compiler.CUDABackend.make_cubin),)))
    # a process rule without a program (none found) allows nothing
    rules = [r for r in rules if r.kind != "process" or r.targets]
    stdlib = sysconfig.get_paths()
    sites = [*site.getsitepackages(), site.getusersitepackages(), stdlib.get("purelib"), stdlib.get("platlib")]
    return LaunchPolicy(entries=tuple(c for c in entry_codes if c is not None), builders=tuple(launcher_inits),
                        library=_prefixes(os.path.dirname(triton.__file__)),
                        stdlib=_prefixes(stdlib.get("stdlib"), stdlib.get("platstdlib")),
                        site=_prefixes(*[s for s in sites if s]), rules=tuple(rules))


def _is(code: Any, codes: tuple) -> bool:
    return any(code is c for c in codes)  # identity: code objects compare equal by value


class Guard:
    def __init__(self, candidate_file: str | None, library_ops: Iterable[str], cache_dirs: Iterable[str],
                 cuda: bool = False, policy: LaunchPolicy | None = None):
        self.candidate = os.path.realpath(candidate_file) if candidate_file else None
        self.cuda = cuda
        self.policy = policy
        self.excused: list[str] = []
        self.findings: dict[str, list[str]] = {name: [] for name in CHECKS}
        self.launches = 0
        # the storages handed to launches, collected only during a checked call: the timed
        # calls pay for counting alone (T_k should not include the guard's bookkeeping)
        self.launch_storages: set[int] | None = None
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
        self._state: dict[str, Any] = {}
        self._threads: set[int] = set()
        self._tasks = 0
        # the current stream's handle, and the default stream's: bound before the candidate
        # is imported (set in install; None on the CPU)
        self._stream_of: Any = None
        self._default_stream: int | None = None

    # -- findings ---------------------------------------------------------------------

    def note(self, check: str, message: str) -> None:
        notes = self.findings[check]
        if message not in notes and len(notes) < _MAX_NOTES:
            notes.append(message)

    def report(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.findings.items()}

    def off_default_stream(self) -> bool:
        return self._stream_of is not None and self._stream_of() != self._default_stream

    def check_stream(self, what: str) -> None:
        if self.off_default_stream():
            self.note_side_stream(what)

    def note_side_stream(self, what: str) -> None:
        self.note("runtime.side_stream", f"{what} on a stream other than the default one (work there can "
                  "escape the timer)")

    def excuse(self, message: str) -> None:
        if message not in self.excused and len(self.excused) < 2 * _MAX_NOTES:
            self.excused.append(message)

    # -- installation -----------------------------------------------------------------

    def install(self, watched_modules: Iterable[Any], watched_classes: Iterable[type]) -> None:
        """Count Triton launches, hook audit events, snapshot identities and threads."""
        if self.policy is None:
            self.policy = launch_policy(self.cuda)  # before the wrapper: it names the original launch
        if self.cuda:
            current = torch.cuda.current_stream
            self._stream_of = lambda: current().cuda_stream
            self._default_stream = torch.cuda.default_stream().cuda_stream
        self._wrap_launchers()
        self._wrap_thread_start()
        sys.addaudithook(self._audit)
        self._watched = [(m.__name__, m) for m in watched_modules] + [
            (f"{c.__module__}.{c.__qualname__}", c) for c in watched_classes]
        self._snapshot = self._identities()
        self._state = _triton_state()
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
        state = _triton_state()
        for key in sorted(set(state) | set(self._state)):
            if not _same(state.get(key, _MISSING), self._state.get(key, _MISSING)):
                self.note("runtime.patched", f"{key} was changed after the candidate was imported")
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
                    guard.check_stream("a Triton kernel was launched")
                    storages = guard.launch_storages
                    if storages is not None:
                        for a in (*args, *kwargs.values()):
                            if isinstance(a, torch.Tensor):
                                storages.add(a.untyped_storage().data_ptr())
                return _original(self, *args, **kwargs)

            run._threadlab_counted = True
            run._threadlab_original = original
            cls.run = run

    # -- audit events -----------------------------------------------------------------

    def _event_frame(self) -> Any:
        """The frame that raised the audit event (this module's own frames skipped)."""
        try:
            raise _Probe
        except _Probe as exc:  # a frame without sys._getframe, which is itself audited
            frame = exc.__traceback__.tb_frame
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        return frame

    def _from_candidate(self, frame: Any) -> bool:
        if self.candidate is None:
            return False
        depth = 0
        while frame is not None and depth < 200:
            if frame.f_code.co_filename == self.candidate:
                return True
            frame, depth = frame.f_back, depth + 1
        return False

    def _blame(self, kind: str, target: str, what: str) -> bool:
        """True when candidate code caused the event and Triton's launch path does not excuse it."""
        frame = self._event_frame()
        if not self._from_candidate(frame):
            return False
        rule = self._excusing_rule(kind, target, frame)
        if rule is None:
            return True
        self.excuse(f"{what} ({rule.why})")
        return False

    # the frames between an event and the kernel launch that caused it

    def _stdlib(self, filename: str) -> bool:
        p = self.policy
        if filename.startswith("<frozen "):
            return True
        return filename.startswith(p.stdlib) and not filename.startswith(p.site)

    def _outside_stdlib(self, frame: Any) -> Any:
        while frame is not None and self._stdlib(frame.f_code.co_filename):
            frame = frame.f_back
        return frame

    def _excusing_rule(self, kind: str, target: str, frame: Any) -> Rule | None:
        p = self.policy
        if p is None:
            return None
        caller = self._outside_stdlib(frame)
        if caller is None:
            return None
        for rule in p.rules:
            if rule.kind != kind or (rule.targets and target not in rule.targets):
                continue
            if rule.callers:
                if not _is(caller.f_code, rule.callers):
                    continue
            elif not caller.f_code.co_filename.startswith(p.library):
                continue
            if self._reaches_launch(caller.f_back, rule):
                return rule
        return None

    def _reaches_launch(self, frame: Any, rule: Rule) -> bool:
        """The rule's parents in order, then only Triton's and the standard library's frames
        (the rule's ancestor among them) up to a kernel launch."""
        p = self.policy
        for allowed in rule.parents:
            frame = self._outside_stdlib(frame)
            if frame is None or not _is(frame.f_code, allowed):
                return False
            frame = frame.f_back
        need = bool(rule.ancestors)
        depth = 0
        while frame is not None and depth < 200:
            code = frame.f_code
            if _is(code, p.entries):
                return not need
            if need and _is(code, rule.ancestors):
                need = False
            elif not (code.co_filename.startswith(p.library) or self._stdlib(code.co_filename)
                      or _is(code, p.builders)):
                return False  # candidate code, or anyone else's, between the event and the launch
            frame, depth = frame.f_back, depth + 1
        return False

    def _audit(self, event: str, args: tuple) -> None:
        if event == "open":
            self._on_open(args)
        elif event.startswith("socket."):
            if self._from_candidate(self._event_frame()):
                self.note("runtime.network", f"{event} {str(args)[:120]}")
        elif event in _PROCESS_EVENTS or event.startswith(("os.exec", "os.spawn")):
            exe = _executable(event, args)
            real = os.path.realpath(exe) if os.path.isabs(exe) else exe
            if self._blame("process", real, f"{event} {exe[:120]}"):
                self.note("runtime.process", f"{event} {exe[:120]}")
        elif event in _CODE_EVENTS:
            if self._blame("code", "", event):
                self.note("runtime.patched", f"{event}: a code or function object was made at run time")
        elif event == "object.__setattr__":
            target = args[0] if args else None
            if isinstance(target, type) and str(getattr(target, "__module__", "")).startswith(
                    ("torch", "triton", "time", "threading", "kernels")) and self._from_candidate(self._event_frame()):
                self.note("runtime.patched", f"{target.__module__}.{target.__qualname__}.{args[1]} was set")

    def _on_open(self, args: tuple) -> None:
        path, mode, flags = (list(args) + [None, None, 0])[:3]
        if isinstance(path, int):
            if self._from_candidate(self._event_frame()):
                self.note("runtime.file_access", f"reopened file descriptor {path}")
            return
        if path is None:
            return
        real = os.path.realpath(os.fsdecode(path))
        if real == self.candidate:
            return
        writing = bool(mode and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        if writing:
            kind = "write_cache" if _under(real, self.write_roots) else "write"
        elif _under(real, self.read_roots):
            return
        else:
            kind = "read"
        what = f"opened {real} for {'writing' if writing else 'reading'}"
        if self._blame(kind, real, what):
            self.note("runtime.file_access", what)

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
        if self.guard.off_default_stream():  # the message only then: this runs for every torch call
            self.guard.note_side_stream(f"{getattr(func, '__name__', 'a torch function')} ran")
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


_HOOKS = ("launch_enter_hook", "launch_exit_hook", "kernel_load_start_hook", "kernel_load_end_hook",
          "jit_cache_hook", "jit_post_compile_hook", "add_stages_inspection_hook")
_ENV = ("CC", "CXX", "PATH", "TMPDIR", "PTXAS_OPTIONS", "NVPTX_ENABLE_DUMP", "DISABLE_PTXAS_OPT")


def _triton_state() -> dict[str, Any]:
    """What steers Triton's compile path and is not a module attribute: its hooks, its build
    function, the compiler's environment. Compared by identity (values) after every command."""
    state: dict[str, Any] = {}
    knobs = sys.modules.get("triton.knobs")
    if knobs is not None:
        runtime = getattr(knobs, "runtime", None)
        for name in _HOOKS:
            value = getattr(runtime, name, None)
            calls = getattr(value, "calls", None)
            state[f"triton.knobs.runtime.{name}"] = value
            if isinstance(calls, list):
                state[f"triton.knobs.runtime.{name}.calls"] = tuple(calls)
        state["triton.knobs.build.impl"] = getattr(getattr(knobs, "build", None), "impl", None)
        for group in ("build", "cache", "compilation", "nvidia", "runtime", "language", "autotuning"):
            obj = getattr(knobs, group, None)
            for key, value in list(getattr(obj, "__dict__", {}).items()):  # knobs set in Python
                state[f"triton.knobs.{group}.{key}"] = value
    for key, value in os.environ.items():
        if key in _ENV or key.startswith(("TRITON_", "LD_")):
            state[f"environment variable {key}"] = value
    return state


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))
    if type(a) is type(b) and type(a) in (str, int, float, bool, bytes):
        return a == b
    return a is b


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
