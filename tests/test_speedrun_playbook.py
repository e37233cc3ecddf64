"""speedrun's playbook: every idea applies to the baseline train.py, passes the static guards,
still builds a causal model and trains on CPU into weights that load into make_model().

The fake context, module loader and checks are nanochat's (tests/test_nanochat_playbook.py):
speedrun's train.py takes the same ctx. Each idea trains for 1.5 s (the deadline
stops the step loop), so the whole file stays within seconds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.edits import apply_edits
from engine.guards import check_change
from engine.playbook import load_playbook
from engine.taskfile import load_task
from tests.test_nanochat_playbook import VOCAB, FakeCtx, load_module

torch = pytest.importorskip("torch")

TASK_DIR = Path(__file__).resolve().parents[1] / "tasks" / "speedrun"
TASK = load_task(TASK_DIR)
PLAYBOOK = load_playbook(TASK)
BASELINE = {"train.py": (TASK_DIR / "train.py").read_text()}


def test_playbook_has_enough_distinct_ideas():
    ids = [idea.id for idea in PLAYBOOK.ideas]
    assert len(ids) >= 8
    assert len(set(ids)) == len(ids)
    assert "STEPS_SCALE" in {k.name for k in PLAYBOOK.knobs}  # the speedrun's own lever


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
        assert logits.shape == (B, T, VOCAB) and torch.isfinite(logits).all()
        t = T // 2  # tokens after t must not move the logits at <= t
        x2 = x.clone()
        x2[:, t + 1:] = torch.randint(0, VOCAB, (B, T - t - 1))
        torch.testing.assert_close(model(x2).float()[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=0)

    ctx = FakeCtx(seconds=1.5)
    trained = train.train(ctx)
    assert isinstance(trained, torch.nn.Module)
    train.make_model(VOCAB, "tiny").load_state_dict(trained.state_dict(), strict=True)
    losses = [v for _, name, v in ctx.reports if name == "train_loss"]
    assert losses and all(math.isfinite(v) for v in losses)


def test_the_ideas_stack():
    files = BASELINE
    for idea in PLAYBOOK.ideas:
        files = apply_edits(files, idea.edits, TASK.editable)
    assert check_change(BASELINE, files, TASK.forbidden) == []
