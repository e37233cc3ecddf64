"""Bubblewrap sandbox for runs: no network, read-only system, writable run directory only.

`wrap()` turns a command into a bwrap command line; `spawn()` starts one in its own
process group and returns a `Confined` handle that can kill it and wait until every
process it started is gone. Where bwrap is missing (or the probe fails, or
`THREADLAB_NO_SANDBOX=1`), commands run unwrapped and `sandbox_warning()` says so in one
sentence, for the engine to show plainly; a process that leaves its process group
(setsid) then escapes the kill, which only the sandbox's PID namespace prevents.

Mount order: bwrap applies mounts in argv order, and a later mount on a path inside an
earlier one wins. `wrap()` orders them from the shallowest path to the deepest, so the
most specific rule wins: a protected file inside the writable run directory stays
read-only, a writable eval/ inside a read-only run directory stays writable, a private
file inside a bound directory stays hidden. On the very same path, read-only beats
writable and hidden beats both. /tmp is a fresh tmpfs, so paths under the host's /tmp are
only reachable when they are bound explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

NO_SANDBOX_ENV = "THREADLAB_NO_SANDBOX"
_PROBE_TIMEOUT_S = 10.0


@functools.cache
def bwrap_path() -> str | None:
    """bwrap's path if it is installed and can create a sandbox here, else None."""
    if os.environ.get(NO_SANDBOX_ENV) == "1":
        log.info("sandbox disabled by %s=1", NO_SANDBOX_ENV)
        return None
    path = shutil.which("bwrap")
    if path is None:
        return None
    probe = [path, "--ro-bind", "/", "/", "--unshare-net", "--die-with-parent", "--", "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("bwrap probe failed: %s", exc)
        return None
    if done.returncode != 0:
        # Typical cause: unprivileged user namespaces are disabled on this host.
        log.warning("bwrap probe failed (exit %d): %s", done.returncode,
                    done.stderr.decode(errors="replace").strip())
        return None
    return path


def sandbox_warning() -> str | None:
    """One clear sentence when runs are not sandboxed; None when they are."""
    if bwrap_path() is not None:
        return None
    if os.environ.get(NO_SANDBOX_ENV) == "1":
        return (f"sandbox disabled by {NO_SANDBOX_ENV}=1: runs execute WITHOUT a sandbox "
                "(network and files are reachable)")
    if shutil.which("bwrap") is not None:
        return ("bubblewrap is installed but cannot create a sandbox here (user namespaces "
                "disabled?): runs execute WITHOUT a sandbox (network and files are reachable)")
    return ("bubblewrap not found: runs execute WITHOUT a sandbox (network and files are "
            "reachable); install it with `apt-get install bubblewrap`")


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def _interpreter_paths(cmd: Sequence[str]) -> list[str]:
    """What the command needs that lives under the host's /tmp, which the sandbox replaces
    with its own: a virtual environment or checkout there (CI clones into /tmp)."""
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path}
    if cmd:
        exe = shutil.which(cmd[0]) or cmd[0]
        wanted |= {os.path.dirname(os.path.abspath(exe)), os.path.dirname(os.path.realpath(exe))}
    tmp = os.path.realpath(tempfile.gettempdir())
    found = set()
    for path in wanted:
        real = os.path.realpath(path) if path else ""
        if real and os.path.exists(real) and (real == tmp or real.startswith(tmp + os.sep)):
            found.add(real)
    return sorted(found)


def wrap(
    cmd: Sequence[str],
    *,
    cwd: str,
    writable: Sequence[str],
    readonly: Sequence[str] = (),
    hidden: Sequence[str] = (),
    info_fd: int | None = None,
    sole: bool = False,
) -> list[str]:
    """The bwrap argv that runs `cmd` in `cwd` with only `writable` writable.

    `sole`: `cmd` is the sandbox's PID 1 itself, with no bwrap reaper beside it, so no
    other process in the sandbox holds the file descriptors it was given (a reaper would,
    and anything in the sandbox could open them through /proc/1/fd). As PID 1 it ignores
    SIGTERM unless it handles it: the executor's SIGKILL follows.
    `readonly` paths are bound read-only, `hidden` paths are covered by an empty tmpfs
    (directories) or /dev/null (files); the most specific path wins (see the module
    docstring). Paths that do not exist are skipped for `hidden` and `readonly`. With
    `info_fd`, bwrap writes {"child-pid": ...} (the host pid of the sandbox's PID 1) to
    that inherited fd and closes it. Without bwrap, `cmd` comes back unchanged.
    """
    bwrap = bwrap_path()
    if bwrap is None:
        return list(cmd)
    # Resolve symlinks: bwrap mounts over the real path, and hiding a symlink hides nothing.
    mounts: list[tuple[str, int]] = []  # (path, rank): 0 writable, 1 read-only, 2 hidden
    mounts += [(os.path.realpath(p), 0) for p in writable]
    for p in readonly:
        if os.path.exists(p):
            mounts.append((os.path.realpath(p), 1))
        else:
            log.debug("read-only path %s does not exist; not bound", p)
    mounts += [(os.path.realpath(p), 2) for p in hidden if os.path.exists(p)]
    mounts += [(p, 1) for p in _interpreter_paths(cmd)]
    # A later mount wins inside an earlier one: shallowest first, so the most specific
    # rule wins; on the same path read-only beats writable and hidden beats both.
    mounts.sort(key=lambda m: (_depth(m[0]), m[1]))
    argv = [
        bwrap,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--unshare-net", "--unshare-pid", "--unshare-ipc",
        "--die-with-parent", "--new-session",
        # Run by root, bwrap would leave the sandbox every capability (CAP_SYS_PTRACE
        # reads any process's fds and memory, CAP_SYS_ADMIN unmounts what hides data).
        "--cap-drop", "ALL",
    ]
    # The GPU's device nodes: `--dev` makes a minimal /dev without them. Which GPU a run
    # may use is still chosen by CUDA_VISIBLE_DEVICES (its Slot).
    for device in sorted(glob.glob("/dev/nvidia*")):
        argv += ["--dev-bind", device, device]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if sole:
        argv.append("--as-pid-1")
    for path, rank in mounts:
        if rank == 0:
            argv += ["--bind", path, path]
        elif rank == 1:
            argv += ["--ro-bind", path, path]
        elif os.path.isdir(path):
            argv += ["--tmpfs", path]
        else:
            argv += ["--ro-bind", "/dev/null", path]
    argv += ["--chdir", os.path.realpath(cwd), "--", *cmd]
    return argv


# --------------------------------------------------------------------------- processes


class Confined:
    """A command started by `spawn()`: its own process group and, under bwrap, its own
    PID namespace.

    `kill()` signals the group. Under bwrap that group holds only bwrap itself (the
    sandbox runs in a session of its own), and bwrap's death takes the sandbox with it:
    --die-with-parent SIGKILLs the sandbox's PID 1 and the kernel then kills every process
    in the namespace. `reap()` waits, through pidfds rather than polling, until that is
    really over: for PID 1 of the namespace (whose exit comes after every other process
    in it is gone), or without bwrap for each process still in the group.
    """

    def __init__(self, proc: asyncio.subprocess.Process,
                 info: tuple[asyncio.StreamReader, asyncio.BaseTransport] | None):
        self.proc = proc
        self._reaped = False  # after reap() the pgid may belong to someone else
        self._ns_pidfd: int | None = None
        self._info_transport = info[1] if info else None
        self._info = asyncio.create_task(self._read_info(info[0])) if info else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        # The group outlives its leader while any member lives; after that it is gone.
        if self._reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def reap(self, timeout: float = 10.0) -> None:
        """SIGKILL what is left and wait until none of it runs any more."""
        self.kill(signal.SIGKILL)
        if self._info is not None:
            # quick: bwrap closes the info pipe once it wrote it, or dies; bounded all the same
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._info), timeout)
            fds = [self._ns_pidfd] if self._ns_pidfd is not None else []
            self._ns_pidfd = None
        else:
            fds = _group_pidfds(self.proc.pid)
        await _wait_pidfds(fds, timeout)
        self._reaped = True

    def discard(self) -> None:
        """Kill without waiting and free what is held (for an execute() being cancelled)."""
        self.kill(signal.SIGKILL)
        if self._info is not None:
            self._info.cancel()
        if self._info_transport is not None:
            self._info_transport.close()
        if self._ns_pidfd is not None:
            os.close(self._ns_pidfd)
            self._ns_pidfd = None

    async def _read_info(self, reader: asyncio.StreamReader) -> None:
        # bwrap writes the info right after it creates the sandbox and closes the fd; the
        # pidfd is opened at once, while the sandbox's PID 1 is certainly not yet reaped.
        data = b""
        try:
            while chunk := await reader.read(1 << 16):
                data += chunk
        finally:
            if self._info_transport is not None:
                self._info_transport.close()
        try:
            pid = int(json.loads(data)["child-pid"])
            self._ns_pidfd = os.pidfd_open(pid)
        except (ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
            if data:  # empty when bwrap failed before creating the sandbox
                log.warning("cannot follow the sandbox's PID 1 (%s): %r", exc, data[:200])


async def spawn(
    cmd: Sequence[str],
    *,
    cwd: str,
    writable: Sequence[str],
    readonly: Sequence[str] = (),
    hidden: Sequence[str] = (),
    env: Mapping[str, str],
    stdout: int,
    stderr: int,
    pass_fds: Sequence[int] = (),
    sole: bool = False,
) -> Confined:
    """Start `cmd` confined by `wrap()` (when bwrap is available) in a new session.

    Raises OSError when it cannot be started (no sandbox and no such program).
    """
    info_r = info_w = -1
    if bwrap_path() is not None:
        info_r, info_w = os.pipe()
    argv = wrap(cmd, cwd=cwd, writable=writable, readonly=readonly, hidden=hidden,
                info_fd=info_w if info_w >= 0 else None, sole=sole)
    fds = (*pass_fds, info_w) if info_w >= 0 else tuple(pass_fds)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr, pass_fds=fds, start_new_session=True)
    except BaseException:
        if info_r >= 0:
            os.close(info_r)
        raise
    finally:
        if info_w >= 0:
            os.close(info_w)  # else the info pipe never reaches EOF
    if info_r < 0:
        return Confined(proc, None)
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(info_r, "rb", buffering=0))
    return Confined(proc, (reader, transport))


def _pgid_of(pid: int) -> int | None:
    """The process group of a live process; None if it is gone or a zombie (dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else int(fields[2])


def _group_pidfds(pgid: int) -> list[int]:
    """pidfds of the live processes in a process group (Linux; elsewhere none)."""
    if not hasattr(os, "pidfd_open"):
        return []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    fds = []
    for entry in entries:
        if not entry.isdigit() or _pgid_of(int(entry)) != pgid:
            continue
        try:
            fd = os.pidfd_open(int(entry))
        except OSError:
            continue
        if _pgid_of(int(entry)) == pgid:  # still that process, not a reused pid
            fds.append(fd)
        else:
            os.close(fd)
    return fds


async def _wait_pidfds(fds: list[int], timeout: float) -> None:
    """Wait until every pidfd reports its process ended; closes them."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    try:
        for fd in fds:
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, lambda f=fut: f.done() or f.set_result(None))
            waits.append(fut)
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            if pending:
                log.warning("%d process(es) still alive %.0f s after SIGKILL", len(pending),
                            timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)
