"""A research session's settings: what `threadlab run` stores in state.db for the engine."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import ThreadlabError

PROPOSERS = ("search", "claude", "watch")


@dataclass(frozen=True)
class SessionConfig:
    task: str  # the task folder, resolved
    profile: str
    threads: int = 2
    proposers: tuple[tuple[str, int], ...] = (("search", 0),)  # (name, count); count 0 = the rest
    budget_s: float | None = None  # research time; None runs until stopped
    cpu_slots: int = 2
    patience: int = 8  # decided attempts without improvement before a thread retires
    seed: int = 0
    executor: str = "local"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionConfig:
        d = dict(d)
        d["proposers"] = tuple(tuple(p) for p in d.get("proposers", ()))
        return cls(**d)

    def proposer_for(self, index: int) -> str:
        """The proposer of the index-th thread (0-based) under the proposers spec."""
        named = [name for name, count in self.proposers for _ in range(count)]
        if index < len(named):
            return named[index]
        rest = [name for name, count in self.proposers if count == 0]
        return rest[0] if rest else named[index % len(named)]


def parse_proposers(spec: str, threads: int) -> tuple[tuple[str, int], ...]:
    """`search` or `claude:2,search:2` into ((name, count), ...)."""
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([a-z]+)\s*(?::\s*(\d+))?\s*", part)
        if not m:
            raise ThreadlabError(
                f"cannot read proposer spec {spec!r}", hint="write it as NAME or NAME:COUNT,NAME:COUNT, e.g. search:2"
            )
        name, count = m.group(1), int(m.group(2) or 0)
        if name not in PROPOSERS:
            raise ThreadlabError(f"unknown proposer {name!r}", hint=f"available: {', '.join(PROPOSERS)}")
        out.append((name, count))
    if len(out) == 1 and out[0][1] == 0:
        return ((out[0][0], 0),)
    if sum(c for _, c in out) > threads and threads > 0:
        raise ThreadlabError(
            f"proposer spec {spec!r} asks for more threads than --threads {threads}",
            hint="raise --threads or lower the counts",
        )
    return tuple(out)


def threads_for(proposers: tuple[tuple[str, int], ...], threads: int | None) -> int:
    """--threads, or when it is not given: the sum of the spec's counts (claude:2,search:2 -> 4),
    or 2 when a proposer takes "the rest"."""
    if threads is not None:
        return threads
    if proposers and all(count > 0 for _, count in proposers):
        return sum(count for _, count in proposers)
    return max(2, sum(count for _, count in proposers) + 1) if any(c for _, c in proposers) else 2


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `2h`, `1h30m` into seconds."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not m or not any(m.groups()):
        raise ThreadlabError(f"cannot read duration {text!r}", hint="write it like 60s, 15m, 2h or 1h30m")
    h, mnt, s = (float(g) if g else 0.0 for g in m.groups())
    total = h * 3600 + mnt * 60 + s
    if total <= 0:
        raise ThreadlabError(f"duration {text!r} must be positive", hint="write it like 60s, 15m or 2h")
    return total
