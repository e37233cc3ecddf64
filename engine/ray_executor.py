"""The Ray executor: the local executor's contract, carried out on a Ray cluster's workers.

Three processes take part, so that the engine never links Ray into itself:

engine (RayExecutor)
    Implements the Executor protocol (slots, execute, cancel, shutdown) plus
    `refresh_slots()`. It starts a *bridge* subprocess and talks to it over two pipes with
    length-prefixed pickle frames. Ray is never imported here: Ray's driver starts its own
    threads, and when it loses the cluster it may end its process outright (a driver exits
    once the GCS has been unreachable for `gcs_rpc_server_reconnect_timeout_s`). A lost
    bridge is therefore only a lost connection: the runs it carried come back INTERRUPTED
    (the engine queues them again), the slots go away, an event says so, and the executor
    starts a new bridge with back-off until the cluster answers again.

bridge (`python -m engine.ray_executor`)
    The Ray driver. It watches `ray.nodes()` and reports the slots (one per GPU, or one per
    `cpus_per_slot` CPUs of each live node); it submits each Run as a Ray task pinned to
    its Slot's node (`NodeAffinitySchedulingStrategy`, soft=False) asking for the slot's
    resources (`num_gpus=1, num_cpus=0` or `num_cpus=cpus_per_slot`), with max_retries=0:
    a retry is the engine's decision, recorded as a new Run. The node's files travel as a
    tar archive through the object store (one `ray.put` per distinct archive). Samples
    flow from the worker through a `SampleHub` actor (num_cpus=0, on the driver's node)
    that the bridge long-polls per run and forwards to the engine while the run goes.

worker (`_ray_run`, a Ray task)
    Unpacks the files into a fresh directory on its node and runs the very same
    `LocalExecutor` there: both phases, bubblewrap sandbox, the budget enforced by the
    worker's own clock, the evaluator's result pipe. It returns the outcome and the logs
    (stdout.log, stderr.log, eval.log, each capped at LOG_CAP bytes, the tail kept), and
    removes its directory. A cancel reaches it through the hub (it kills its sandbox and
    returns); if it does not end within CANCEL_GRACE_S, the bridge force-cancels the task
    (the worker process is killed; bwrap's --die-with-parent takes the sandbox with it).

Outcomes: the worker's RunOutcome, with `started_at`/`ended_at` taken by the engine's clock
(submitted, result arrived) and `extra` carrying `executor`, `ray_node`, `ray_host`. A
worker or node lost mid-run (WorkerCrashedError, NodeDiedError, ...) or the connection lost
gives INTERRUPTED with the reason in `error`, and so does a run offered a slot that is gone
(after waiting UNAVAILABLE_WAIT_S for it to come back); a problem of the worker's machine
(no sandbox, disk full) raises ExecutorError as the local executor does; a cancel gives
CANCELLED and shutdown() INTERRUPTED.

Slots: `slots` is the cluster's current set; `refresh_slots()` says what changed since its
last call (a SlotChange: added, removed, connection events, a status line) for the engine
to apply: the engine must stop offering a removed slot (a run on it comes back
INTERRUPTED) and start offering an added one.

What the workers need: the same threadlab and Python packages (the engine's interpreter
path in a task's command is replaced by the worker's own), bubblewrap, and the task's
prepared data and private files at the same absolute paths as on the engine's machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import os
import pickle
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ExecutorError
from engine.models import AuditResult, RunOutcome, RunRequest, RunStatus, Slot

log = logging.getLogger(__name__)

SampleSink = Callable[[list[dict[str, Any]]], Awaitable[None]]

POLL_NODES_S = 1.0  # how often the bridge looks at the cluster's nodes
NODES_TIMEOUT_S = 15.0  # ray.nodes() slower than this: the cluster is lost
SAMPLE_POLL_S = 0.5  # the longest a sample long-poll waits on the hub
CANCEL_GRACE_S = 5.0  # a cancelled worker that has not ended by then is force-cancelled
CONNECT_TIMEOUT_S = 60.0
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
UNAVAILABLE_WAIT_S = 10.0  # a run offered a slot that is gone waits this long for it, then INTERRUPTED
LOG_CAP = 4 << 20  # bytes of each log shipped back (the tail)
FILES_CACHE = 32  # distinct file archives the bridge keeps in the object store
LOG_NAMES = ("stdout.log", "stderr.log", "eval.log")
_HEADER = struct.Struct("!Q")
_LOST_ERRORS = (
    "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError",
    "OwnerDiedError", "ObjectFetchTimedOutError", "ObjectReconstructionFailedError",
    "TaskUnschedulableError", "RaySystemError", "ActorDiedError", "ActorUnavailableError",
    "RayActorError", "OutOfMemoryError", "TaskCancelledError", "RpcError",
)


# --------------------------------------------------------------------------- frames


def _frame(msg: Any) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None at EOF."""
    try:
        head = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(head)
        return pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None


# --------------------------------------------------------------------------- files


def pack_files(files_dir: str) -> bytes:
    """The node's files as an uncompressed tar archive (code: small; data stays on the nodes)."""
    if not os.path.isdir(files_dir):
        raise ExecutorError(f"files_dir {files_dir} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(os.listdir(files_dir)):
            tar.add(os.path.join(files_dir, entry), arcname=entry)
    return buf.getvalue()


def unpack_files(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.11.4: refuse what the data filter would
            for member in tar.getmembers():
                target = os.path.realpath(dest / member.name)
                if not target.startswith(os.path.realpath(dest) + os.sep) or member.isdev():
                    raise ExecutorError(f"unsafe path in the run's files: {member.name}")
            tar.extractall(dest)


def _read_tail(path: Path, cap: int = LOG_CAP) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - cap))
            data = f.read()
    except OSError:
        return None
    if size > cap:
        data = f"[threadlab: the first {size - cap} bytes were cut on the Ray worker]\n".encode() + data
    return data


# --------------------------------------------------------------------------- the hub


class SampleHub:
    """A Ray actor (async, num_cpus=0) in the middle of each run's samples and cancels.

    Workers `put` sample batches; the bridge long-polls `take` per run and forwards them.
    The bridge calls `finish` once the worker's task has ended (so nothing more comes),
    after which `take` reports finished, and `drop` to forget the run.
    """

    MAX_PENDING = 100_000  # samples held per run when nobody takes them

    def __init__(self) -> None:
        self._runs: dict[int, dict[str, Any]] = {}
        self._dropped: set[int] = set()

    def _run(self, run_id: int) -> dict[str, Any]:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = {"batches": [], "n": 0, "finished": False,
                                        "cancelled": False, "wake": asyncio.Event(),
                                        "cancel": asyncio.Event()}
        return run

    async def put(self, run_id: int, batch: list[dict[str, Any]]) -> bool:
        if run_id in self._dropped:
            return False
        run = self._run(run_id)
        if run["n"] + len(batch) > self.MAX_PENDING:
            return False
        run["batches"].append(batch)
        run["n"] += len(batch)
        run["wake"].set()
        return True

    async def take(self, run_id: int, wait_s: float) -> tuple[list[list[dict[str, Any]]], bool]:
        run = self._run(run_id)
        if not run["batches"] and not run["finished"]:
            run["wake"].clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run["wake"].wait(), wait_s)
        batches, run["batches"], run["n"] = run["batches"], [], 0
        return batches, run["finished"]

    async def finish(self, run_id: int) -> None:
        run = self._run(run_id)
        run["finished"] = True
        run["wake"].set()

    async def cancel(self, run_id: int) -> None:
        run = self._run(run_id)
        run["cancelled"] = True
        run["cancel"].set()

    async def wait_cancel(self, run_id: int, wait_s: float) -> bool:
        run = self._run(run_id)
        if not run["cancelled"]:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run["cancel"].wait(), wait_s)
        return bool(run["cancelled"])

    async def drop(self, run_id: int) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run["wake"].set()
            run["cancel"].set()
        self._dropped.add(run_id)
        if len(self._dropped) > 10_000:
            self._dropped = set(sorted(self._dropped)[-5_000:])


# --------------------------------------------------------------------------- the worker


def _ray_run(payload: dict[str, Any], files: bytes, hub: Any) -> dict[str, Any]:
    """The body of a Run's Ray task, on a worker: the LocalExecutor's two phases."""
    return asyncio.run(_worker_main(payload, files, hub))


def _local_python(cmd: Sequence[str], engine_python: str) -> tuple[str, ...]:
    """The engine's interpreter in a task command becomes this worker's own."""
    cmd = tuple(cmd)
    if cmd and cmd[0] == engine_python:
        return (sys.executable, *cmd[1:])
    return cmd


def _sweep(base: str) -> None:
    """Remove the run directories of workers that died without cleaning up (killed, OOM)."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for entry in entries:
        parts = entry.split("-")
        if len(parts) < 4 or parts[0] != "threadlab" or not parts[1].startswith("run"):
            continue
        try:
            pid = int(parts[2])
        except ValueError:
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(base, entry), ignore_errors=True)


def _worker_slot(payload: dict[str, Any]) -> Slot:
    if payload["device"] == "gpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")  # set by Ray for num_gpus=1
        env: tuple[tuple[str, str], ...] = (("CUDA_VISIBLE_DEVICES", visible),)
    else:
        threads = str(max(1, int(payload["cpus"])))
        env = (("CUDA_VISIBLE_DEVICES", ""), ("MKL_NUM_THREADS", threads),
               ("OMP_NUM_THREADS", threads))
    return Slot(payload["slot"], "ray", env)


async def _worker_main(payload: dict[str, Any], files: bytes, hub: Any) -> dict[str, Any]:
    from engine.executor import LocalExecutor

    run_id = payload["run_id"]
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                            "worker_started_at": time.time()}
    with contextlib.suppress(Exception):
        import ray

        info["node_id"] = ray.get_runtime_context().get_node_id()
    base = os.environ.get("THREADLAB_RAY_WORKDIR") or tempfile.gettempdir()
    _sweep(base)
    root = Path(tempfile.mkdtemp(prefix=f"threadlab-run{run_id}-{os.getpid()}-", dir=base))
    try:
        fields = dict(payload["req"])
        files_dir, run_dir = root / "files", root / "run"
        try:
            unpack_files(files, files_dir)
        except (OSError, tarfile.TarError) as exc:
            return dict(info, machine_error=f"cannot unpack the run's files on "
                        f"{info['host']}: {exc}")
        engine_python = payload["engine_python"]
        fields.update(files_dir=str(files_dir), run_dir=str(run_dir),
                      run_command=_local_python(fields["run_command"], engine_python),
                      eval_command=_local_python(fields["eval_command"], engine_python))
        req = RunRequest(**fields)
        slot = _worker_slot(payload)
        executor = LocalExecutor([slot])

        async def sink(batch: list[dict[str, Any]]) -> None:
            await hub.put.remote(run_id, batch)

        async def watch_cancel() -> None:
            while True:
                try:
                    cancelled = await hub.wait_cancel.remote(run_id, 5.0)
                except Exception:  # noqa: BLE001 - the hub is gone: the bridge force-cancels
                    log.exception("run %d: cannot reach the sample hub", run_id)
                    return
                if cancelled:
                    await executor.cancel(run_id)
                    return

        watcher = asyncio.create_task(watch_cancel())
        try:
            outcome = await executor.execute(req, slot, sink)
        except ExecutorError as exc:
            return dict(info, machine_error=f"on Ray node {info['host']}: {exc}", hint=exc.hint)
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        logs = {name: _read_tail(run_dir / name) for name in LOG_NAMES}
        result = dataclasses.asdict(outcome)
        result["status"] = str(outcome.status)
        return dict(info, outcome=result, logs={k: v for k, v in logs.items() if v is not None},
                    worker_ended_at=time.time())
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the bridge


def _slots_of(nodes: list[dict[str, Any]], device: str, cpus: float) -> list[tuple[str, str]]:
    """(slot name, node id) for every slot of the live nodes, in a stable order."""
    out: list[tuple[str, str]] = []
    alive = sorted((n for n in nodes if n.get("Alive")), key=lambda n: n["NodeID"])
    for node in alive:
        res = node.get("Resources") or {}
        count = int(res.get("GPU", 0)) if device == "gpu" else int(math.floor(res.get("CPU", 0) / cpus + 1e-9))
        host = str(node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or "node")
        for i in range(count):
            out.append((f"{host[:20]}.{node['NodeID'][:6]}/{device}{i}", node["NodeID"]))
    return out


class _Bridge:
    def __init__(self, opts: dict[str, Any], writer: asyncio.StreamWriter):
        import ray

        self.ray = ray
        self.opts = opts
        self.writer = writer
        self.hub: Any = None
        self.remote_run: Any = None
        self.files: OrderedDict[str, Any] = OrderedDict()  # sha256 -> ObjectRef
        self.refs: dict[int, Any] = {}  # run id -> the task's ObjectRef
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.slots: list[tuple[str, str]] | None = None  # None: none reported yet
        self.stopping = False

    def send(self, *msg: Any) -> None:
        self.writer.write(_frame(msg))

    async def start(self) -> None:
        """After ray.init: the hub actor, the remote function, and "ready"."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        self.hub = ray.remote(num_cpus=0, max_concurrency=10_000)(SampleHub).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        await self.hub.take.remote(-1, 0.0)  # up and answering
        await self.hub.drop.remote(-1)
        self.remote_run = ray.remote(_ray_run)
        self.send("ready", {"address": self.opts.get("connected_to") or "local", "node": here})

    async def watch_nodes(self) -> None:
        failures = 0
        while True:
            try:
                nodes = await asyncio.wait_for(asyncio.to_thread(self.ray.nodes), NODES_TIMEOUT_S)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the cluster is gone
                failures += 1
                if failures >= 3 or isinstance(exc, asyncio.TimeoutError):
                    raise ConnectionError(f"the cluster does not answer: {exc!r}") from exc
                await asyncio.sleep(POLL_NODES_S)
                continue
            slots = _slots_of(nodes, self.opts["device"], self.opts["cpus"])
            if slots != self.slots:
                self.slots = slots
                self.send("slots", slots, len([n for n in nodes if n.get("Alive")]))
            await asyncio.sleep(POLL_NODES_S)

    def files_ref(self, data: bytes) -> Any:
        key = hashlib.sha256(data).hexdigest()
        ref = self.files.get(key)
        if ref is None:
            ref = self.files[key] = self.ray.put(data)
            while len(self.files) > FILES_CACHE:
                self.files.popitem(last=False)
        else:
            self.files.move_to_end(key)
        return ref

    def start_run(self, run_id: int, payload: dict[str, Any], files: bytes, node_id: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        gpu = self.opts["device"] == "gpu"
        ref = self.remote_run.options(
            num_cpus=0 if gpu else self.opts["cpus"], num_gpus=1 if gpu else 0, max_retries=0,
            retry_exceptions=False, name=f"threadlab-run-{run_id}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(dict(payload, device=self.opts["device"], cpus=self.opts["cpus"]),
                 self.files_ref(files), self.hub)
        self.refs[run_id] = ref
        self.tasks[run_id] = asyncio.create_task(self.follow(run_id, ref))

    async def pump(self, run_id: int) -> None:
        while True:
            batches, finished = await self.hub.take.remote(run_id, SAMPLE_POLL_S)
            for batch in batches:
                self.send("samples", run_id, batch)
            if finished:
                return

    async def follow(self, run_id: int, ref: Any) -> None:
        pump = asyncio.create_task(self.pump(run_id))
        reply: tuple[Any, ...]
        try:
            result = await ref
            if "machine_error" in result:
                reply = ("error", run_id, result["machine_error"], result.get("hint"))
            else:
                reply = ("done", run_id, result)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the engine
            name = type(exc).__name__
            cause = getattr(exc, "cause", None)
            if name in _LOST_ERRORS or any(c.__name__ in _LOST_ERRORS for c in type(exc).__mro__):
                reply = ("lost", run_id, f"{name}: {_short(exc)}")
            elif cause is not None:  # an exception raised by the worker's code: a bug there
                reply = ("error", run_id, f"the Ray task failed: {type(cause).__name__}: {cause}", None)
            else:
                reply = ("lost", run_id, f"{name}: {_short(exc)}")
        try:
            await asyncio.wait_for(self.hub.finish.remote(run_id), 10)
            await asyncio.wait_for(pump, 15)
        except Exception:  # noqa: BLE001 - samples lost; the outcome still counts
            log.exception("run %d: could not collect the last samples", run_id)
            pump.cancel()
        with contextlib.suppress(Exception):
            self.hub.drop.remote(run_id)
        self.refs.pop(run_id, None)
        self.tasks.pop(run_id, None)
        self.send(*reply)

    async def cancel(self, run_id: int) -> None:
        ref = self.refs.get(run_id)
        if ref is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.hub.cancel.remote(run_id), 5)
        task = self.tasks.get(run_id)
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
            if done:
                return
        if run_id in self.refs:
            log.warning("run %d did not end %.0f s after its cancel; force-cancelling", run_id,
                        CANCEL_GRACE_S)
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            msg = await _read_frame(reader)
            if msg is None or msg[0] == "stop":
                await self.stop()
                return
            if msg[0] == "run":
                _, run_id, payload, files, node_id = msg
                try:
                    self.start_run(run_id, payload, files, node_id)
                except Exception as exc:  # noqa: BLE001 - reported as the machine's problem
                    self.send("error", run_id, f"cannot submit the run to Ray: {exc!r}", None)
            elif msg[0] == "cancel":
                asyncio.create_task(self.cancel(msg[1]))

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*(self.cancel(r) for r in list(self.refs)), return_exceptions=True)
        following = list(self.tasks.values())
        if following:  # each reports its run to the engine before we go
            await asyncio.wait(following, timeout=10)
        await self.writer.drain()


def _short(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _ray_init(opts: dict[str, Any]) -> str:
    """Connect this process to the cluster (ray.init, in the main thread); its address."""
    import ray

    kwargs: dict[str, Any] = {"namespace": opts.get("namespace", "threadlab"),
                              "logging_level": logging.WARNING, "include_dashboard": False}
    address = opts.get("address")
    if address:
        kwargs["address"] = address
    if opts.get("node_ip_address"):
        kwargs["_node_ip_address"] = opts["node_ip_address"]
    local = dict(opts.get("init") or {})  # only for a new local instance
    try:
        info = ray.init(**kwargs, **local)
    except ValueError as exc:
        if not local or "existing cluster" not in str(exc):
            raise
        log.info("an existing Ray cluster was found; connecting without %s", sorted(local))
        info = ray.init(**kwargs)
    found = getattr(info, "address_info", None) or {}
    return str(found.get("gcs_address") or address or "local")


async def _bridge_main(opts: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(opts["cmd_fd"], "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(opts["evt_fd"], "wb", buffering=0))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    bridge = _Bridge(opts, writer)
    try:
        await asyncio.wait_for(bridge.start(), NODES_TIMEOUT_S * 2)
    except Exception as exc:  # noqa: BLE001 - reported to the engine, then we are done
        log.exception("cannot start on the Ray cluster")
        writer.write(_frame(("fatal", f"{type(exc).__name__}: {_short(exc)}")))
        await writer.drain()
        return 2
    watch = asyncio.create_task(bridge.watch_nodes())
    serve = asyncio.create_task(bridge.serve(reader))
    done, _ = await asyncio.wait({watch, serve}, return_when=asyncio.FIRST_COMPLETED)
    if watch in done:
        exc = watch.exception()
        writer.write(_frame(("fatal", f"lost the cluster: {exc}")))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 5)
        return 3
    watch.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.to_thread(bridge.ray.shutdown), 20)
    return 0


def bridge_main(argv: Sequence[str] | None = None) -> None:
    opts = pickle.loads(bytes.fromhex((argv or sys.argv[1:])[0]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts["connected_to"] = _ray_init(opts)
    except Exception as exc:  # noqa: BLE001 - whatever ray.init raises: reported to the engine
        log.exception("cannot connect to Ray")
        with contextlib.suppress(OSError):
            os.write(opts["evt_fd"], _frame(("fatal", f"{type(exc).__name__}: {_short(exc)}")))
        os._exit(2)
    code = asyncio.run(_bridge_main(opts))
    sys.stdout.flush()
    sys.stderr.flush()
    # Ray's threads can keep a clean exit waiting; the work is done and reported.
    os._exit(code)


# --------------------------------------------------------------------------- the engine side


@dataclass(frozen=True)
class SlotChange:
    """What changed since the last `refresh_slots()`."""

    added: tuple[Slot, ...] = ()
    removed: tuple[Slot, ...] = ()
    # (level, message) of what happened to the connection: "error" when it was lost, "info"
    # when it (re)connected; for the engine's events
    events: tuple[tuple[str, str], ...] = ()
    status: str = ""  # one line for `threadlab status` and the status bar


@dataclass
class _Pending:
    req: RunRequest
    slot: Slot
    sink: SampleSink
    submitted: float
    done: asyncio.Future[tuple[Any, ...]]
    samples: asyncio.Queue[list[dict[str, Any]] | None] = field(default_factory=asyncio.Queue)
    stop: RunStatus | None = None
    delivered: int = 0
    undelivered: int = 0


_STOP_ERRORS = {
    RunStatus.CANCELLED: "cancelled",
    RunStatus.INTERRUPTED: "interrupted: the executor shut down while the run was going on",
}


class RayExecutor:
    """Runs each Run as a Ray task on a cluster's node; see the module docstring.

    `await RayExecutor.connect(address)` returns a connected executor (ExecutorError when
    the cluster cannot be reached within `connect_timeout_s`). `address` is what
    `ray.init(address=...)` takes: "auto", "HOST:PORT" of the head's GCS, or None (the
    cluster `ray start` left on this machine, or else a new local instance, started with
    `init` as ray.init's extra arguments).
    """

    def __init__(self, address: str | None = None, *, device: str = "cpu", cpus_per_slot: float = 1,
                 log_path: str | os.PathLike[str] | None = None, node_ip_address: str | None = None,
                 init: dict[str, Any] | None = None, namespace: str = "threadlab",
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, bridge_env: dict[str, str] | None = None,
                 unavailable_wait_s: float = UNAVAILABLE_WAIT_S):
        if device not in ("cpu", "gpu"):
            raise ExecutorError(f"unknown device {device!r}", hint="use 'cpu' or 'gpu'")
        if cpus_per_slot <= 0:
            raise ExecutorError(f"cpus_per_slot must be positive, not {cpus_per_slot}")
        self.address = address
        self.device = device
        self.cpus_per_slot = cpus_per_slot
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"threadlab-ray-bridge-{os.getpid()}.log"
        self.node_ip_address = node_ip_address
        self.init = dict(init or {})
        self.namespace = namespace
        self.connect_timeout_s = connect_timeout_s
        self.bridge_env = dict(bridge_env or {})
        self.unavailable_wait_s = unavailable_wait_s
        self.slots: tuple[Slot, ...] = ()
        self.connected = False
        self.nodes = 0
        self.status = "not connected"
        self._slot_nodes: dict[str, str] = {}
        self._reported: dict[str, Slot] = {}
        self._events: list[tuple[str, str]] = []
        self._pending: dict[int, _Pending] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._to_bridge: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._supervisor: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[str] | None = None
        self._closed = False
        self.generation = 0  # bridges started so far

    @classmethod
    async def connect(cls, address: str | None = None, **kwargs: Any) -> RayExecutor:
        executor = cls(address, **kwargs)
        await executor.start()
        return executor

    @property
    def where(self) -> str:
        return self.address or "the local Ray instance"

    async def start(self) -> None:
        """Connect to the cluster; ExecutorError when it does not answer in time."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._supervisor = asyncio.create_task(self._supervise())
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await asyncio.shield(self._ready)
        except (TimeoutError, ExecutorError) as exc:
            await self.shutdown()
            if isinstance(exc, ExecutorError):
                raise
            raise ExecutorError(f"the Ray cluster at {self.where} did not answer within "
                                f"{self.connect_timeout_s:.0f} s", hint=self._hint()) from None
        self._reported = {s.name: s for s in self.slots}  # what the engine starts with

    def _hint(self) -> str:
        return (f"check that the cluster is up (`ray status --address {self.address}`) and that this "
                f"machine can reach it; the bridge's log is {self.log_path}")

    # ---- the bridge -------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._closed:
            reason = await self._run_bridge()
            if self._closed:
                return
            was = self.connected
            self._lost(reason)
            first = self._ready is not None and not self._ready.done()
            if first:
                self._ready.set_exception(ExecutorError(
                    f"cannot connect to the Ray cluster at {self.where}: {reason}", hint=self._hint()))
                return
            if was:
                delay = RECONNECT_MIN_S
            self.status = (f"ray: lost the connection to {self.where} ({reason}); "
                           f"reconnecting in {delay:.0f} s")
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _run_bridge(self) -> str:
        """Start a bridge, serve it until it ends; returns why it ended."""
        self.generation += 1
        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        opts = {"address": self.address, "device": self.device, "cpus": self.cpus_per_slot,
                "node_ip_address": self.node_ip_address, "init": self.init,
                "namespace": self.namespace, "cmd_fd": cmd_r, "evt_fd": evt_w}
        # the proposers' API keys stay in the engine: Ray's processes (and a local Ray it
        # starts) never see them
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")},
               "RAY_gcs_rpc_server_reconnect_timeout_s": "10", **self.bridge_env}
        env.pop("RAY_ADDRESS", None) if self.address else None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.ray_executor", pickle.dumps(opts).hex(),
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(cmd_r, evt_w),
                env=env, start_new_session=True)
        except OSError as exc:
            for fd in (cmd_r, cmd_w, evt_r, evt_w):
                os.close(fd)
            return f"cannot start the Ray bridge: {exc}"
        finally:
            os.close(log_fd)
        os.close(cmd_r)
        os.close(evt_w)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        r_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(evt_r, "rb", buffering=0))
        w_transport, w_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(cmd_w, "wb", buffering=0))
        self._to_bridge = asyncio.StreamWriter(w_transport, w_protocol, None, loop)
        reason = "the Ray bridge ended"
        try:
            while True:
                msg = await _read_frame(reader)
                if msg is None:
                    break
                fatal = self._on_message(msg)
                if fatal:
                    reason = fatal
        finally:
            self._to_bridge = None
            w_transport.close()
            r_transport.close()
            proc = self._proc
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if proc.returncode is None and not self._closed:
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    await proc.wait()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if reason == "the Ray bridge ended":
            tail = _tail_text(self.log_path)
            reason = f"the Ray bridge exited with code {proc.returncode}" + (f": {tail}" if tail else "")
        return reason

    def _on_message(self, msg: tuple[Any, ...]) -> str | None:
        kind = msg[0]
        if kind == "ready":
            self.connected = True
            self._events.append(("info", f"connected to the Ray cluster at {msg[1]['address']}"
                                 + (f" (connection {self.generation})" if self.generation > 1 else "")))
        elif kind == "slots":
            _, slots, nodes = msg
            self._slot_nodes = dict(slots)
            self.slots = tuple(Slot(name, "ray") for name, _ in slots)
            self.nodes = nodes
            self.status = f"ray at {self.where}: {nodes} node(s), {len(self.slots)} slot(s)"
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(self.status)
        elif kind == "samples":
            pending = self._pending.get(msg[1])
            if pending is not None:
                pending.samples.put_nowait(msg[2])
        elif kind in ("done", "lost", "error"):
            pending = self._pending.get(msg[1])
            if pending is not None and not pending.done.done():
                pending.done.set_result(msg)
        elif kind == "fatal":
            return str(msg[1])
        return None

    def _lost(self, reason: str) -> None:
        """The bridge is gone: its runs are interrupted, its slots with it."""
        if self.connected:
            self._events.append(("error", f"lost the connection to the Ray cluster at {self.where}: "
                                 f"{reason}; its runs are queued again, reconnecting"))
        self.connected = False
        self.slots = ()
        self._slot_nodes = {}
        self.nodes = 0
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.set_result(("lost", pending.req.run_id,
                                         f"lost the connection to the Ray cluster: {reason}"))

    async def _send(self, *msg: Any) -> bool:
        writer = self._to_bridge
        if writer is None:
            return False
        try:
            async with self._write_lock:
                writer.write(_frame(msg))
                await writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            return False
        return True

    # ---- the protocol -------------------------------------------------------------

    async def refresh_slots(self) -> SlotChange | None:
        """What changed since the last call, or since start() for the first (slots added or
        removed, the connection lost or regained), or None. Cheap: it reads what the bridge
        already reported."""
        current = {s.name: s for s in self.slots}
        added = tuple(s for n, s in current.items() if n not in self._reported)
        removed = tuple(s for n, s in self._reported.items() if n not in current)
        events, self._events = tuple(self._events), []
        if not (added or removed or events):
            return None
        self._reported = current
        return SlotChange(added, removed, events, self.status)

    async def execute(self, req: RunRequest, slot: Slot, on_samples: SampleSink) -> RunOutcome:
        if req.run_id in self._pending:
            raise ExecutorError(f"run {req.run_id} is already executing")
        submitted = time.time()
        if self._closed:
            return self._outcome(RunStatus.INTERRUPTED, _STOP_ERRORS[RunStatus.INTERRUPTED], submitted)
        node = await self._node_of(slot)
        if node is None:  # queued again; the engine drops a slot that left (refresh_slots)
            why = ("not connected to the Ray cluster" if not self.connected
                   else f"slot {slot.name} is no longer in the Ray cluster")
            return self._outcome(RunStatus.INTERRUPTED, f"{why} ({self.status})", submitted,
                                 ray_slot=slot.name, ran=False)
        try:
            files = await self._files_of(req.files_dir)
        except OSError as exc:
            raise ExecutorError(f"cannot pack the files of run {req.run_id}: {exc}") from exc
        pending = _Pending(req, slot, on_samples, submitted, asyncio.get_running_loop().create_future())
        self._pending[req.run_id] = pending
        deliver = asyncio.create_task(self._deliver(pending))
        try:
            payload = {"run_id": req.run_id, "slot": slot.name, "engine_python": sys.executable,
                       "req": {f.name: getattr(req, f.name) for f in dataclasses.fields(req)}}
            if not await self._send("run", req.run_id, payload, files, node):
                pending.done.set_result(("lost", req.run_id, "lost the connection to the Ray cluster"))
            msg = await pending.done
        finally:
            pending.samples.put_nowait(None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.shield(deliver)
            deliver.cancel()
            del self._pending[req.run_id]
        return await self._finish(pending, msg)

    async def _node_of(self, slot: Slot) -> str | None:
        """The node of a slot; while disconnected (or the slot gone) wait a little for it to
        come back, so that an engine that still offers the slot cannot spin on it."""
        deadline = time.monotonic() + self.unavailable_wait_s
        while True:
            node = self._slot_nodes.get(slot.name) if self.connected else None
            if node is not None or self._closed or time.monotonic() >= deadline:
                return node
            await asyncio.sleep(0.2)

    async def _files_of(self, files_dir: str) -> bytes:
        data = self._files.get(files_dir)
        if data is None:  # a node's files never change once written
            data = await asyncio.to_thread(pack_files, files_dir)
            self._files[files_dir] = data
            while len(self._files) > 16:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(files_dir)
        return data

    async def _deliver(self, pending: _Pending) -> None:
        while True:
            batch = await pending.samples.get()
            if batch is None:
                return
            try:
                await pending.sink(batch)
                pending.delivered += len(batch)
            except Exception:  # noqa: BLE001 - the run goes on; the loss is reported in extra
                log.exception("sample sink failed; %d samples lost", len(batch))
                pending.undelivered += len(batch)

    def _outcome(self, status: RunStatus, error: str, started: float, **extra: Any) -> RunOutcome:
        return RunOutcome(status=status, metric=None, exit_code=None, error=error, started_at=started,
                          ended_at=time.time(), extra={"executor": "ray", **extra})

    async def _finish(self, pending: _Pending, msg: tuple[Any, ...]) -> RunOutcome:
        req, kind = pending.req, msg[0]
        if kind == "error" and pending.stop is None:
            raise ExecutorError(msg[2], hint=msg[3] or None)
        if kind != "done" or pending.stop is not None:
            status = pending.stop or RunStatus.INTERRUPTED
            error = _STOP_ERRORS[status] if pending.stop else f"the Ray worker was lost: {msg[2]}"
            # a task its node could not take never ran: not an attempt of the run
            ran = "TaskUnschedulableError" not in str(msg[2])
            return self._outcome(status, error, pending.submitted, ray_slot=pending.slot.name, ran=ran)
        result = msg[2]
        out = result["outcome"]
        await asyncio.to_thread(_write_logs, Path(req.run_dir), result.get("logs", {}))
        extra = dict(out.get("extra") or {})
        extra.update(executor="ray", ray_node=result.get("node_id"), ray_host=result.get("host"),
                     worker_run_s=round(result.get("worker_ended_at", 0) - result.get("worker_started_at", 0), 3))
        if pending.undelivered:
            extra["samples_undelivered"] = extra.get("samples_undelivered", 0) + pending.undelivered
        audits = tuple(AuditResult(**a) for a in out.get("audits") or ())
        return RunOutcome(status=RunStatus(out["status"]), metric=out.get("metric"), exit_code=out.get("exit_code"),
                          error=out.get("error", ""), started_at=pending.submitted, ended_at=time.time(),
                          audits=audits, extra=extra)

    async def cancel(self, run_id: int) -> bool:
        """Stop a run now: the worker kills its sandbox (force-cancelled if it does not);
        it returns CANCELLED. False when no such run is going on."""
        pending = self._pending.get(run_id)
        if pending is None:
            return False
        pending.stop = pending.stop or RunStatus.CANCELLED
        if not await self._send("cancel", run_id):
            if not pending.done.done():
                pending.done.set_result(("lost", run_id, "cancelled while disconnected"))
            return True
        # the bridge answers within CANCEL_GRACE_S (plus a force-cancel); never hang on it
        asyncio.get_running_loop().call_later(
            CANCEL_GRACE_S + 15, lambda: pending.done.done() or pending.done.set_result(
                ("lost", run_id, "no answer to the cancel")))
        return True

    async def shutdown(self) -> None:
        """Interrupt every run (they return INTERRUPTED), stop the bridge, wait for it."""
        if self._closed:
            return
        self._closed = True
        for pending in self._pending.values():
            pending.stop = pending.stop or RunStatus.INTERRUPTED
        proc = self._proc
        if self._to_bridge is not None and self.connected:
            await self._send("stop")
        elif proc is not None and proc.returncode is None:  # still in ray.init: nothing to stop cleanly
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc is not None and proc.returncode is None:
            try:
                async with asyncio.timeout(CANCEL_GRACE_S + 20):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.set_result(("lost", pending.req.run_id, "shut down"))
        if self._supervisor is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                async with asyncio.timeout(25):
                    await self._supervisor
            self._supervisor.cancel()
        self.connected = False
        self.slots = ()
        self.status = "ray: disconnected (shut down)"


def _write_logs(run_dir: Path, logs: dict[str, bytes]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in LOG_NAMES:
        if name in logs:
            path = run_dir / name
            if path.is_symlink():
                path.unlink()
            path.write_bytes(logs[name])


_RAY_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*(?:\S+:\d+:\s*)?")


def _tail_text(path: Path) -> str:
    """The gist of why the bridge ended, from its log: the last error line, or the last line."""
    data = _read_tail(path, 16384) or b""
    lines = [ln.strip() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^\[[^\]]* E \d+", ln) or re.match(r"^\w*(Error|Exception)\b", ln)]
    line = (errors or lines or [""])[-1]
    line = _RAY_LOG_PREFIX.sub("", line)
    first = line.find(". ")
    if 20 <= first < 240:  # Ray's messages go on with advice that fits no one line
        return line[:first + 1]
    return line[:240] + ("..." if len(line) > 240 else "")


if __name__ == "__main__":
    # Through the importable module, so that Ray pickles SampleHub and _ray_run by reference
    # (workers import engine.ray_executor) rather than by value from __main__.
    from engine.ray_executor import bridge_main as _main

    _main()
