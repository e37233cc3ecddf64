"""What every Proposer receives and returns.

The engine builds a ProposalContext from state.db and the task repository, asks the
Thread's Proposer for a Proposal, and later tells it how the resulting Node fared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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


class Proposer(Protocol):
    name: str

    async def propose(self, ctx: ProposalContext) -> Proposal | None:
        """A new Proposal for ctx's head, or None when it has nothing to offer now."""

    def observe(self, attempt: Attempt) -> None:
        """Learn from a finished Node (accepted, rejected, failed or flagged)."""
