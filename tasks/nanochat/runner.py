"""Protected runner: trains the candidate's train.py inside the sandbox, saves its weights.

It hands train.train() a context with train-split batches only: the val and audit splits
are hidden from this sandbox. What the candidate prints is only log; its score comes from
evaluate.py, in another process.

Two parts, as FIELD-NOTES' timing rule has it (training time only; warm-up on dummy data
untimed):
  set-up (untimed, at most budget.setup): import the candidate and call train() once on
      random tokens for three steps (warmup.py), so torch.compile builds its kernels. The
      train split is hidden from the sandbox until then (budget.timed_only), so nothing
      done here can learn from it.
  timed (the budget, counted by the executor from its `go`): the executor hands over the
      train split; train() runs again, on it, until its deadline; the weights are saved.
"""

import gc
import json
import os
import socket
import tempfile
import time

# The sandbox's home is read-only: compiler caches go to its private /tmp.
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(), "triton"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
from warmup import WarmupContext  # noqa: E402

PARAMS = json.loads(os.environ.get("THREADLAB_PARAMS", "{}"))
VOCAB = int(PARAMS.get("vocab", 8192))
SIZE = PARAMS.get("size", "full")
TRAIN_S = float(PARAMS.get("train_s", 300))
SEED = int(os.environ.get("THREADLAB_SEED", "0"))
OUT = os.environ.get("THREADLAB_OUT", ".")


class Context:
    """What train(ctx) may use: the device, its seed, batches, a deadline and report()."""

    def __init__(self, tokens: np.ndarray, device: str, deadline: float, samples):
        self.device = device
        self.seed = SEED
        self.size = SIZE
        self.vocab_size = VOCAB
        self.deadline = deadline
        self._tokens = tokens
        self._samples = samples
        self.tokens_drawn = 0  # counted here, for throughput figures (benchmarks/nanochat_baseline.py)

    def batches(self, batch_size: int, seq_len: int):
        """Endless random windows of the train split: x (B, T) and y = x shifted by one."""
        rng = np.random.default_rng(self.seed)
        n = len(self._tokens) - seq_len - 1
        if n <= 0:
            raise ValueError(f"the train split has {len(self._tokens)} tokens, fewer than seq_len {seq_len}")
        offsets = np.arange(seq_len + 1)
        while True:
            starts = rng.integers(0, n, size=batch_size)
            self.tokens_drawn += batch_size * seq_len
            chunk = torch.from_numpy(self._tokens[starts[:, None] + offsets].astype(np.int64))
            if self.device.startswith("cuda"):
                chunk = chunk.pin_memory().to(self.device, non_blocking=True)
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def report(self, step: int, name: str, value: float) -> None:
        if self._samples is not None:
            self._samples.write(json.dumps({"step": int(step), "name": str(name), "value": float(value)}) + "\n")


def wait_for_go() -> dict[str, str]:
    """End the set-up: say `ready` and wait for the executor's `go` (engine/executor.py).

    Returns {hidden path: a path to read it through now}; {} where there is no gate (the
    budget ran from the start)."""
    fd = os.environ.get("THREADLAB_GATE_FD")
    if not fd:
        return {}
    gate = socket.socket(fileno=int(fd))
    gate.sendall(b"ready\n")
    message, fds = b"", []
    while not message.endswith(b"\n"):
        chunk, more, _, _ = socket.recv_fds(gate, 1 << 16, 64)
        if not chunk:
            raise RuntimeError("the executor closed the gate before it said go")
        message, fds = message + chunk, fds + more
    word, _deadline, handles = message.decode().rstrip("\n").split(" ", 2)
    if word != "go":
        raise RuntimeError(f"the executor said {word!r}, not go")
    return {path: f"/proc/self/fd/{fds[i]}" for path, i in json.loads(handles).items()}


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    fd = os.environ.get("THREADLAB_SAMPLES_FD")
    samples = os.fdopen(int(fd), "w", buffering=1) if fd else None
    # ---- set-up: untimed, blind to the data
    t0 = time.time()
    import train  # the candidate

    train.train(WarmupContext(VOCAB, SIZE, device))
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    setup_s = time.time() - t0
    handles = wait_for_go()

    # ---- timed: the budget runs
    start = time.time()
    tokens = data.load_tokens("train", VOCAB, handles=handles)
    ctx = Context(tokens, device, start + TRAIN_S, samples)
    model = train.train(ctx)
    if device == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - start
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"train() returned {type(model).__name__}, not a torch.nn.Module")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, os.path.join(OUT, "model.pt"))
    with open(os.path.join(OUT, "harness.json"), "w") as f:  # figures for people, never for the score
        # epochs: how often the run went over the train split (the data-repetition warning's figure)
        json.dump({"tokens": ctx.tokens_drawn, "train_tokens": len(tokens), "epochs": ctx.tokens_drawn / len(tokens),
                   "train_s": train_s, "setup_s": setup_s, "device": device,
                   "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                   "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None}, f)


if __name__ == "__main__":
    main()
