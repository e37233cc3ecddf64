"""Loading and validating a task folder's task.toml.

A task is any folder with a task.toml. Every problem gets one TaskError naming the field
and what is allowed. Example:

    name = "quadratic"
    description = "Find the minimum of a noisy bowl."
    editable = ["solution.py"]            # the only files proposals may change
    private = ["data/val.json"]           # hidden from the candidate, read by the evaluator
    include = ["../shared/*.py"]          # harness files kept elsewhere: they join the task's
                                          # files (protected); a file of this folder wins
    default_profile = "smoke"

    [metric]
    name = "loss"
    direction = "minimize"                # or "maximize"
    unit = ""

    [run]
    command = ["{python}", "run.py"]      # the sandboxed candidate run
    [evaluate]
    command = ["{python}", "evaluate.py"] # the protected evaluator, its own process
    timeout = 60

    [budget]
    seconds = 5                           # killed at seconds + grace
    grace = 2
    setup = 0                             # > 0: an untimed set-up of at most this many seconds
                                          # before the budget starts (compilation on dummy
                                          # data); the run signals ready (engine/executor.py)
    timed_only = ["{data}/train"]         # hidden during the set-up, handed over at the start

    [seeds]
    explore = [0]
    validate = [1, 2, 3]
    confidence = 0.95
    noise_floor = 0.0

    [accept]                              # a constraint every accepted node must also meet:
    extra = "val_loss"                    # this key of the evaluator's extra, on the validation
    below = "{params.target}"             # seeds, has a mean below (or `above`) this number
    alpha = 0.01                          # (one-sided one-sample t-test, p < alpha)

    [profiles.smoke]                      # overrides any of budget/seeds/evaluate/metric + params
    params = { steps = 10 }
    metric = { name = "smoke_loss" }      # a profile that measures something else names it
"""

from __future__ import annotations

import glob
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import TaskError
from engine.models import Direction

TASK_FILE = "task.toml"
PLAYBOOK_FILE = "playbook.toml"

_TOP_KEYS = {
    "name", "description", "editable", "private", "notes", "default_profile",
    "gpu_profile", "metric", "run", "evaluate", "prepare", "budget", "seeds", "profiles", "guards",
    "include", "accept",
}
_PROFILE_KEYS = {"budget", "seeds", "evaluate", "params", "device", "description", "metric"}
_METRIC_KEYS = {"name", "direction", "unit"}
_ACCEPT_KEYS = {"extra", "below", "above", "alpha"}


@dataclass(frozen=True)
class Constraint:
    """[accept]: the mean of the evaluator's extra[key] over the validation seeds must be
    below (or above) `target`, by a one-sided one-sample t-test at level alpha."""

    key: str
    target: float
    below: bool  # False: above
    alpha: float


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path  # the task folder
    description: str
    editable: tuple[str, ...]
    private: tuple[str, ...]  # absolute paths
    metric_name: str
    direction: Direction
    unit: str
    run_command: tuple[str, ...]
    eval_command: tuple[str, ...]
    eval_timeout_s: float
    budget_s: float
    grace_s: float
    explore_seeds: tuple[int, ...]
    validate_seeds: tuple[int, ...]
    confidence: float
    noise_floor: float
    profile: str
    profiles: tuple[str, ...]
    default_profile: str
    gpu_profile: str | None
    device: str  # "cpu" | "gpu": what a Slot must offer
    params: dict[str, Any] = field(default_factory=dict)
    forbidden: tuple[str, ...] = ()  # extra names the static guard refuses in edits
    # extra key -> tolerance: a run whose evaluator extra[key] is further than this from the
    # baseline's mean raises an Alert (e.g. the val/audit gap of a training task)
    baseline_relative: dict[str, float] = field(default_factory=dict)
    # audits every evaluator result must report, passed or not: a result without them did not
    # come from the evaluator as written
    required_audits: tuple[str, ...] = ()
    prepare_command: tuple[str, ...] = ()  # run once before the session, outside the sandbox
    notes: str = ""
    # files from outside the folder that are part of the task (name in the task -> absolute
    # source path): a harness shared between tasks, protected like the task's own files
    include: dict[str, str] = field(default_factory=dict)
    accept: Constraint | None = None  # what an accepted node must also meet ([accept])
    setup_s: float = 0.0  # the untimed set-up's limit ([budget] setup); 0: none
    timed_paths: tuple[str, ...] = ()  # absolute paths hidden until the budget starts

    @property
    def data_dir(self) -> Path:
        return data_dir()

    @property
    def all_seeds(self) -> tuple[int, ...]:
        return self.explore_seeds + tuple(s for s in self.validate_seeds if s not in self.explore_seeds)

    def better(self, a: float, b: float) -> bool:
        """True when metric value a is strictly better than b."""
        return a < b if self.direction is Direction.MINIMIZE else a > b

    def improvement(self, new: float, old: float) -> float:
        """How much better new is than old, positive when better, in metric units."""
        return old - new if self.direction is Direction.MINIMIZE else new - old


def _err(where: Path, field_name: str, problem: str) -> TaskError:
    return TaskError(
        f"{where}: field `{field_name}` {problem}",
        hint=f"fix `{field_name}` in {where} (see `threadlab tasks` for working examples)",
    )


def _get(table: dict, key: str, kind: type | tuple, where: Path, prefix: str, default: Any = ...):
    name = f"{prefix}{key}"
    if key not in table:
        if default is ...:
            raise _err(where, name, "is required")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        want = " or ".join(k.__name__ for k in kinds)
        raise _err(where, name, f"must be {want}, got {type(value).__name__} {value!r}")
    return value


def _str_list(table: dict, key: str, where: Path, prefix: str = "", default: Any = ...) -> tuple[str, ...]:
    value = _get(table, key, list, where, prefix, default)
    if not all(isinstance(v, str) and v for v in value):
        raise _err(where, prefix + key, "must be a list of non-empty strings")
    return tuple(value)


def _int_list(table: dict, key: str, where: Path, prefix: str, default: Any = ...) -> tuple[int, ...]:
    value = _get(table, key, list, where, prefix, default)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _err(where, prefix + key, "must be a list of integers")
    return tuple(value)


def data_dir() -> Path:
    """Where tasks keep prepared data: $THREADLAB_DATA_DIR, else ~/.cache/threadlab."""
    return Path(os.environ.get("THREADLAB_DATA_DIR") or Path.home() / ".cache" / "threadlab").expanduser()


def _expand(text: str, params: dict[str, Any], where: Path, field_name: str) -> str:
    """Fill {python}, {data} and {params.NAME} in a command or path."""

    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "python":
            return sys.executable
        if key == "data":
            return str(data_dir())
        name = key.removeprefix("params.")
        if key.startswith("params.") and name in params:
            return str(params[name])
        raise _err(where, field_name, f"uses {{{key}}}; known: {{python}}, {{data}}, {{params.NAME}} of the profile")

    return re.sub(r"\{([a-z_.]+)\}", fill, text)


def _command(table: dict, section: str, where: Path, params: dict[str, Any]) -> tuple[str, ...]:
    cmd = _str_list(table, "command", where, f"{section}.")
    if not cmd:
        raise _err(where, f"{section}.command", "must not be empty")
    return tuple(_expand(c, params, where, f"{section}.command") for c in cmd)


def _check_keys(table: dict, allowed: set[str], where: Path, prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(where, prefix + unknown[0], f"is not known; allowed: {', '.join(sorted(allowed))}")


def load_task(folder: str | os.PathLike, profile: str | None = None) -> TaskSpec:
    """Read and validate `folder/task.toml`, with `profile`'s overrides applied."""
    path = Path(folder).expanduser().resolve()
    where = path / TASK_FILE
    if not where.is_file():
        raise TaskError(
            f"{path} is not a task: it has no {TASK_FILE}",
            hint="point at a folder with a task.toml, or list the built-in tasks with `threadlab tasks`",
        )
    try:
        doc = tomllib.loads(where.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(f"{where}: not valid TOML: {exc}", hint="fix the TOML syntax at that line") from None
    _check_keys(doc, _TOP_KEYS, where, "")

    editable = _str_list(doc, "editable", where)
    if not editable:
        raise _err(where, "editable", "must list at least one file")
    for f in editable:
        if f.startswith("/") or ".." in Path(f).parts:
            raise _err(where, "editable", f"must hold paths inside the task folder, got {f!r}")
        if not (path / f).is_file():
            raise _err(where, "editable", f"names {f!r}, which does not exist in {path}")
    editable = tuple(os.path.normpath(f) for f in editable)  # "./train.py" is "train.py"
    private_raw = _str_list(doc, "private", where, default=[])

    metric = _get(doc, "metric", dict, where, "")
    _check_keys(metric, _METRIC_KEYS, where, "metric.")

    run = _get(doc, "run", dict, where, "")
    evaluate = _get(doc, "evaluate", dict, where, "")
    prepare = _get(doc, "prepare", dict, where, "", {})
    budget = _get(doc, "budget", dict, where, "")
    seeds = _get(doc, "seeds", dict, where, "")
    guards = _get(doc, "guards", dict, where, "", {})
    profiles = _get(doc, "profiles", dict, where, "", {})
    for pname, ptable in profiles.items():
        if not isinstance(ptable, dict):
            raise _err(where, f"profiles.{pname}", "must be a table")
        _check_keys(ptable, _PROFILE_KEYS, where, f"profiles.{pname}.")

    default_profile = _get(doc, "default_profile", str, where, "", next(iter(profiles), "default"))
    gpu_profile = _get(doc, "gpu_profile", str, where, "", None)
    for key, value in (("default_profile", default_profile), ("gpu_profile", gpu_profile)):
        if value is not None and profiles and value not in profiles:
            raise _err(where, key, f"names profile {value!r}; defined: {', '.join(profiles)}")
    chosen = profile or default_profile
    if profiles and chosen not in profiles:
        raise TaskError(
            f"task {path.name!r} has no profile {chosen!r}",
            hint=f"use one of: {', '.join(profiles)}",
        )
    over = profiles.get(chosen, {})
    pw = f"profiles.{chosen}."
    budget_o, seeds_o, eval_o = over.get("budget", {}), over.get("seeds", {}), over.get("evaluate", {})
    metric_o = _get(over, "metric", dict, where, pw, {})

    def pick(base: dict, o: dict, key: str, kind: type, prefix: str, default: Any = ...):
        if key in o:
            return _get(o, key, kind, where, pw + prefix)
        return _get(base, key, kind, where, prefix, default)

    for table, keys, prefix in ((run, {"command"}, "run."), (evaluate, {"command", "timeout"}, "evaluate."),
                                (prepare, {"command"}, "prepare."), (budget, {"seconds", "grace", "setup", "timed_only"}, "budget."),
                                (seeds, {"explore", "validate", "confidence", "noise_floor"}, "seeds."),
                                (guards, {"forbidden", "baseline_relative", "required_audits"}, "guards."),
                                (budget_o, {"seconds", "grace", "setup"}, pw + "budget."),
                                (seeds_o, {"explore", "validate", "confidence", "noise_floor"}, pw + "seeds."),
                                (eval_o, {"timeout"}, pw + "evaluate."),
                                (metric_o, _METRIC_KEYS, pw + "metric.")):
        _check_keys(table, keys, where, prefix)
    # the metric: the profile's name, direction and unit where it gives them, else the task's
    metric_name = pick(metric, metric_o, "name", str, "metric.")
    if not metric_name.strip():
        raise _err(where, (pw if "name" in metric_o else "") + "metric.name", "must not be empty")
    direction_raw = pick(metric, metric_o, "direction", str, "metric.")
    try:
        direction = Direction(direction_raw)
    except ValueError:
        raise _err(where, (pw if "direction" in metric_o else "") + "metric.direction",
                   f"must be 'minimize' or 'maximize', got {direction_raw!r}") from None
    unit = pick(metric, metric_o, "unit", str, "metric.", "")
    budget_s = pick(budget, budget_o, "seconds", float, "budget.")
    grace_s = pick(budget, budget_o, "grace", float, "budget.", 5.0)
    if budget_s <= 0:
        raise _err(where, "budget.seconds", f"must be positive, got {budget_s}")
    if grace_s < 0:
        raise _err(where, "budget.grace", f"must not be negative, got {grace_s}")
    setup_s = pick(budget, budget_o, "setup", float, "budget.", 0.0)
    if setup_s < 0:
        raise _err(where, "budget.setup", f"must not be negative, got {setup_s}")
    timed_raw = _str_list(budget, "timed_only", where, "budget.", [])
    if timed_raw and not setup_s:
        raise _err(where, "budget.timed_only", "hides paths during the set-up, but there is none: "
                   "set budget.setup too, or drop timed_only")
    def seed_list(key: str) -> tuple[int, ...]:
        if key in seeds_o:
            return _int_list(seeds_o, key, where, pw + "seeds.")
        return _int_list(seeds, key, where, "seeds.")

    explore, validate = seed_list("explore"), seed_list("validate")
    if not explore:
        raise _err(where, "seeds.explore", "must list at least one seed")
    if len(set(validate)) < 2:
        raise _err(where, "seeds.validate", "must list at least two seeds (the t-test runs on them)")
    if len(set(explore)) < len(explore) or len(set(validate)) < len(validate) or set(explore) & set(validate):
        raise _err(where, "seeds", "must not repeat a seed: explore and validate seeds are all distinct")
    confidence = pick(seeds, seeds_o, "confidence", float, "seeds.", 0.95)
    if not 0.5 <= confidence < 1:
        raise _err(where, "seeds.confidence", f"must be in [0.5, 1), got {confidence}")
    params = dict(_get(over, "params", dict, where, pw, {}))
    private = tuple(
        str((path / _expand(p, params, where, "private")).expanduser().resolve()) for p in private_raw
    )
    timed_paths = tuple(
        str((path / _expand(p, params, where, "budget.timed_only")).expanduser().resolve()) for p in timed_raw
    )
    relative = _get(guards, "baseline_relative", dict, where, "guards.", {})
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in relative.values()):
        raise _err(where, "guards.baseline_relative", "must map result keys to positive tolerances")
    noise_floor = pick(seeds, seeds_o, "noise_floor", float, "seeds.", 0.0)
    if noise_floor < 0:
        raise _err(where, "seeds.noise_floor", f"must not be negative, got {noise_floor}")
    device = over.get("device", "cpu")
    if device not in ("cpu", "gpu"):
        raise _err(where, pw + "device", f"must be 'cpu' or 'gpu', got {device!r}")

    return TaskSpec(
        include=_include(doc, path, where),
        accept=_accept(doc, params, where),
        name=_get(doc, "name", str, where, "", path.name),
        path=path,
        description=_get(doc, "description", str, where, "", ""),
        editable=editable,
        private=private,
        metric_name=metric_name,
        direction=direction,
        unit=unit,
        run_command=_command(run, "run", where, params),
        eval_command=_command(evaluate, "evaluate", where, params),
        prepare_command=_command(prepare, "prepare", where, params) if prepare else (),
        baseline_relative={k: float(v) for k, v in relative.items()},
        eval_timeout_s=pick(evaluate, eval_o, "timeout", float, "evaluate.", 120.0),
        budget_s=budget_s,
        grace_s=grace_s,
        setup_s=setup_s,
        timed_paths=timed_paths,
        explore_seeds=explore,
        validate_seeds=validate,
        confidence=confidence,
        noise_floor=noise_floor,
        profile=chosen,
        profiles=tuple(profiles),
        default_profile=default_profile,
        gpu_profile=gpu_profile,
        device=device,
        params=params,
        forbidden=_str_list(guards, "forbidden", where, "guards.", []),
        required_audits=_str_list(guards, "required_audits", where, "guards.", []),
        notes=_read_notes(path, _get(doc, "notes", str, where, "", "")),
    )


def _include(doc: dict, path: Path, where: Path) -> dict[str, str]:
    """`include` patterns -> {name: absolute path}; a file of the task folder wins."""
    found: dict[str, str] = {}
    for pattern in _str_list(doc, "include", where, default=[]):
        matches = sorted(p for p in glob.glob(str(path / pattern)) if os.path.isfile(p))
        if not matches:
            raise _err(where, "include", f"pattern {pattern!r} matches no file (relative to {path})")
        for match in matches:
            name, source = os.path.basename(match), os.path.realpath(match)
            if (path / name).exists() or found.get(name) == source:
                continue
            if name in found:
                raise _err(where, "include", f"brings two files named {name!r}: {found[name]} and {source}")
            found[name] = source
    return found


def _accept(doc: dict, params: dict[str, Any], where: Path) -> Constraint | None:
    table = _get(doc, "accept", dict, where, "", None)
    if table is None:
        return None
    _check_keys(table, _ACCEPT_KEYS, where, "accept.")
    key = _get(table, "extra", str, where, "accept.")
    if not key.strip():
        raise _err(where, "accept.extra", "must name a key of the evaluator's extra")
    sides = [side for side in ("below", "above") if side in table]
    if len(sides) != 1:
        raise _err(where, "accept.below", "or `accept.above` must be given, exactly one of them")
    side = sides[0]
    raw = _get(table, side, (int, float, str), where, "accept.")
    text = _expand(raw, params, where, f"accept.{side}") if isinstance(raw, str) else raw
    try:
        target = float(text)
    except (TypeError, ValueError):
        target = math.nan
    if not math.isfinite(target):
        raise _err(where, f"accept.{side}", f"must be a finite number or \"{{params.NAME}}\" naming one, got {raw!r}")
    alpha = _get(table, "alpha", float, where, "accept.", 0.05)
    if not 0 < alpha <= 0.5:
        raise _err(where, "accept.alpha", f"must be in (0, 0.5], got {alpha}")
    return Constraint(key=key, target=target, below=side == "below", alpha=alpha)


def _read_notes(path: Path, name: str) -> str:
    return (path / name).read_text() if name and (path / name).is_file() else ""


def builtin_tasks_dir() -> Path:
    import tasks

    return Path(tasks.__file__).parent


def find_task(name_or_path: str) -> Path:
    """A task folder from a path, or the name of a built-in task."""
    p = Path(name_or_path).expanduser()
    if (p / TASK_FILE).is_file():
        return p.resolve()
    builtin = builtin_tasks_dir() / name_or_path
    if (builtin / TASK_FILE).is_file():
        return builtin
    raise TaskError(
        f"no task named {name_or_path!r}: not a folder with a {TASK_FILE}, nor a built-in task",
        hint="list the built-in tasks with `threadlab tasks`, or give the path of a folder holding a task.toml",
    )


def list_builtin_tasks() -> list[Path]:
    root = builtin_tasks_dir()
    return sorted(p.parent for p in root.glob(f"*/{TASK_FILE}"))

