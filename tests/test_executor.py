"""engine.executor: the two-phase run contract, budgets, kills, and the sandbox's rules.

Each test writes a tiny candidate (train.py) and evaluator (evaluate.py) into a task folder.
Tests marked with the `mode` fixture run both under bwrap and with THREADLAB_NO_SANDBOX=1.
"""

from __future__ import annotations

import dataclasses
import asyncio
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from engine import executor as executor_mod
from engine import sandbox
from engine.errors import ExecutorError
from engine.executor import LocalExecutor, detect_slots
from engine.models import AuditResult, RunRequest, RunStatus, Slot

PY = sys.executable

CANDIDATE_HEAD = """\
import json, os, sys, time
OUT = os.environ["THREADLAB_OUT"]
_samples = os.fdopen(int(os.environ["THREADLAB_SAMPLES_FD"]), "w", buffering=1)
def sample(step, name, value):
    _samples.write(json.dumps({"step": step, "name": name, "value": value}) + "\\n")
def record(name, value):
    with open(os.path.join(OUT, name), "w") as f:
        f.write(str(value))
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return "ERROR " + type(exc).__name__
"""

EVALUATOR_HEAD = """\
import json, os, sys
def result(obj):
    with os.fdopen(int(os.environ["THREADLAB_RESULT_FD"]), "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return "ERROR " + type(exc).__name__
"""

DEFAULT_EVALUATOR = """\
result({"metric": 1.5, "extra": {"data": read("data.txt")}})
"""

SLOT = Slot("cpu0", "cpu", (("OMP_NUM_THREADS", "1"), ("SLOT_VAR", "slot")))


@pytest.fixture(autouse=True)
def _fresh_probe():
    sandbox.bwrap_path.cache_clear()
    yield
    sandbox.bwrap_path.cache_clear()


@pytest.fixture(params=["bwrap", "none"])
def mode(request, monkeypatch) -> str:
    if request.param == "none":
        monkeypatch.setenv("THREADLAB_NO_SANDBOX", "1")
    else:
        monkeypatch.delenv("THREADLAB_NO_SANDBOX", raising=False)
        if sandbox.bwrap_path() is None:
            pytest.skip("bubblewrap cannot create a sandbox here")
    sandbox.bwrap_path.cache_clear()
    return request.param


@pytest.fixture
def bwrap_only(monkeypatch) -> None:
    monkeypatch.delenv("THREADLAB_NO_SANDBOX", raising=False)
    if sandbox.bwrap_path() is None:
        pytest.skip("bubblewrap cannot create a sandbox here")


@pytest.fixture
def outside_dir():
    """A directory outside /tmp (the sandbox has its own /tmp, which would hide it anyway)."""
    path = Path(tempfile.mkdtemp(prefix="threadlab-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Sink:
    """Collects sample batches; an optional hook runs on each batch."""

    def __init__(self, hook=None):
        self.batches: list[list[dict[str, Any]]] = []
        self.hook = hook

    async def __call__(self, batch: list[dict[str, Any]]) -> None:
        self.batches.append(batch)
        if self.hook is not None:
            await self.hook(batch)

    @property
    def samples(self) -> list[dict[str, Any]]:
        return [s for b in self.batches for s in b]


def make_task(root: Path, candidate: str, evaluator: str = DEFAULT_EVALUATOR,
              files: dict[str, str] | None = None) -> Path:
    task = root / "files"
    task.mkdir()
    (task / "train.py").write_text(CANDIDATE_HEAD + textwrap.dedent(candidate))
    (task / "evaluate.py").write_text(EVALUATOR_HEAD + textwrap.dedent(evaluator))
    (task / "data.txt").write_text("pristine")
    for name, text in (files or {}).items():
        (task / name).write_text(text)
    return task


def request(root: Path, files: Path, *, run_id: int = 1, budget: float = 30,
            grace: float = 1, eval_timeout: float = 30, protected: tuple[str, ...] = (),
            private: tuple[str, ...] = (), env: tuple[tuple[str, str], ...] = (),
            run_command: tuple[str, ...] = (PY, "train.py"), sealed: tuple[str, ...] = ()) -> RunRequest:
    return RunRequest(
        run_id=run_id, node_id=1, seed=7, files_dir=str(files),
        run_dir=str(root / f"run{run_id}"), budget_s=budget, grace_s=grace,
        eval_timeout_s=eval_timeout, run_command=run_command,
        eval_command=(PY, "evaluate.py"), protected=protected, private_paths=private,
        env=env, sealed=sealed)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


def pids_running(marker: str) -> list[int]:
    """Host pids of live processes whose command line has `marker` as an argument."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in args and alive(int(entry)):
            found.append(int(entry))
    return found


# ------------------------------------------------------------------ the normal run


async def test_normal_run(mode, tmp_path, caplog):
    files = make_task(tmp_path, """\
        print("val_bpb: 0.1")
        print('{"metric": 0}')
        record("result.json", '{"metric": 0}')
        for step in range(5):
            sample(step, "loss", 3.0 - step * 0.5)
        sample(5, "lr", 0.01)
    """)
    sink = Sink()
    before = time.time()
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, sink)
    after = time.time()

    assert out.status == RunStatus.DONE, out.error
    assert out.metric == 1.5  # the evaluator's number, not what the candidate printed
    assert out.exit_code == 0 and out.error == ""
    assert [(s["step"], s["name"], s["value"]) for s in sink.samples] == [
        (0, "loss", 3.0), (1, "loss", 2.5), (2, "loss", 2.0), (3, "loss", 1.5),
        (4, "loss", 1.0), (5, "lr", 0.01)]
    assert all(before <= s["t"] <= after for s in sink.samples)
    assert before <= out.started_at <= out.ended_at <= after
    assert out.extra["sandboxed"] is (mode == "bwrap")
    assert out.extra["samples"] == 6 and out.extra["samples_dropped"] == 0
    assert out.extra["run_s"] > 0 and out.extra["eval_s"] > 0
    assert out.extra["data"] == "pristine"
    run_dir = tmp_path / "run1"
    assert "val_bpb: 0.1" in (run_dir / "stdout.log").read_text()
    assert (run_dir / "eval.log").exists()
    # Nothing was left hanging (e.g. a pipe kept open by the parent's copy of its fd).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_environment(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    monkeypatch.setenv("THREADLAB_DB", "/somewhere/state.db")
    files = make_task(tmp_path, """\
        record("env.json", json.dumps(dict(os.environ)))
    """, evaluator="""\
        with open(os.path.join(os.environ["THREADLAB_RUN_DIR"], "eval", "env.json"), "w") as f:
            json.dump(dict(os.environ), f)
        result({"metric": 1})
    """)
    req = request(tmp_path, files, budget=12, env=(("REQ_VAR", "req"),))
    t0 = time.time()
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error

    run_dir = tmp_path / "run1"
    cand = json.loads((run_dir / "out" / "env.json").read_text())
    ev = json.loads((run_dir / "eval" / "env.json").read_text())
    for env in (cand, ev):
        assert "ANTHROPIC_API_KEY" not in env and "THREADLAB_DB" not in env
        assert env["THREADLAB_SEED"] == "7" and env["PYTHONUNBUFFERED"] == "1"
        assert env["SLOT_VAR"] == "slot" and env["REQ_VAR"] == "req"
        assert float(env["THREADLAB_BUDGET_S"]) == 12
    assert t0 + 12 <= float(cand["THREADLAB_DEADLINE"]) <= time.time() + 12
    assert cand["THREADLAB_OUT"] == str(run_dir / "out")
    assert "THREADLAB_SAMPLES_FD" in cand and "THREADLAB_RESULT_FD" not in cand
    assert "THREADLAB_RESULT_FD" in ev and "THREADLAB_SAMPLES_FD" not in ev
    assert ev["THREADLAB_OUT"] == str(run_dir / "out")
    assert ev["THREADLAB_RUN_DIR"] == str(run_dir)
    assert ev["THREADLAB_WORK"] == str(run_dir / "work")
    assert float(ev["THREADLAB_RUN_S"]) > 0


async def test_samples_are_batched_filtered_and_capped(tmp_path, monkeypatch):
    monkeypatch.setenv("THREADLAB_NO_SANDBOX", "1")
    monkeypatch.setattr(executor_mod, "MAX_SAMPLES", 450)
    files = make_task(tmp_path, """\
        _samples.write("not json\\n")
        _samples.write('{"step": 1, "name": "loss", "value": NaN}\\n')
        _samples.write('{"step": 1, "name": "loss", "value": "x"}\\n')
        _samples.write('{"step": 1, "name": "loss", "value": ' + "1" * 70000 + '}\\n')
        for step in range(500):
            sample(step, "loss", float(step))
    """)
    sink = Sink()
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, sink)
    assert out.status == RunStatus.DONE, out.error
    assert [s["step"] for s in sink.samples] == list(range(450))
    assert max(len(b) for b in sink.batches) <= 200
    assert out.extra["samples"] == 450
    assert out.extra["samples_dropped"] == 50
    assert out.extra["samples_bad"] == 4


async def test_samples_arrive_while_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("THREADLAB_NO_SANDBOX", "1")
    # The candidate waits until the executor has delivered its first sample (the sink
    # writes a file the candidate polls), so the batch cannot have waited for the exit.
    files = make_task(tmp_path, """\
        sample(0, "loss", 1.0)
        flag = os.path.join(OUT, "seen")
        while not os.path.exists(flag):
            time.sleep(0.01)
        sample(1, "loss", 0.5)
    """)
    req = request(tmp_path, files, budget=20)

    async def hook(batch):
        (Path(req.run_dir) / "out" / "seen").write_text("1")

    sink = Sink(hook)
    async with asyncio.timeout(15):  # a sample held back until the exit would hang here
        out = await LocalExecutor([SLOT]).execute(req, SLOT, sink)
    assert out.status == RunStatus.DONE, out.error
    assert [[s["step"] for s in b] for b in sink.batches] == [[0], [1]]


async def test_concurrent_runs_keep_their_samples_apart(mode, tmp_path):
    files = make_task(tmp_path, """\
        tag = float(os.environ["TAG"])
        for step in range(50):
            sample(step, "tag", tag)
    """)
    ex = LocalExecutor([SLOT, SLOT])
    sinks = [Sink(), Sink()]
    outs = await asyncio.gather(*(
        ex.execute(request(tmp_path, files, run_id=i, env=(("TAG", str(i)),)), SLOT, sinks[i])
        for i in range(2)))
    for i, (out, sink) in enumerate(zip(outs, sinks, strict=True)):
        assert out.status == RunStatus.DONE, out.error
        assert [s["value"] for s in sink.samples] == [float(i)] * 50


# ------------------------------------------------------------------ the evaluator's files


async def test_evaluator_reads_a_pristine_copy(mode, tmp_path):
    files = make_task(tmp_path, """\
        with open("data.txt", "w") as f:
            f.write("tampered")
    """, evaluator="""\
        result({"metric": 1.0 if read("data.txt") == "pristine" else 0.0,
                "extra": {"data": read("data.txt"),
                          "work": read(os.path.join(os.environ["THREADLAB_WORK"], "data.txt"))}})
    """)
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    assert out.extra["work"] == "tampered"  # the candidate did change its own copy
    assert out.extra["data"] == "pristine"
    assert out.metric == 1.0
    assert (files / "data.txt").read_text() == "pristine"


async def test_protected_file_is_read_only(bwrap_only, tmp_path):
    files = make_task(tmp_path, """\
        try:
            with open("harness.py", "w") as f:
                f.write("SCORE = 0")
            record("attempt.txt", "wrote")
        except OSError as exc:
            record("attempt.txt", exc.strerror)
    """, files={"harness.py": "SCORE = 1\n"})
    req = request(tmp_path, files, protected=("harness.py",))
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    run_dir = tmp_path / "run1"
    assert (run_dir / "out" / "attempt.txt").read_text() == "Read-only file system"
    assert (run_dir / "work" / "harness.py").read_text() == "SCORE = 1\n"


async def test_symlink_planted_at_eval_log_is_not_followed(mode, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    files = make_task(tmp_path, f"""\
        run_dir = os.path.dirname(OUT)
        os.symlink({str(victim)!r}, os.path.join(run_dir, "eval.log"))
        os.makedirs(os.path.join(run_dir, "eval", "files"))
        with open(os.path.join(run_dir, "eval", "files", "data.txt"), "w") as f:
            f.write("planted")
    """, evaluator="""\
        print("evaluator output")
        result({"metric": 2, "extra": {"data": read("data.txt")}})
    """)
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    assert out.extra["data"] == "pristine"
    assert victim.read_text() == "intact"
    log = tmp_path / "run1" / "eval.log"
    assert not log.is_symlink() and "evaluator output" in log.read_text()


# ------------------------------------------------------------------ budget, cancel, shutdown


async def test_budget_kills_the_whole_group(mode, tmp_path):
    marker = f"1000.{random.randrange(10**9)}"
    # Both the candidate and its grandchild ignore SIGTERM, so SIGKILL must follow.
    files = make_task(tmp_path, f"""\
        import signal, subprocess
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", {marker!r}])
        record("grandchild.pid", child.pid)
        sample(0, "spawned", 1)
        while True:
            time.sleep(1000)
    """)
    seen: list[int] = []

    async def hook(batch):
        seen.extend(pids_running(marker))

    req = request(tmp_path, files, budget=0.5, grace=0.5)
    async with asyncio.timeout(30):  # fail, rather than hang, if the budget is not enforced
        out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink(hook))

    assert out.status == RunStatus.TIMEOUT
    assert "budget" in out.error and out.metric is None
    assert seen, "the grandchild was never seen running"
    assert not any(alive(pid) for pid in seen)
    assert pids_running(marker) == []
    if mode == "none":  # without a PID namespace the pid it wrote is a host pid
        pid = int((tmp_path / "run1" / "out" / "grandchild.pid").read_text())
        assert pid in seen and not alive(pid)
    assert not (tmp_path / "run1" / "eval.log").exists()


async def test_leftover_processes_die_when_the_candidate_exits(mode, tmp_path):
    marker = f"1000.{random.randrange(10**9)}"
    files = make_task(tmp_path, f"""\
        import subprocess
        subprocess.Popen(["sleep", {marker!r}])
        sample(0, "spawned", 1)
        _samples.flush()
        time.sleep(0.3)
    """)
    seen: list[int] = []

    async def hook(batch):
        seen.extend(pids_running(marker))

    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink(hook))
    assert out.status == RunStatus.DONE, out.error
    assert seen and not any(alive(pid) for pid in seen)


async def test_cancel_kills_a_running_run(mode, tmp_path):
    files = make_task(tmp_path, """\
        sample(0, "started", 1)
        while True:
            time.sleep(1000)
    """)
    ex = LocalExecutor([SLOT])
    req = request(tmp_path, files, budget=120)
    answers: list[bool] = []

    async def hook(batch):
        answers.append(await ex.cancel(req.run_id))

    async with asyncio.timeout(20):  # far below the budget: only cancel() can end it
        out = await ex.execute(req, SLOT, Sink(hook))
    assert out.status == RunStatus.CANCELLED
    assert out.metric is None
    assert answers == [True]
    assert await ex.cancel(req.run_id) is False


async def test_shutdown_interrupts_runs(mode, tmp_path):
    files = make_task(tmp_path, """\
        sample(0, "started", 1)
        while True:
            time.sleep(1000)
    """)
    ex = LocalExecutor([SLOT])
    stopping: list[asyncio.Task[None]] = []

    async def hook(batch):
        stopping.append(asyncio.create_task(ex.shutdown()))

    async with asyncio.timeout(20):
        out = await ex.execute(request(tmp_path, files, budget=120), SLOT, Sink(hook))
        await stopping[0]
    assert out.status == RunStatus.INTERRUPTED
    later = await ex.execute(request(tmp_path, files, run_id=2), SLOT, Sink())
    assert later.status == RunStatus.INTERRUPTED
    assert not (tmp_path / "run2" / "stdout.log").exists()


# ------------------------------------------------------------------ failures


async def test_crash_reports_exit_code_and_stderr_tail(mode, tmp_path):
    files = make_task(tmp_path, """\
        for i in range(30):
            print(f"line {i}", file=sys.stderr)
        sys.exit(3)
    """)
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink())
    assert out.status == RunStatus.FAILED
    assert out.exit_code == 3 and out.metric is None
    assert "exited with code 3" in out.error
    assert re.search(r"^line 29$", out.error, re.M)
    assert re.search(r"^line 10$", out.error, re.M)
    assert not re.search(r"^line 9$", out.error, re.M)
    assert not (tmp_path / "run1" / "eval.log").exists()


async def test_missing_command_fails_clearly(mode, tmp_path):
    files = make_task(tmp_path, "")
    req = request(tmp_path, files, run_command=("no-such-program-xyz",))
    if mode == "none":  # nothing starts at all: this machine's problem, not the candidate's
        with pytest.raises(ExecutorError, match="cannot start the candidate.*no-such-program-xyz"):
            await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
        return
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())  # bwrap starts, then its exec fails
    assert out.status == RunStatus.FAILED
    assert "no-such-program-xyz" in out.error


@pytest.mark.parametrize(("evaluator", "error"), [
    ('result("this is {not json")', "evaluator result is not JSON"),
    ('result(\'{"metric": NaN}\')', "metric is nan"),
    ('result(\'{"metric": Infinity}\')', "metric is inf"),
    ('result(\'{"metric": "0.9"}\')', "metric is not a number"),
    ('result({"audits": []})', "evaluator result has no metric"),
    ('result({"metric": 1, "audits": [{"ok": True}]})', "audits[0]"),
    ("pass", "evaluator wrote no result"),
    ('result("[" + " " * (1 << 21) + "]")', "larger than 1 MiB"),
    ('result({"metric": 1}); sys.exit(4)', "evaluator exited with code 4"),
])
async def test_bad_evaluator_results_fail(tmp_path, monkeypatch, evaluator, error):
    monkeypatch.setenv("THREADLAB_NO_SANDBOX", "1")
    files = make_task(tmp_path, "", evaluator=evaluator + "\n")
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink())
    assert out.status == RunStatus.FAILED
    assert out.metric is None
    assert error in out.error


async def test_evaluator_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("THREADLAB_NO_SANDBOX", "1")
    files = make_task(tmp_path, "", evaluator="import time; time.sleep(1000)\n")
    out = await LocalExecutor([SLOT]).execute(
        request(tmp_path, files, eval_timeout=0.3), SLOT, Sink())
    assert out.status == RunStatus.FAILED
    assert "evaluator timed out" in out.error


async def test_audits_come_back(mode, tmp_path):
    files = make_task(tmp_path, "", evaluator="""\
        result({"metric": 0.93, "audits": [
            {"guard": "causality", "ok": True, "message": "ok", "evidence": {"max_diff": 0.0}},
            {"guard": "budget", "ok": False, "message": "overran"},
        ], "extra": {"params": 123, "run_s": -1}})
    """)
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    assert out.metric == 0.93
    assert out.audits == (
        AuditResult("causality", True, "ok", {"max_diff": 0.0}),
        AuditResult("budget", False, "overran", {}),
    )
    assert out.extra["params"] == 123
    assert out.extra["run_s"] > 0  # the executor's own measurement wins


# ------------------------------------------------------------------ the sandbox's rules


async def test_no_network(mode, tmp_path):
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        await reader.read(1)
        writer.write(b"!")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    files = make_task(tmp_path, """\
        import socket
        try:
            s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=5)
            s.sendall(b"?")
            record("net.txt", "connected " + s.recv(1).decode())
        except OSError as exc:
            record("net.txt", "error " + type(exc).__name__)
    """)
    try:
        out = await LocalExecutor([SLOT]).execute(
            request(tmp_path, files, env=(("PORT", str(port)),)), SLOT, Sink())
    finally:
        server.close()
        await server.wait_closed()
    assert out.status == RunStatus.DONE, out.error
    net = (tmp_path / "run1" / "out" / "net.txt").read_text()
    if mode == "bwrap":
        assert net.startswith("error") and connections == 0
    else:  # the control: without the sandbox the same candidate gets through
        assert net == "connected !" and connections == 1


async def test_cannot_write_outside_the_run_dir(mode, tmp_path, outside_dir):
    targets = [tmp_path / "outside.txt", outside_dir / "outside.txt"]
    files = make_task(tmp_path, f"""\
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "w") as f:
                    f.write("escaped")
            except OSError:
                pass
    """)
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    expected = mode == "none"  # the control proves the candidate really tried
    assert [t.exists() for t in targets] == [expected, expected]


async def test_private_paths_hidden_from_candidate_handed_to_evaluator(
        bwrap_only, tmp_path, outside_dir):
    secret = outside_dir / "secret.txt"
    secret.write_text("s3cret")
    valdir = outside_dir / "val"
    valdir.mkdir()
    (valdir / "val.bin").write_text("validation")
    under_tmp = tmp_path / "audit.txt"  # under the host's /tmp
    under_tmp.write_text("audit split")
    paths = [str(secret), str(valdir / "val.bin"), str(under_tmp)]
    files = make_task(tmp_path, f"""\
        record("seen.json", json.dumps([read(p) for p in {paths!r}]))
    """, evaluator=f"""\
        handles = json.loads(os.environ["THREADLAB_PRIVATE"])
        via = [handles[{str(secret)!r}], handles[{str(valdir)!r}] + "/val.bin", handles[{str(under_tmp)!r}]]
        result({{"metric": 1, "extra": {{"seen": [read(p) for p in via], "direct": [read(p) for p in {paths!r}]}}}})
    """)
    req = request(tmp_path, files, private=(str(secret), str(valdir), str(under_tmp)))
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    seen = json.loads((tmp_path / "run1" / "out" / "seen.json").read_text())
    # A hidden file reads as an error (bwrap binds /dev/null without device access),
    # a hidden directory is empty.
    assert all(s.startswith("ERROR") for s in seen), seen
    # The evaluator reads them through the handles it was given, not by their paths.
    assert out.extra["seen"] == ["s3cret", "validation", "audit split"]
    assert all(s.startswith("ERROR") for s in out.extra["direct"]), out.extra["direct"]


async def test_sealed_paths_are_hidden_from_both_phases(bwrap_only, tmp_path, outside_dir):
    """Another run's checkpoint must not reach the candidate, nor its code in the evaluator."""
    other_run = outside_dir / "runs" / "7"
    other_run.mkdir(parents=True)
    (other_run / "model.pt").write_text("better weights")
    path = str(other_run / "model.pt")
    files = make_task(tmp_path, f"""\
        record("seen.json", json.dumps(read({path!r})))
    """, evaluator=f"""\
        result({{"metric": 1, "extra": {{"seen": read({path!r})}}}})
    """)
    req = request(tmp_path, files, sealed=(str(outside_dir / "runs"),))
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    assert json.loads((tmp_path / "run1" / "out" / "seen.json").read_text()).startswith("ERROR")
    assert out.extra["seen"].startswith("ERROR")


# ------------------------------------------------------------------ slots


def test_detect_cpu_slots():
    slots = detect_slots(cpu_slots=3)
    threads = str(max(1, (os.cpu_count() or 1) // 3))
    assert [s.name for s in slots] == ["cpu0", "cpu1", "cpu2"]
    env = dict(slots[0].env)
    assert env["OMP_NUM_THREADS"] == threads == env["MKL_NUM_THREADS"]
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_detect_gpu_slots_from_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    slots = detect_slots(device="gpu")
    assert [(s.name, s.kind, dict(s.env)["CUDA_VISIBLE_DEVICES"]) for s in slots] == [
        ("gpu0", "gpu", "2"), ("gpu1", "gpu", "3")]


def test_detect_gpu_slots_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                   "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert [dict(s.env)["CUDA_VISIBLE_DEVICES"] for s in detect_slots(device="gpu")] == [
        "0", "1"]


def test_no_gpu_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExecutorError) as err:
        detect_slots(device="gpu")
    assert err.value.hint


def test_result_parsing_keeps_audits_without_metric():
    parsed = executor_mod.parse_result(
        b'{"metric": NaN, "audits": [{"guard": "g", "ok": false}]}')
    assert parsed.metric is None and parsed.error == "metric is nan"
    assert parsed.audits == (AuditResult("g", False),)
    assert executor_mod.parse_result(b'{"metric": 2}') == executor_mod.parse_result(
        b'{"metric": 2.0, "audits": [], "extra": {}}')
    assert executor_mod.parse_result(b'{"metric": 2}').metric == 2.0


FORGER = """\
import glob, json, os
fake = json.dumps({"metric": 0.001}).encode()
for path in glob.glob("/proc/[0-9]*/fd/*"):
    try:
        if os.path.basename(os.readlink(path)).startswith("pipe:"):
            with open(path, "wb") as f:
                f.write(fake)
    except OSError:
        pass
"""


async def test_nothing_the_evaluator_starts_can_reach_its_result_pipe(bwrap_only, tmp_path):
    # An evaluator that runs untrusted code in a child makes itself non-dumpable; no other
    # process in its sandbox holds the pipe (no reaper), even when the engine runs as root.
    files = make_task(tmp_path, "", evaluator="""\
        import ctypes, subprocess
        channel = os.fdopen(int(os.environ["THREADLAB_RESULT_FD"]), "w")
        os.set_inheritable(channel.fileno(), False)
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
        subprocess.run([sys.executable, "forger.py"], check=True)
        channel.write(json.dumps({"metric": 1.5}))
        channel.close()
        """, files={"forger.py": FORGER})
    out = await LocalExecutor([SLOT]).execute(request(tmp_path, files), SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    assert out.metric == 1.5


async def test_the_evaluator_reads_private_data_only_through_its_handle(bwrap_only, tmp_path, outside_dir):
    secret = outside_dir / "private"
    secret.mkdir()
    (secret / "answers.txt").write_text("42")
    files = make_task(tmp_path, "", evaluator="""\
        import subprocess
        handles = json.loads(os.environ["THREADLAB_PRIVATE"])
        mine = read(os.path.join(handles[sys.argv[1]], "answers.txt"))
        child = subprocess.run([sys.executable, "-c", "import sys; print(open(sys.argv[1]).read())",
                                os.path.join(handles[sys.argv[1]], "answers.txt")], capture_output=True, text=True)
        result({"metric": 1.0, "extra": {"mine": mine, "by_path": read(sys.argv[1] + "/answers.txt"),
                                         "child": child.stdout.strip()}})
        """)
    req = request(tmp_path, files, private=(str(secret),))
    req = dataclasses.replace(req, eval_command=(PY, "evaluate.py", str(secret)))
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    assert out.extra["mine"] == "42"
    assert out.extra["by_path"].startswith("ERROR")  # not mounted in the evaluator's sandbox
    assert out.extra["child"] == ""  # and its children do not inherit the handle
