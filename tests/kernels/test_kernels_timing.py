"""The timer's launch-hiding spin and the guard's side-stream check, on the CPU.

The CUDA path of kernels/timing.Timer runs here against a scripted GPU: its spin is
"long enough" once it reaches a set number of cycles, which the `start` event's query()
reports as a real GPU would (not yet fired: the launches were queued behind the spin).
On a GPU, tests/kernels/test_kernels_hacks.py's side_stream hack and the bench run the
real thing.
"""

import math

import torch

from kernels import guard as guard_mod
from kernels import timing


class ScriptedGpu:
    def __init__(self, needed_cycles: float):
        self.needed = needed_cycles
        self.spins: list[int] = []

    def sleep(self, cycles: int) -> None:
        self.spins.append(cycles)

    def event(self, enable_timing: bool = True):
        gpu = self

        class Event:
            def record(self):
                self.spun = gpu.spins[-1] if gpu.spins else 0

            def query(self):  # fired already: the spin ended before the launch did
                return self.spun < gpu.needed

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return 0.25

        return Event()


def scripted_timer(gpu: ScriptedGpu) -> timing.Timer:
    timer = timing.Timer("cpu")
    timer.cuda = True  # the CUDA path, with the GPU's functions scripted
    timer._sync, timer._event, timer._sleep = (lambda: None), gpu.event, gpu.sleep
    return timer


def time_calls(timer: timing.Timer, n: int, **kwargs) -> dict:
    calls = []

    def fn(x):
        calls.append(1)
        return x + 1

    buffers = (torch.zeros(4),)
    out = timer.run(fn, buffers, lambda g: (torch.rand(4, generator=g),), list(range(n)), None, **kwargs)
    assert len(calls) == n
    return out


def test_the_spin_doubles_until_the_launch_is_hidden_then_stays():
    gpu = ScriptedGpu(needed_cycles=3.5 * timing.SPIN_START_CYCLES)
    timer = scripted_timer(gpu)
    out = time_calls(timer, 5)
    start = timing.SPIN_START_CYCLES
    assert gpu.spins == [start, 2 * start, 4 * start, 4 * start, 4 * start]
    assert out["hidden"] == [False, False, True, True, True]
    assert timer.spin_cycles == 4 * start
    assert len(out["main_ms"]) == len(out["total_ms"]) == len(out["host_ms"]) == 5
    time_calls(timer, 2)  # the next request (the timed loop after the warm-up) starts where it was
    assert gpu.spins[-2:] == [4 * start, 4 * start]


def test_a_launch_that_is_never_hidden_stops_the_spin_at_its_cap():
    gpu = ScriptedGpu(needed_cycles=math.inf)  # e.g. a call that waits on the GPU itself
    timer = scripted_timer(gpu)
    out = time_calls(timer, 40)
    assert max(gpu.spins) == timing.SPIN_MAX_CYCLES == timer.spin_cycles
    assert not any(out["hidden"])


def test_without_hiding_there_is_no_spin():
    gpu = ScriptedGpu(needed_cycles=1)  # no spin: `start` fires at once
    timer = scripted_timer(gpu)
    out = time_calls(timer, 3, hide_launch=False)
    assert gpu.spins == [] and timer.spin_cycles == timing.SPIN_START_CYCLES
    assert out["hidden"] == [False, False, False]


def test_the_cpu_path_times_on_the_host_and_hides_nothing():
    out = time_calls(timing.Timer("cpu"), 3)
    assert out["main_ms"] == out["host_ms"] and out["hidden"] == [False] * 3


def test_the_guard_flags_launches_and_torch_ops_made_off_the_default_stream():
    guard = guard_mod.Guard(None, ["torch.nn.functional.rms_norm"], [])
    current = [0]
    guard._stream_of, guard._default_stream = (lambda: current[0]), 0  # what install() binds on a GPU
    x = torch.ones(3)
    with guard.spy():
        torch.add(x, 1)
    guard.check_stream("a Triton kernel was launched")
    assert guard.findings["runtime.side_stream"] == []
    current[0] = 0x7F00  # another stream is current
    with guard.spy():
        torch.mul(x, 2)
    guard.check_stream("a Triton kernel was launched")
    notes = guard.findings["runtime.side_stream"]
    assert any(n.startswith("mul ran on a stream other than the default one") for n in notes)
    assert any(n.startswith("a Triton kernel was launched on a stream other") for n in notes)


def test_on_the_cpu_the_guard_has_no_stream_to_check():
    guard = guard_mod.Guard(None, [], [])
    guard.check_stream("a Triton kernel was launched")
    assert guard.findings["runtime.side_stream"] == [] and guard._stream_of is None
