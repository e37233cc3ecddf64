"""A warm torch.compile cache for the training runs, made once per machine from the baseline.

Cold, torch.compile of the baseline takes 25-30 s on an H100 (Inductor's code generation
and Triton's builds): half of gpu-quick's 60 s of training, and its jitter from run to run
became seed-to-seed noise in val_bpb. So `prepare.py --compile-size SIZE` compiles the
task's own baseline train.py once, outside any sandbox, into

    <data>/nanochat/public/compile/<torch>-<gpu>-<size>-v<vocab>/   inductor/, triton/, baseline.sha256

and every run copies that folder into its private /tmp before its clock starts (runner.py).
Runs only ever read the shared folder: what a candidate compiles goes into its own copy and
is gone with its sandbox, so no run can leave anything for another one (no channel between
a candidate's seeds). A candidate whose graph differs from the baseline's misses the cache
for what differs and pays for that compilation within its budget, as it should.

    python compile_cache.py --vocab V --size full [--data-dir DIR]   # warm, where CUDA is

Harness code: it never imports the engine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import data

BASELINE = Path(__file__).resolve().parent / "train.py"
STAMP = "baseline.sha256"


def folder(root: Path, vocab: int, size: str) -> Path:
    """This machine's cache folder for one model size (needs torch with CUDA)."""
    import torch

    key = f"torch{torch.__version__}-{torch.cuda.get_device_name()}-{size}-v{vocab}"
    return root / "public" / "compile" / re.sub(r"[^A-Za-z0-9.+-]+", "_", key)


def use(root: Path, vocab: int, size: str) -> bool:
    """Point this process's compile caches at a private copy of the warm cache, if there is one."""
    source = folder(root, vocab, size)
    if not (source / STAMP).is_file():
        return False
    copy = Path(tempfile.gettempdir()) / "compile-cache"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(copy / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(copy / "triton")
    return True


class WarmupContext:
    """The runner's Context on random tokens, for a few steps only: enough for torch.compile
    to build what the real run needs (runner.py's set-up, and warm() here).

    Its deadline is an hour away until the candidate has drawn STEPS batches, and past once
    it has: a clock deadline would end the loop before the first step wherever building
    the model outlasts it (CUDA's start-up takes seconds), and nothing would be compiled."""

    STEPS = 3

    def __init__(self, vocab: int, size: str, device: str = "cuda"):
        self.device, self.seed, self.size, self.vocab_size = device, 0, size, vocab
        self.drawn = 0
        self._far = time.time() + 3600.0

    @property
    def deadline(self) -> float:
        return self._far if self.drawn < self.STEPS else time.time() - 1.0

    def batches(self, batch_size: int, seq_len: int):
        import torch

        while True:
            chunk = torch.randint(0, self.vocab_size, (batch_size, seq_len + 1), device=self.device)
            self.drawn += 1
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def report(self, step: int, name: str, value: float) -> None:
        pass


def warm(root: Path, vocab: int, size: str, say=print) -> Path | None:
    """Compile the baseline once into the cache folder; None where there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    target = folder(root, vocab, size)
    stamp = hashlib.sha256(BASELINE.read_bytes()).hexdigest()
    if (target / STAMP).is_file() and (target / STAMP).read_text() == stamp:
        say(f"compile cache for {size} is up to date in {target}")
        return target
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(staging / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(staging / "triton")
    sys.path.insert(0, str(BASELINE.parent))
    import train  # the task's own baseline, never a candidate's

    t0 = time.perf_counter()
    train.train(WarmupContext(vocab, size))
    torch.cuda.synchronize()
    (staging / STAMP).write_text(stamp)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    say(f"compile cache for {size} warmed in {time.perf_counter() - t0:.0f} s: {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compile_cache.py", description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--size", default="full")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if warm(data.data_root(args.data_dir), args.vocab, args.size) is None:
        print("compile cache: no GPU here, nothing to warm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
