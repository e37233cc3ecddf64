"""Rows of state.db as frozen dataclasses: the read API shared by the engine, CLI and TUI."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from typing import Any, Self


class _Record:
    _json_fields: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Self:
        keys = row.keys()
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in keys:
                continue
            v = row[f.name]
            if f.name in cls._json_fields:
                v = json.loads(v) if v else {}
            values[f.name] = v
        return cls(**values)


@dataclass(frozen=True)
class TaskRow(_Record):
    id: int
    name: str
    path: str
    profile: str
    metric_name: str
    direction: str
    unit: str
    repo_path: str
    root_node_id: int | None
    created_at: float


@dataclass(frozen=True)
class ThreadRow(_Record):
    id: int
    task_id: int
    name: str
    branch: str
    head_node_id: int | None
    proposer: str
    status: str
    pinned: int
    stale_attempts: int
    note: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class NodeRow(_Record):
    _json_fields = ("origin",)
    id: int
    task_id: int
    thread_id: int | None
    parent_id: int | None
    parent2_id: int | None
    commit_sha: str | None
    title: str
    hypothesis: str
    origin: dict[str, Any]
    status: str
    metric: float | None
    metric_std: float | None
    n_runs: int
    p_value: float | None
    error: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class RunRow(_Record):
    _json_fields = ("extra",)
    id: int
    node_id: int
    seed: int
    purpose: str
    status: str
    slot: str | None
    metric: float | None
    exit_code: int | None
    error: str
    run_dir: str | None
    attempt: int
    extra: dict[str, Any]
    queued_at: float
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True)
class VerdictRow(_Record):
    _json_fields = ("details",)
    id: int
    node_id: int
    accepted: int
    summary: str
    details: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class AlertRow(_Record):
    _json_fields = ("evidence",)
    id: int
    node_id: int | None
    run_id: int | None
    guard: str
    message: str
    evidence: dict[str, Any]
    acknowledged: int
    created_at: float


@dataclass(frozen=True)
class LessonRow(_Record):
    _json_fields = ("evidence",)
    id: int
    task_id: int
    node_id: int | None
    idea: str
    positive: int
    effect: float | None
    confidence: float | None
    evidence: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class CommandRow(_Record):
    _json_fields = ("args",)
    id: int
    kind: str
    args: dict[str, Any]
    source: str
    status: str
    result: str
    created_at: float
    done_at: float | None


@dataclass(frozen=True)
class EventRow(_Record):
    _json_fields = ("data",)
    id: int
    t: float
    level: str
    kind: str
    message: str
    data: dict[str, Any]


@dataclass(frozen=True)
class LockRow(_Record):
    pid: int
    host: str
    started_at: float
    heartbeat_at: float
