"""The timing loop, run inside a worker by trusted code (the candidate's or the baseline's).

Per call: fresh input values written into the same buffers (new values, same addresses,
so a cache keyed on the pointer replays stale outputs and is caught by the recheck), the
L2 cache flushed, then

    torch.cuda.synchronize(); host0
    spin()                              # the GPU busy for a while: see below
    start.record(); out = fn(*inputs); end_main.record()
    hidden = not start.query()          # the spin outlasted fn's launches
    torch.cuda.synchronize()            # device-wide: work on any stream is finished
    end_all.record(); end_all.synchronize(); host1

The spin (torch.cuda._sleep) keeps the GPU busy while the host launches fn, so `start`
fires only once fn's kernels are queued behind it: the events time the GPU's work, not the
Python launch overhead (tens of microseconds for Triton's launcher or a torch.compile
wrapper: half of a 0.1 ms kernel here), for the candidate and the baseline alike, as a
kernel runs inside a real program whose host is ahead of its GPU. A call whose launch outlasted the spin (`hidden` false) doubles the spin
for the next calls; the warm-up calls set it. Work that fn puts on another stream could
run during the spin unseen: the static scan forbids streams, and the candidate worker's
guard flags any Triton launch or torch op made off the default stream
(runtime.side_stream).

`main` (start..end_main) is the kernel time on the calling stream; `total` (start..end_all)
also covers work on side streams, plus the synchronisation gap that the `null` function
measures. The evaluator takes `main`, unless `total - gap` is clearly longer (work left on
another stream: flagged, and timed in full). `host` (host1 - host0) must contain the
event interval; the evaluator's own clock around the whole loop checks `host`.
On the CPU (the interpreter) there are no events: all three are the host interval.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter  # bound here, before any candidate code runs

import torch

from kernels.problem import generator

L2_FLUSH_BYTES = 256 << 20  # >= 2x the H100's 50 MB L2
SPIN_START_CYCLES = 100_000  # ~50 us at an H100's clock; doubled while launches outlast it
SPIN_MAX_CYCLES = 20_000_000  # ~10 ms: a call that waits on the GPU itself never hides its launch


class Timer:
    def __init__(self, device: str):
        self.device = device
        self.cuda = device == "cuda"
        self.flush_buf = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if self.cuda else None
        self._sync = torch.cuda.synchronize if self.cuda else None
        self._event = torch.cuda.Event if self.cuda else None
        self._sleep = torch.cuda._sleep if self.cuda else None
        self.spin_cycles = SPIN_START_CYCLES

    def flush(self) -> None:
        if self.flush_buf is not None:
            self.flush_buf.zero_()

    def run(self, fn: Callable, buffers: tuple[torch.Tensor, ...], make: Callable[[torch.Generator], tuple],
            seeds: list[int], keep: list | None, hide_launch: bool = True) -> dict[str, list]:
        """Time fn once per seed; outputs go to `keep` when given (for the recheck).
        hide_launch=False leaves out the spin: the events then include the launch."""
        main, total, host, hidden = [], [], [], []
        for seed in seeds:
            fresh = make(generator(seed, self.device))
            for buf, new in zip(buffers, fresh):
                buf.copy_(new)
            del fresh
            self.flush()
            if self.cuda:
                start, end_main, end_all = (self._event(enable_timing=True) for _ in range(3))
                self._sync()
                h0 = perf_counter()
                if hide_launch:
                    self._sleep(self.spin_cycles)
                start.record()
                out = fn(*buffers)
                end_main.record()
                hidden.append(not start.query())
                if hide_launch and not hidden[-1]:
                    self.spin_cycles = min(2 * self.spin_cycles, SPIN_MAX_CYCLES)
                self._sync()
                end_all.record()
                end_all.synchronize()
                h1 = perf_counter()
                main.append(start.elapsed_time(end_main))
                total.append(start.elapsed_time(end_all))
            else:
                h0 = perf_counter()
                out = fn(*buffers)
                h1 = perf_counter()
                main.append((h1 - h0) * 1e3)
                total.append((h1 - h0) * 1e3)
                hidden.append(False)
            host.append((h1 - h0) * 1e3)
            if keep is not None:
                keep.append(out)
            del out
        return {"main_ms": main, "total_ms": total, "host_ms": host, "hidden": hidden}


def null(*_inputs):
    """Does nothing: its timings are the loop's own cost (the sync gap, the host overhead)."""
    return None
