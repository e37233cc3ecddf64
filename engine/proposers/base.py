"""What every Proposer receives and returns.

The engine builds a ProposalContext from state.db and the task repository, asks the
Thread's Proposer for a Proposal, and later tells it how the resulting Node fared.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import ThreadlabError
from engine.models import Proposal
from engine.taskfile import TaskSpec


@dataclass(frozen=True)
class Attempt:
    """A past Node as proposers see it."""

    node_id: int
    thread_id: int | None
    parent_id: int | None
    title: str
    status: str  # NodeStatus value
    metric: float | None  # mean over its finished runs, None when none finished
    origin: dict[str, Any]  # the Proposal.origin that produced it
    error: str = ""


@dataclass(frozen=True)
class LessonView:
    idea: str  # the idea id or a short description
    effect: float | None  # improvement in metric units, positive when better
    positive: bool
    confidence: float | None
    node_id: int | None


@dataclass(frozen=True)
class ProposalContext:
    task: TaskSpec
    thread_id: int
    head_id: int
    head_metric: float | None
    head_files: dict[str, str]  # the editable files at the head, by path
    lineage: tuple[int, ...]  # node ids from the root to the head, inclusive
    attempts: tuple[Attempt, ...]  # every node of the task, oldest first
    lessons: tuple[LessonView, ...]
    # Accepted nodes on other threads that are not ancestors of the head: merge candidates.
    accepted_elsewhere: tuple[Attempt, ...] = ()
    pending_origins: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # proposals still running
    thread_name: str = ""
    # Alerts raised on this task's nodes, newest first: (node id, guard, message).
    alerts: tuple[tuple[int, str, str], ...] = ()
    # Money the session's proposers have spent so far (USD), from state.db.
    spent_usd: float = 0.0
    # A past node in full as text (diff against its parent, runs, metrics, verdict, alerts,
    # log tail), for proposers that look things up; None where the engine gives no access.
    inspect_node: Callable[[int], Awaitable[str]] | None = None


class ProposerError(ThreadlabError):
    """A proposer could not make a proposal this time.

    `fatal`: retrying cannot fix it (a bad key, no credit, an unknown model, the spending
    cap): the engine pauses the Thread with this message as its note. Otherwise the engine
    records it and asks again after `retry_after_s`, pausing the Thread after a few failures
    in a row. `cost` holds what the failed attempt spent ({"cost_usd": ..., "usage": ...}),
    so money spent without a Node is still counted.
    """

    def __init__(self, message: str, hint: str | None = None, *, fatal: bool = False,
                 retry_after_s: float = 60.0, cost: dict[str, Any] | None = None, kind: str = "proposer"):
        super().__init__(message, hint)
        self.fatal = fatal
        self.retry_after_s = retry_after_s
        self.cost = dict(cost or {})
        self.kind = kind


class Proposer(Protocol):
    """A source of Proposals.

    A proposer whose `waits` attribute is true (watch) returns None to mean "nothing now,
    ask again later"; for the others None means it has no more ideas for this head.
    """

    name: str

    async def propose(self, ctx: ProposalContext) -> Proposal | None:
        """A new Proposal for ctx's head, or None when it has nothing to offer now."""

    def observe(self, attempt: Attempt) -> None:
        """Learn from a finished Node (accepted, rejected, failed or flagged)."""
