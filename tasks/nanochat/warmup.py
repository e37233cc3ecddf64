"""The context of the runner's untimed set-up call: random tokens, for a few steps only.

runner.py calls the candidate's train() with it before the budget starts, so that
torch.compile builds the node's own graph on dummy data (FIELD-NOTES: warm-up on dummy data
untimed); the timed call that follows, in the same process, finds it built. Harness code:
it never imports the engine.
"""

from __future__ import annotations

import time


class WarmupContext:
    """The runner's Context on random tokens until the candidate has drawn STEPS batches.

    Its deadline is an hour away until then and, from the moment the last of them is drawn,
    that moment: a clock deadline would end the loop before the first step wherever building
    the model outlasts it (CUDA's start-up takes seconds), and nothing would be compiled."""

    STEPS = 3

    def __init__(self, vocab: int, size: str, device: str = "cuda"):
        self.device, self.seed, self.size, self.vocab_size = device, 0, size, vocab
        self.drawn = 0
        self.deadline = time.time() + 3600.0

    def batches(self, batch_size: int, seq_len: int):
        import torch

        while True:
            chunk = torch.randint(0, self.vocab_size, (batch_size, seq_len + 1), device=self.device)
            self.drawn += 1
            if self.drawn == self.STEPS:
                self.deadline = time.time()
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def report(self, step: int, name: str, value: float) -> None:
        pass
