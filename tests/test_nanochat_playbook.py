"""nanochat's playbook: every idea applies to the baseline train.py, passes the static guards,
still builds a causal model and trains on CPU into weights that load into make_model()."""

from __future__ import annotations

import importlib.util
import itertools
import math
import time
from pathlib import Path

import pytest

from engine.edits import apply_edits
from engine.guards import check_change
from engine.playbook import load_playbook
from engine.taskfile import load_task

torch = pytest.importorskip("torch")

TASK_DIR = Path(__file__).resolve().parents[1] / "tasks" / "nanochat"
TASK = load_task(TASK_DIR)
PLAYBOOK = load_playbook(TASK)
BASELINE = {"train.py": (TASK_DIR / "train.py").read_text()}
VOCAB = 256
_counter = itertools.count()


class FakeCtx:
    """What runner.py hands train(): CPU, the tiny size and random batches."""

    def __init__(self, seconds: float):
        self.device = "cpu"
        self.seed = 0
        self.size = "tiny"
        self.vocab_size = VOCAB
        self.deadline = time.time() + seconds
        self.reports: list[tuple[int, str, float]] = []

    def batches(self, batch_size: int, seq_len: int):
        gen = torch.Generator().manual_seed(0)
        while True:
            chunk = torch.randint(0, VOCAB, (batch_size, seq_len + 1), generator=gen)
            # contiguous, as runner.py yields them (train.py calls y.view(-1))
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def report(self, step: int, name: str, value: float) -> None:
        self.reports.append((step, name, value))


def load_module(source: str, tmp_path: Path):
    """Import source as a fresh module under a unique name."""
    path = tmp_path / "train.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"nanochat_train_{next(_counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_playbook_has_enough_distinct_ideas():
    ids = [idea.id for idea in PLAYBOOK.ideas]
    assert len(ids) >= 12
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("knob", PLAYBOOK.knobs, ids=lambda k: k.name)
def test_knob_is_in_baseline(knob):
    value = knob.current_number(BASELINE)
    assert value is not None, f"no `{knob.name} = <number>` line in train.py"
    assert knob.low <= value <= knob.high


@pytest.mark.parametrize("idea", PLAYBOOK.ideas, ids=lambda i: i.id)
def test_idea_applies_and_trains(idea, tmp_path):
    after = apply_edits(BASELINE, idea.edits, TASK.editable)
    assert after["train.py"] != BASELINE["train.py"]
    assert check_change(BASELINE, after, TASK.forbidden) == []

    train = load_module(after["train.py"], tmp_path)
    torch.manual_seed(0)
    model = train.make_model(VOCAB, "tiny").eval()
    B, T = 2, 32
    x = torch.randint(0, VOCAB, (B, T))
    with torch.no_grad():
        logits = model(x).float()
        assert logits.shape == (B, T, VOCAB)
        assert torch.isfinite(logits).all()
        for t in (0, T // 2, T - 2):  # tokens after t must not move the logits at <= t
            x2 = x.clone()
            x2[:, t + 1:] = torch.randint(0, VOCAB, (B, T - t - 1))
            changed = model(x2).float()
            torch.testing.assert_close(changed[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=0)

    ctx = FakeCtx(seconds=1.5)
    trained = train.train(ctx)
    assert isinstance(trained, torch.nn.Module)
    fresh = train.make_model(VOCAB, "tiny")
    fresh.load_state_dict(trained.state_dict(), strict=True)
    losses = [v for _, name, v in ctx.reports if name == "train_loss"]
    assert losses and all(math.isfinite(v) for v in losses)
