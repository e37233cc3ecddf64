"""Records that cross module borders: frozen dataclasses and status vocabularies.

The names follow DESIGN.md: Task, Thread, Node, Run, Sample, Verdict, Alert, Lesson,
Command, Slot, Proposal. The database stores the same names and the same status strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ThreadStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    PRUNED = "pruned"
    DONE = "done"  # retired after too many attempts without improvement, or session over


class NodeStatus(StrEnum):
    QUEUED = "queued"  # committed, waiting for its exploration run
    RUNNING = "running"  # exploration run in progress
    VALIDATING = "validating"  # beat its parent on the exploration seed; more seeds running
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FLAGGED = "flagged"  # a guard failed: never accepted, whatever its score
    FAILED = "failed"  # edits did not apply, merge conflicted, or its runs crashed
    BASELINE = "baseline"  # the task's seed code, run on every seed
    CANCELLED = "cancelled"  # its thread was pruned before it finished


# Nodes whose evaluation is still going on.
OPEN_NODE_STATUSES = (NodeStatus.QUEUED, NodeStatus.RUNNING, NodeStatus.VALIDATING)


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # the evaluator produced a metric
    FAILED = "failed"  # crashed, no metric, or evaluator error
    TIMEOUT = "timeout"  # killed by the executor at budget plus grace
    INTERRUPTED = "interrupted"  # the engine died or stopped while it ran; a new run was queued
    CANCELLED = "cancelled"  # pruned or superseded


class RunPurpose(StrEnum):
    EXPLORE = "explore"
    VALIDATE = "validate"
    BASELINE = "baseline"


class CommandKind(StrEnum):
    PRUNE = "prune"
    FORK = "fork"
    MERGE = "merge"
    PIN = "pin"
    UNPIN = "unpin"
    PAUSE = "pause"
    RESUME = "resume"
    ACKNOWLEDGE = "acknowledge"  # an Alert seen by a person
    STOP = "stop"


class Direction(StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


@dataclass(frozen=True)
class Edit:
    """One SEARCH/REPLACE block against one file."""

    file: str
    search: str
    replace: str


@dataclass(frozen=True)
class Proposal:
    """A change a Proposer suggests against a Thread's head Node.

    `merge_with` names a node to three-way merge into the head instead of edits.
    `origin` records where the idea came from (idea id, knob values) for Lessons.
    """

    title: str
    hypothesis: str
    edits: tuple[Edit, ...] = ()
    merge_with: int | None = None
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Slot:
    """A place a Run executes: a GPU, a CPU slot or a Ray worker."""

    name: str
    kind: str  # "gpu" | "cpu" | "ray"
    env: tuple[tuple[str, str], ...] = ()  # e.g. CUDA_VISIBLE_DEVICES
    # Slots with the same turn take turns at the timed part of their runs: two slots of one
    # GPU, so that one run's untimed set-up and evaluation overlap the other's training.
    # "" means the slot's own name (no sharing).
    turn: str = ""


@dataclass(frozen=True)
class AuditResult:
    """One check reported by a task's evaluator (harness-side audit guard)."""

    guard: str
    ok: bool
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOutcome:
    """What the executor learned from one Run: only the evaluator's result counts."""

    status: RunStatus
    metric: float | None
    exit_code: int | None
    error: str
    started_at: float
    ended_at: float
    audits: tuple[AuditResult, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRequest:
    """Everything an Executor needs to carry out one Run."""

    run_id: int
    node_id: int
    seed: int
    files_dir: str  # pristine snapshot of the node's files (read by the evaluator too)
    run_dir: str
    budget_s: float
    grace_s: float
    eval_timeout_s: float
    run_command: tuple[str, ...]
    eval_command: tuple[str, ...]
    protected: tuple[str, ...]  # paths relative to files_dir, read-only inside the run
    private_paths: tuple[str, ...]  # absolute paths hidden from the candidate, shown to the evaluator
    env: tuple[tuple[str, str], ...] = ()
    # absolute paths both phases may read (the task's prepared data): a sandbox's /tmp is
    # its own, so data kept there would otherwise be invisible
    readable: tuple[str, ...] = ()
    # the engine's own paths (database, other runs' files), hidden in both phases: another
    # run's checkpoint must not stand in for this one's
    sealed: tuple[str, ...] = ()
    # > 0: the run has an untimed set-up of at most this many seconds before its budget
    # starts (engine/executor.py: the ready/go handshake); 0: the budget starts at spawn
    setup_s: float = 0.0
    # absolute paths hidden during the set-up and handed over as open descriptors when the
    # budget starts (the training data: a set-up cannot train on it)
    timed_paths: tuple[str, ...] = ()
