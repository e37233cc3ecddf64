"""The offline `search` proposer: playbook ideas, knob tuning with Optuna TPE, merges.

Policy of `propose(ctx)`, in order:

1. Merge. The first node of `ctx.accepted_elsewhere` not yet merged into this head (no
   attempt with parent_id == head_id and origin {"kind": "merge", "with": node}) and not
   pending as that same merge is proposed first, as `Proposal(merge_with=node)`.
2. Ideas. Candidates are playbook ideas whose edits apply to the head files (one that
   does not is already in the lineage or conflicts with it: skipped, never an error) and
   that were never tried on this parent (no attempt, no pending proposal, nothing this
   proposer already handed out for this head). Each scores +2 per positive Lesson and -1
   per negative Lesson naming its id, plus a small seeded random tie-break; the best wins.
   With probability `idea_share` (seeded) an idea is proposed when one exists.
3. Knobs. Otherwise, or when no idea is left, one in-memory Optuna study (TPE, seeded,
   in the task's direction) suggests values for every knob whose line exists in the head
   files, through ask/tell. A suggestion equal to the head's values is dropped (told as
   failed) and asked again, a few times at most. The edits touch only changed knobs.
   If every ask repeated the head, an idea is proposed when one is left.
4. None when no idea is left and no knob can be tuned.

Learning: `observe(attempt)` tells the study a knob attempt's metric (a failed or flagged
node, or one without a finite metric, counts as a failed trial). An attempt whose trial
this process did not ask (engine restarted, or another thread's proposer) is added as a
finished trial instead, so history survives restarts; `warm_start(attempts)` does that for
past attempts, and `propose` absorbs the finished knob attempts it sees in ctx.attempts.
Attempts still open (queued, running, validating) wait until they finish.

The study is created on the first `propose` (its direction comes from ctx.task) unless a
`direction` was given; attempts observed before then are kept and replayed into it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from engine.edits import apply_edits
from engine.errors import EditError
from engine.models import Direction, Edit, NodeStatus, Proposal
from engine.playbook import Idea, Knob, Playbook
from engine.proposers.base import Attempt, ProposalContext

_MAX_ASKS = 5  # asks per proposal before giving up on a suggestion that differs from the head
_TIE_BREAK = 0.1  # below the smallest Lesson step (1), so it only orders equal scores
_OPEN = {NodeStatus.QUEUED.value, NodeStatus.RUNNING.value, NodeStatus.VALIDATING.value}
_BAD = {NodeStatus.FAILED.value, NodeStatus.FLAGGED.value}


class SearchProposer:
    name = "search"

    def __init__(self, playbook: Playbook, seed: int = 0, idea_share: float = 0.7,
                 direction: Direction | str | None = None):
        if not 0.0 <= idea_share <= 1.0:
            raise ValueError(f"idea_share must be in [0, 1], got {idea_share}")
        self.playbook = playbook
        self.seed = seed
        self.idea_share = idea_share
        self._rng = random.Random(seed)
        self._study: optuna.Study | None = None
        self._asked: dict[int, tuple[optuna.trial.Trial, dict[str, float | int]]] = {}
        self._absorbed: set[int] = set()  # node ids whose outcome the study already holds
        self._backlog: dict[int, Attempt] = {}  # observed before the study existed, by node id
        self._handed_out: set[tuple[int, str, Any]] = set()  # (head_id, kind, idea id / node id)
        if direction is not None:
            self._ensure_study(Direction(direction))

    @property
    def study(self) -> optuna.Study | None:
        """The knob study; None until the direction is known."""
        return self._study

    # -- proposing -----------------------------------------------------------------------

    async def propose(self, ctx: ProposalContext) -> Proposal | None:
        self._ensure_study(ctx.task.direction)
        self.warm_start(ctx.attempts)

        merge = self._merge(ctx)
        if merge is not None:
            return merge
        idea = self._best_idea(ctx)
        knobs = [k for k in self.playbook.knobs if k.current(ctx.head_files) is not None]
        if idea is not None and (not knobs or self._rng.random() < self.idea_share):
            return self._idea_proposal(ctx, idea)
        proposal = self._knob_proposal(ctx, knobs) if knobs else None
        if proposal is None and idea is not None:
            return self._idea_proposal(ctx, idea)
        return proposal

    def _merge(self, ctx: ProposalContext) -> Proposal | None:
        def is_merge(origin: dict[str, Any], node_id: int) -> bool:
            return origin.get("kind") == "merge" and origin.get("with") == node_id

        for node in ctx.accepted_elsewhere:
            done = any(a.parent_id == ctx.head_id and is_merge(a.origin, node.node_id) for a in ctx.attempts)
            pending = any(is_merge(o, node.node_id) and _for_head(o, ctx.head_id) for o in ctx.pending_origins)
            key = (ctx.head_id, "merge", node.node_id)
            if done or pending or key in self._handed_out:
                continue
            self._handed_out.add(key)
            where = f" on thread {node.thread_id}" if node.thread_id is not None else ""
            return Proposal(
                title=f"merge #{node.node_id}: {node.title}",
                hypothesis=(
                    f"combine node #{node.node_id} ({node.title!r}), accepted{where}, with this "
                    "thread's head: improvements found apart may add up"
                ),
                merge_with=node.node_id,
                origin={"kind": "merge", "with": node.node_id},
            )
        return None

    def _candidate_ideas(self, ctx: ProposalContext) -> list[Idea]:
        tried = {a.origin.get("idea") for a in ctx.attempts if a.parent_id == ctx.head_id}
        tried |= {o.get("idea") for o in ctx.pending_origins if _for_head(o, ctx.head_id)}
        out = []
        for idea in self.playbook.ideas:
            if idea.id in tried or (ctx.head_id, "idea", idea.id) in self._handed_out:
                continue
            try:
                apply_edits(ctx.head_files, idea.edits, ctx.task.editable)
            except EditError:
                continue  # already applied in this lineage, or conflicts with it
            out.append(idea)
        return out

    def _best_idea(self, ctx: ProposalContext) -> Idea | None:
        best: tuple[float, Idea] | None = None
        for idea in self._candidate_ideas(ctx):
            score = self._rng.random() * _TIE_BREAK
            for lesson in ctx.lessons:
                if lesson.idea == idea.id:
                    score += 2.0 if lesson.positive else -1.0
            if best is None or score > best[0]:
                best = (score, idea)
        return best[1] if best else None

    def _idea_proposal(self, ctx: ProposalContext, idea: Idea) -> Proposal:
        self._handed_out.add((ctx.head_id, "idea", idea.id))
        return Proposal(
            title=idea.title,
            hypothesis=idea.hypothesis,
            edits=idea.edits,
            origin={"kind": "idea", "idea": idea.id},
        )

    def _knob_proposal(self, ctx: ProposalContext, knobs: list[Knob]) -> Proposal | None:
        study = self._ensure_study(ctx.task.direction)
        current = {k.name: k.current_number(ctx.head_files) for k in knobs}
        space = {k.name: _distribution(k) for k in knobs}
        for _ in range(_MAX_ASKS):
            trial = study.ask(space)
            values = {k.name: k.snap(trial.params[k.name]) for k in knobs}
            changed = [k for k in knobs if not _same(values[k.name], current[k.name])]
            if changed:
                break
            study.tell(trial, state=TrialState.FAIL)  # the head's own values: nothing to learn
        else:
            return None

        self._asked[trial.number] = (trial, values)
        files = dict(ctx.head_files)
        edits: list[Edit] = []
        for knob in changed:
            # Build each edit on the files as the previous ones leave them: edits chain.
            edit = knob.edit(files, values[knob.name])
            files = apply_edits(files, [edit], ctx.task.editable)
            edits.append(edit)
        finished = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        shown = ", ".join(f"{k.name}={k.format(values[k.name])}" for k in changed)
        return Proposal(
            title=f"knobs: {shown}",
            hypothesis=f"TPE suggests these values from {finished} finished trials",
            edits=tuple(edits),
            origin={"kind": "knobs", "values": values, "trial": trial.number},
        )

    # -- learning ------------------------------------------------------------------------

    def observe(self, attempt: Attempt) -> None:
        """Tell the study how a knob attempt fared; other attempts are ignored."""
        if attempt.origin.get("kind") != "knobs" or attempt.status in _OPEN:
            return
        if attempt.node_id in self._absorbed:
            return
        if self._study is None:
            self._backlog[attempt.node_id] = attempt
            return
        self._absorbed.add(attempt.node_id)
        metric = attempt.metric
        if attempt.status in _BAD or metric is None or not math.isfinite(metric):
            metric = None  # a failed trial: nothing to learn about the values
        values = attempt.origin.get("values") or {}
        number = attempt.origin.get("trial")
        asked = self._asked.get(number) if isinstance(number, int) else None
        # The values must match too: after a restart, trial numbers start over.
        if asked is not None and _same_values(asked[1], values):
            del self._asked[asked[0].number]
            if metric is None:
                self._study.tell(asked[0], state=TrialState.FAIL)
            else:
                self._study.tell(asked[0], metric)
        elif metric is not None:
            self._add_trial(values, metric)

    def warm_start(self, attempts: Iterable[Attempt]) -> None:
        """Load past knob attempts into the study (the engine calls this at start)."""
        for attempt in attempts:
            self.observe(attempt)

    def _add_trial(self, values: dict[str, Any], value: float) -> None:
        params: dict[str, float | int] = {}
        dists: dict[str, BaseDistribution] = {}
        for name, raw in values.items():
            knob = self.playbook.knob(name)
            if knob is None or isinstance(raw, bool) or not isinstance(raw, (int, float)):
                continue  # a knob the playbook no longer has
            param = int(raw) if knob.type == "int" else float(raw)
            if knob.low <= param <= knob.high:  # create_trial refuses values outside the range
                params[name], dists[name] = param, _distribution(knob)
        if params and self._study is not None:
            self._study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))

    def _ensure_study(self, direction: Direction) -> optuna.Study:
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.create_study(
                direction=Direction(direction).value,
                sampler=optuna.samplers.TPESampler(seed=self.seed),
            )
            backlog, self._backlog = self._backlog, {}
            self.warm_start(backlog.values())
        return self._study


def _for_head(origin: dict[str, Any], head_id: int) -> bool:
    """Pending origins are the thread's own; one that names another parent is not ours."""
    return origin.get("parent", head_id) == head_id


def _distribution(knob: Knob) -> BaseDistribution:
    if knob.type == "int":
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log)
    return FloatDistribution(knob.low, knob.high, log=knob.log)


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return numbers and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _same_values(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)

