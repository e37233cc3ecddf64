"""engine.executor: a run's untimed set-up (the ready/go handshake), the paths it hides
until the budget starts, and slots that take turns at the timed part (two slots, one GPU).

The candidates are tiny scripts that speak the protocol the way tasks/nanochat/runner.py
does: write `ready`, read `go DEADLINE JSON` with the handles that come with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from engine.executor import LocalExecutor, detect_slots
from engine.models import RunStatus, Slot
from tests.test_executor import SLOT, Sink, make_task, request
from tests.test_executor import _fresh_probe, bwrap_only, mode, outside_dir  # noqa: F401  (fixtures)

GATE = """\
import socket
def go():
    gate = socket.socket(fileno=int(os.environ["THREADLAB_GATE_FD"]))
    gate.sendall(b"ready\\n")
    message, fds, _, _ = socket.recv_fds(gate, 65536, 16)
    word, deadline, handles = message.decode().rstrip("\\n").split(" ", 2)
    assert word == "go", word
    return float(deadline), {p: f"/proc/self/fd/{fds[i]}" for p, i in json.loads(handles).items()}
"""

TIMED_EVALUATOR = """\
result({"metric": float(os.environ["THREADLAB_RUN_S"]), "extra": {}})
"""


def gated(tmp_path: Path, candidate: str, *, setup: float = 20, timed: tuple[str, ...] = (),
          budget: float = 30, run_id: int = 1, files: Path | None = None):
    files = files or make_task(tmp_path, GATE + textwrap.dedent(candidate), TIMED_EVALUATOR)
    return dataclasses.replace(request(tmp_path, files, run_id=run_id, budget=budget),
                               setup_s=setup, timed_paths=timed)


async def test_the_budget_starts_at_go_and_the_set_up_is_not_counted(mode, tmp_path):
    req = gated(tmp_path, """\
        assert "THREADLAB_DEADLINE" not in os.environ  # it is not known before go
        time.sleep(2.0)  # the set-up: compilation on dummy data
        deadline, _ = go()
        record("left", deadline - time.time())
        time.sleep(0.3)
    """, budget=30)
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    assert out.extra["setup_s"] >= 2.0
    assert out.extra["run_s"] < 1.5 and out.metric == pytest.approx(out.extra["run_s"], abs=0.01)
    left = float((tmp_path / "run1" / "out" / "left").read_text())
    assert 28 < left <= 30  # the deadline counts from go


async def test_timed_paths_are_hidden_in_the_set_up_and_handed_over_at_go(bwrap_only, tmp_path, outside_dir):
    data = outside_dir / "train"
    data.mkdir()
    (data / "tokens.txt").write_text("the train split")
    req = gated(tmp_path, f"""\
        record("before", read({str(data / "tokens.txt")!r}))
        _, handles = go()
        record("after", read(handles[{str(data)!r}] + "/tokens.txt"))
        record("by_name", read({str(data / "tokens.txt")!r}))
    """, timed=(str(data),))
    req = dataclasses.replace(req, readable=(str(outside_dir),))
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.DONE, out.error
    run_out = tmp_path / "run1" / "out"
    assert (run_out / "before").read_text().startswith("ERROR")
    assert (run_out / "after").read_text() == "the train split"
    assert (run_out / "by_name").read_text().startswith("ERROR")  # only through the handle


async def test_a_set_up_past_its_limit_is_killed(mode, tmp_path):
    req = gated(tmp_path, """\
        time.sleep(60)
        go()
    """, setup=1.5)
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.TIMEOUT and out.extra["killed_in"] == "setup"
    assert "untimed set-up after 1.5 s" in out.error
    assert 1.5 <= out.extra["setup_s"] < 6 and out.extra["run_s"] is None


async def test_garbage_instead_of_ready_is_not_a_go(mode, tmp_path):
    req = gated(tmp_path, """\
        gate = socket.socket(fileno=int(os.environ["THREADLAB_GATE_FD"]))
        gate.sendall(b"steady\\n")
        time.sleep(60)
    """, setup=1.5)
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == RunStatus.TIMEOUT and out.extra["killed_in"] == "setup"


@pytest.mark.parametrize("code, status, words", [
    (0, RunStatus.FAILED, "exited before its budget started"),
    (3, RunStatus.FAILED, "exited with code 3"),
])
async def test_an_exit_in_the_set_up_ends_the_run(mode, tmp_path, code, status, words):
    req = gated(tmp_path, f"""\
        print("setting up", file=sys.stderr)
        sys.exit({code})
    """)
    out = await LocalExecutor([SLOT]).execute(req, SLOT, Sink())
    assert out.status == status and words in out.error, out.error
    assert out.extra["run_s"] is None and out.extra["eval_s"] is None


def two_runs(tmp_path: Path) -> list:
    """Two runs that set up for 1 s and then hold the budget for 1.5 s, recording when."""
    candidate = """\
        t0 = time.time()
        time.sleep(1.0)
        go()
        t1 = time.time()
        time.sleep(1.5)
        record("times", json.dumps([t0, t1, time.time()]))
    """
    files = make_task(tmp_path, GATE + textwrap.dedent(candidate), TIMED_EVALUATOR)
    return [gated(tmp_path, "", run_id=i, files=files) for i in (1, 2)]


async def run_both(tmp_path: Path, slots: list[Slot]) -> list[list[float]]:
    executor = LocalExecutor(slots)
    outs = await asyncio.gather(*(executor.execute(req, slot, Sink()) for req, slot in zip(two_runs(tmp_path), slots)))
    assert all(o.status == RunStatus.DONE for o in outs), [o.error for o in outs]
    # [set-up start, go, end] of each, in the order they got their turn
    return sorted((json.loads((tmp_path / f"run{i}" / "out" / "times").read_text()) for i in (1, 2)),
                  key=lambda times: times[1])


async def test_slots_of_one_gpu_take_turns_at_the_timed_part_only(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    slots = detect_slots(device="gpu", per_gpu=2)
    assert [s.name for s in slots] == ["gpu0", "gpu0.1"] and {s.turn for s in slots} == {"gpu0"}
    first, second = await run_both(tmp_path, slots)
    assert abs(first[0] - second[0]) < 1.0  # both set up at once
    assert second[1] >= first[2]  # the second's budget starts when the first's run ends


async def test_slots_with_their_own_turns_train_at_once(mode, tmp_path):
    first, second = await run_both(tmp_path, [Slot("cpu0", "cpu"), Slot("cpu1", "cpu")])
    assert second[1] < first[2]


async def test_an_ungated_run_waits_for_its_turn_before_it_starts(mode, tmp_path):
    files = make_task(tmp_path, """\
        record("times", json.dumps([time.time()]))
        time.sleep(1.0)
    """, TIMED_EVALUATOR)
    slots = [Slot("gpu0", "gpu", turn="gpu0"), Slot("gpu0.1", "gpu", turn="gpu0")]
    executor = LocalExecutor(slots)
    reqs = [request(tmp_path, files, run_id=i) for i in (1, 2)]
    outs = await asyncio.gather(*(executor.execute(r, s, Sink()) for r, s in zip(reqs, slots)))
    assert all(o.status == RunStatus.DONE for o in outs)
    starts = sorted(json.loads((tmp_path / f"run{i}" / "out" / "times").read_text())[0] for i in (1, 2))
    assert starts[1] - starts[0] >= 1.0


async def test_a_run_cancelled_while_it_waits_for_its_turn_ends_at_once(mode, tmp_path):
    first, second = two_runs(tmp_path)
    files = Path(first.files_dir)
    (files / "train.py").write_text((files / "train.py").read_text().replace("time.sleep(1.5)", "time.sleep(20)"))
    slots = [Slot("gpu0", "gpu", turn="gpu0"), Slot("gpu0.1", "gpu", turn="gpu0")]
    executor = LocalExecutor(slots)
    holder = asyncio.ensure_future(executor.execute(first, slots[0], Sink()))
    await asyncio.sleep(2.5)  # it has set up and holds the turn, for 20 s
    waiter = asyncio.ensure_future(executor.execute(second, slots[1], Sink()))
    await asyncio.sleep(2.5)  # set up too: waiting for the turn
    t0 = asyncio.get_running_loop().time()
    assert await executor.cancel(second.run_id)
    out = await waiter
    assert out.status == RunStatus.CANCELLED and asyncio.get_running_loop().time() - t0 < 5
    assert "timed_at" not in out.extra
    await executor.cancel(first.run_id)
    await holder
