"""The offline `search` proposer: merges first, ideas by Lessons, knobs through TPE."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optuna.trial import TrialState

from engine.edits import apply_edits
from engine.models import Proposal
from engine.playbook import Playbook, load_playbook
from engine.proposers.base import Attempt, LessonView, ProposalContext
from engine.proposers.search import SearchProposer
from engine.taskfile import TaskSpec
from tests.test_playbook import PLAYBOOK, SOLUTION, make_task

HEAD = 10
IDEAS_ONLY = PLAYBOOK.split("[[knob]]")[0]
KNOBS_ONLY = "[[knob]]" + PLAYBOOK.split("[[knob]]", 1)[1]


def ctx_for(task: TaskSpec, files: dict[str, str] | None = None, **kw: Any) -> ProposalContext:
    return ProposalContext(
        task=task,
        thread_id=1,
        head_id=kw.pop("head_id", HEAD),
        head_metric=1.0,
        head_files=files or {"solution.py": SOLUTION, "extra.py": "A = 1\n"},
        lineage=(1, HEAD),
        attempts=tuple(kw.pop("attempts", ())),
        lessons=tuple(kw.pop("lessons", ())),
        **kw,
    )


def attempt(node_id: int, origin: dict[str, Any], parent_id: int = HEAD, status: str = "rejected",
            metric: float | None = 1.0, thread_id: int = 1) -> Attempt:
    return Attempt(node_id=node_id, thread_id=thread_id, parent_id=parent_id, title="t",
                   status=status, metric=metric, origin=origin)


def lesson(idea: str, positive: bool) -> LessonView:
    return LessonView(idea=idea, effect=0.1 if positive else -0.1, positive=positive, confidence=0.9, node_id=3)


@pytest.fixture
def ideas_task(tmp_path: Path) -> TaskSpec:
    return make_task(tmp_path / "ideas", playbook=IDEAS_ONLY)


@pytest.fixture
def knobs_task(tmp_path: Path) -> TaskSpec:
    return make_task(tmp_path / "knobs", playbook=KNOBS_ONLY)


async def _idea_sequence(task: TaskSpec, seed: int, lessons: tuple[LessonView, ...] = (),
                         files: dict[str, str] | None = None, fresh: bool = False) -> list[str]:
    """Idea ids in the order proposed on one parent, recording each as an attempt."""
    book = load_playbook(task)
    proposer = SearchProposer(book, seed=seed, idea_share=1.0)
    attempts: list[Attempt] = []
    order = []
    for node_id in range(100, 120):
        if fresh:  # an engine restart: only the context remembers what was tried
            proposer = SearchProposer(book, seed=seed, idea_share=1.0)
        p = await proposer.propose(ctx_for(task, files, attempts=attempts, lessons=lessons))
        if p is None:
            break
        assert p.origin["kind"] == "idea"
        order.append(p.origin["idea"])
        attempts.append(attempt(node_id, p.origin))
    return order


@pytest.mark.parametrize("fresh", [False, True])
async def test_never_proposes_the_same_idea_twice_on_one_parent(ideas_task: TaskSpec, fresh: bool) -> None:
    order = await _idea_sequence(ideas_task, seed=3, fresh=fresh)
    assert sorted(order) == ["clip", "momentum", "start"]  # each once, then None


async def test_an_idea_tried_on_another_parent_is_still_a_candidate(ideas_task: TaskSpec) -> None:
    book = load_playbook(ideas_task)
    tried_elsewhere = [attempt(50, {"kind": "idea", "idea": i.id}, parent_id=9) for i in book.ideas]
    p = await SearchProposer(book, idea_share=1.0).propose(ctx_for(ideas_task, attempts=tried_elsewhere))
    assert p is not None and p.origin["kind"] == "idea"


async def test_pending_ideas_are_not_proposed_again(ideas_task: TaskSpec) -> None:
    pending = ({"kind": "idea", "idea": "momentum"}, {"kind": "idea", "idea": "clip"},
               {"kind": "idea", "idea": "start", "parent": 9})  # pending on an old head: not ours
    p = await SearchProposer(load_playbook(ideas_task), idea_share=1.0).propose(
        ctx_for(ideas_task, pending_origins=pending))
    assert p is not None and p.origin == {"kind": "idea", "idea": "start"}


async def test_an_idea_already_applied_is_skipped(ideas_task: TaskSpec) -> None:
    book = load_playbook(ideas_task)
    momentum = book.idea("momentum")
    assert momentum is not None
    applied = apply_edits({"solution.py": SOLUTION}, momentum.edits, ["solution.py"])
    for seed in range(5):
        order = await _idea_sequence(ideas_task, seed=seed, files=applied | {"extra.py": "A = 1\n"})
        assert "momentum" not in order
        assert "clip" in order  # still applies on top of momentum


async def test_proposal_carries_the_idea(ideas_task: TaskSpec) -> None:
    book = load_playbook(ideas_task)
    p = await SearchProposer(book, idea_share=1.0).propose(
        ctx_for(ideas_task, lessons=[lesson("clip", True)]))
    clip = book.idea("clip")
    assert clip is not None
    assert p == Proposal(title=clip.title, hypothesis=clip.hypothesis, edits=clip.edits,
                         origin={"kind": "idea", "idea": "clip"})


async def test_positive_lesson_is_preferred(ideas_task: TaskSpec) -> None:
    for seed in range(10):
        order = await _idea_sequence(ideas_task, seed=seed, lessons=(lesson("start", True),))
        assert order[0] == "start"


async def test_negative_lesson_is_tried_last(ideas_task: TaskSpec) -> None:
    firsts = set()
    for seed in range(10):
        order = await _idea_sequence(ideas_task, seed=seed, lessons=(lesson("clip", False),))
        assert order[-1] == "clip" and len(order) == 3
        firsts.add(order[0])
    assert firsts == {"momentum", "start"}  # the tie-break really varies with the seed


async def test_merge_is_proposed_first_and_only_once(ideas_task: TaskSpec) -> None:
    book = load_playbook(ideas_task)
    other = Attempt(node_id=7, thread_id=2, parent_id=3, title="Clip the gradient", status="accepted",
                    metric=0.5, origin={"kind": "idea", "idea": "clip"})
    ctx = ctx_for(ideas_task, accepted_elsewhere=(other,))
    proposer = SearchProposer(book, idea_share=1.0)
    p = await proposer.propose(ctx)
    assert p is not None and p.merge_with == 7 and p.edits == ()
    assert p.origin == {"kind": "merge", "with": 7}
    assert p.title == "merge #7: Clip the gradient"
    again = await proposer.propose(ctx)
    assert again is not None and again.merge_with is None

    merged = attempt(20, {"kind": "merge", "with": 7})
    fresh = await SearchProposer(book, idea_share=1.0).propose(replace(ctx, attempts=(merged,)))
    assert fresh is not None and fresh.merge_with is None
    pending = await SearchProposer(book, idea_share=1.0).propose(
        replace(ctx, pending_origins=({"kind": "merge", "with": 7},)))
    assert pending is not None and pending.merge_with is None
    # merged into an older head only: the new head still lacks it
    old = attempt(20, {"kind": "merge", "with": 7}, parent_id=9)
    p = await SearchProposer(book, idea_share=1.0).propose(replace(ctx, attempts=(old,)))
    assert p is not None and p.merge_with == 7


async def test_knob_proposals_change_only_knobs_within_bounds(knobs_task: TaskSpec) -> None:
    book = load_playbook(knobs_task)
    proposer = SearchProposer(book, seed=1)
    ctx = ctx_for(knobs_task)
    lr, steps = book.knobs
    for _ in range(30):
        p = await proposer.propose(ctx)
        assert p is not None and p.origin["kind"] == "knobs" and p.edits
        new = apply_edits(ctx.head_files, p.edits, knobs_task.editable)
        assert new["extra.py"] == ctx.head_files["extra.py"]
        for old_line, new_line in zip(SOLUTION.splitlines(), new["solution.py"].splitlines(), strict=True):
            if old_line != new_line:
                assert new_line.split("=")[0].strip() in {"LR", "STEPS"}, new_line
        values = p.origin["values"]
        assert set(values) == {"LR", "STEPS"}
        assert lr.low <= values["LR"] <= lr.high and lr.low <= lr.current_number(new) <= lr.high
        assert steps.low <= values["STEPS"] <= steps.high
        assert steps.current_number(new) == values["STEPS"] and "." not in steps.current(new)
        assert math.isclose(lr.current_number(new), values["LR"])
        assert p.title.startswith("knobs: ") and isinstance(p.origin["trial"], int)
        assert "0 finished trials" in p.hypothesis


async def test_a_suggestion_equal_to_the_head_is_not_proposed(tmp_path: Path) -> None:
    book = '[[knob]]\nname = "STEPS"\nfile = "solution.py"\nlow = 99\nhigh = 100\ntype = "int"\n'
    task = make_task(tmp_path, playbook=book)
    proposer = SearchProposer(load_playbook(task), seed=0)
    seen = []
    for _ in range(10):
        p = await proposer.propose(ctx_for(task))  # the head holds STEPS = 100
        if p is not None:
            assert p.origin["values"] == {"STEPS": 99} and len(p.edits) == 1
            seen.append(p)
    assert seen
    assert proposer.study is not None
    assert any(t.state == TrialState.FAIL for t in proposer.study.trials)


async def test_nothing_left_gives_none(tmp_path: Path) -> None:
    task = make_task(tmp_path, playbook=KNOBS_ONLY)
    assert await SearchProposer(Playbook()).propose(ctx_for(task)) is None
    no_lines = {"solution.py": "def solve():\n    return 0\n"}
    assert await SearchProposer(load_playbook(task)).propose(ctx_for(task, no_lines)) is None


async def test_idea_share_chooses_between_ideas_and_knobs(tmp_path: Path) -> None:
    task = make_task(tmp_path)
    book = load_playbook(task)
    p = await SearchProposer(book, idea_share=0.0).propose(ctx_for(task))
    assert p is not None and p.origin["kind"] == "knobs"
    p = await SearchProposer(book, idea_share=1.0).propose(ctx_for(task))
    assert p is not None and p.origin["kind"] == "idea"
    kinds = []
    proposer = SearchProposer(book, seed=5, idea_share=0.7)
    for _ in range(20):
        p = await proposer.propose(ctx_for(task))
        assert p is not None
        kinds.append(p.origin["kind"])
    # the three ideas come once each (same parent), everything else is knobs
    assert kinds.count("idea") == 3 and kinds.count("knobs") == 17


def _history(n: int, small_is_best: bool, seed: int = 0) -> list[Attempt]:
    """Knob attempts with LR spread log-uniformly and a metric that rewards small LR."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-3, 0))
        metric = math.log10(lr) + 3 if small_is_best else -math.log10(lr)
        out.append(attempt(200 + i, {"kind": "knobs", "values": {"LR": lr, "STEPS": 100}, "trial": i},
                           parent_id=5, metric=metric))
    return out


async def _next_lrs(proposer: SearchProposer, task: TaskSpec, n: int = 20) -> list[float]:
    lrs = []
    for _ in range(n):
        p = await proposer.propose(ctx_for(task))
        assert p is not None
        lrs.append(p.origin["values"]["LR"])
    return lrs


LOG_UNIFORM_MEAN = (1.0 - 0.001) / math.log(1000)  # mean of LR ~ log-uniform on [0.001, 1]: 0.145
LOG_UNIFORM_MEDIAN = 10 ** -1.5  # 0.032


async def test_warm_start_steers_tpe(knobs_task: TaskSpec) -> None:
    book = load_playbook(knobs_task)
    small = SearchProposer(book, seed=0, direction="minimize")
    small.warm_start(_history(40, small_is_best=True))
    large = SearchProposer(book, seed=0, direction="minimize")
    large.warm_start(_history(40, small_is_best=False))
    small_mean = float(np.mean(await _next_lrs(small, knobs_task)))
    large_mean = float(np.mean(await _next_lrs(large, knobs_task)))
    assert small_mean < LOG_UNIFORM_MEAN / 2
    assert large_mean > LOG_UNIFORM_MEAN
    assert small_mean * 5 < large_mean


async def test_observe_tells_the_asked_trials_and_steers_tpe(knobs_task: TaskSpec) -> None:
    proposer = SearchProposer(load_playbook(knobs_task), seed=2)
    for node_id in range(300, 330):
        p = await proposer.propose(ctx_for(knobs_task))
        assert p is not None
        lr = p.origin["values"]["LR"]
        proposer.observe(attempt(node_id, p.origin, metric=math.log10(lr) + 3))
    study = proposer.study
    assert study is not None
    assert len(study.trials) == 30 and all(t.state == TrialState.COMPLETE for t in study.trials)
    proposer.observe(attempt(300, {"kind": "knobs", "values": {"LR": 0.5, "STEPS": 100}, "trial": 0}))
    assert len(study.trials) == 30  # a node is learned from once
    lrs = await _next_lrs(proposer, knobs_task)
    # TPE still explores now and then, so the mean carries outliers; the median shows the pull
    assert float(np.mean(lrs)) < LOG_UNIFORM_MEAN
    assert float(np.median(lrs)) < LOG_UNIFORM_MEDIAN / 3


async def test_observe_failed_and_flagged_as_failed_trials(knobs_task: TaskSpec) -> None:
    proposer = SearchProposer(load_playbook(knobs_task), seed=0)
    origins = [(await proposer.propose(ctx_for(knobs_task))).origin for _ in range(4)]  # type: ignore[union-attr]
    proposer.observe(attempt(1, origins[0], status="failed", metric=None))
    proposer.observe(attempt(2, origins[1], status="flagged", metric=0.01))  # a hacked score
    proposer.observe(attempt(3, origins[2], status="rejected", metric=float("nan")))
    proposer.observe(attempt(4, origins[3], status="running", metric=None))  # not finished yet
    states = [t.state for t in proposer.study.trials]  # type: ignore[union-attr]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]
    proposer.observe(attempt(4, origins[3], status="accepted", metric=0.7))
    assert proposer.study.trials[3].state == TrialState.COMPLETE  # type: ignore[union-attr]
    assert proposer.study.trials[3].value == 0.7  # type: ignore[union-attr]


async def test_warm_start_restores_trial_history(knobs_task: TaskSpec) -> None:
    book = load_playbook(knobs_task)
    history = _history(12, small_is_best=True)
    skipped = [
        attempt(400, {"kind": "knobs", "values": {"LR": 0.1}, "trial": 0}, status="failed", metric=None),
        attempt(401, {"kind": "knobs", "values": {"LR": 0.1}, "trial": 1}, status="queued", metric=None),
        attempt(402, {"kind": "idea", "idea": "clip"}),
        attempt(403, {"kind": "knobs", "values": {"GONE": 3.0}, "trial": 2}),  # knob no longer in the playbook
    ]
    proposer = SearchProposer(book, seed=0)
    proposer.warm_start(history + skipped)  # before any propose: kept until the study exists
    assert proposer.study is None
    p = await proposer.propose(ctx_for(knobs_task))
    study = proposer.study
    assert study is not None and study.direction.name == "MINIMIZE"
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 12
    assert sorted(t.params["LR"] for t in finished) == sorted(a.origin["values"]["LR"] for a in history)
    assert p is not None and "12 finished trials" in p.hypothesis
    proposer.warm_start(history)  # idempotent
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 12


async def test_a_restarted_engines_trial_number_is_not_confused_with_a_new_one(knobs_task: TaskSpec) -> None:
    proposer = SearchProposer(load_playbook(knobs_task), seed=0, direction="minimize")
    proposer.warm_start(_history(3, small_is_best=True))
    p = await proposer.propose(ctx_for(knobs_task))
    assert p is not None and p.origin["trial"] == 3
    # an attempt proposed before the restart also carries trial 3, with other values
    stale = attempt(500, {"kind": "knobs", "values": {"LR": 0.0123, "STEPS": 11}, "trial": 3}, metric=0.2)
    proposer.observe(stale)
    study = proposer.study
    assert study is not None
    assert study.trials[3].state == TrialState.RUNNING  # ours is still waiting for its node
    assert study.trials[4].params == {"LR": 0.0123, "STEPS": 11} and study.trials[4].value == 0.2
    proposer.observe(attempt(501, p.origin, metric=0.9))
    assert study.trials[3].state == TrialState.COMPLETE and study.trials[3].value == 0.9


async def test_maximize_direction_follows_the_task(tmp_path: Path) -> None:
    task = make_task(tmp_path, playbook=KNOBS_ONLY, direction="maximize")
    proposer = SearchProposer(load_playbook(task), seed=0)
    proposer.warm_start(_history(40, small_is_best=False))  # metric = -log10(LR): large at small LR
    lrs = await _next_lrs(proposer, task)
    assert proposer.study is not None and proposer.study.direction.name == "MAXIMIZE"
    assert float(np.mean(lrs)) < LOG_UNIFORM_MEAN / 2
