"""Static guards: read a Node's diff and refuse constructs that hack the reward.

Only what the change introduces counts: a construct already in the parent (the harness
author put it there) is not the candidate's doing. Each finding names its guard, so the
Alert says which rule caught it and where.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Modules a candidate has no business importing: processes, network, native calls.
FORBIDDEN_MODULES = {
    "subprocess": "process_spawn",
    "multiprocessing.popen_fork": "process_spawn",
    "pty": "process_spawn",
    "socket": "network",
    "ssl": "network",
    "http": "network",
    "urllib": "network",
    "requests": "network",
    "httpx": "network",
    "aiohttp": "network",
    "ftplib": "network",
    "ctypes": "native_code",
    "cffi": "native_code",
    "importlib": "module_tampering",
    "builtins": "module_tampering",
    "atexit": "result_tampering",
    "signal": "budget_evasion",
    "inspect": "harness_introspection",
    "gc": "harness_introspection",
    "__main__": "harness_introspection",
}

# Dotted calls or attribute uses that are forbidden wherever they appear.
FORBIDDEN_ATTRS = {
    "os.system": "process_spawn",
    "os.popen": "process_spawn",
    "os.fork": "process_spawn",
    "os.forkpty": "process_spawn",
    "os.execv": "process_spawn",
    "os.execvp": "process_spawn",
    "os.execve": "process_spawn",
    "os.spawnv": "process_spawn",
    "os.posix_spawn": "process_spawn",
    "os.setsid": "budget_evasion",
    "os.kill": "budget_evasion",
    "os.killpg": "budget_evasion",
    "sys.modules": "module_tampering",
    "sys.meta_path": "module_tampering",
    "sys.path_hooks": "module_tampering",
    "sys._getframe": "harness_introspection",
    "sys.settrace": "harness_introspection",
    "sys.setprofile": "harness_introspection",
    "os.environ": "environment",
    "os.getenv": "environment",
    "os.putenv": "environment",
    # raw file descriptors: the evaluator's result channel is one
    "os.write": "result_tampering",
    "os.read": "result_tampering",
    "os.open": "result_tampering",
    "os.fdopen": "result_tampering",
    "os.dup": "result_tampering",
    "os.dup2": "result_tampering",
    "os.close": "result_tampering",
    "os._exit": "result_tampering",
}

FORBIDDEN_NAMES = {
    "__import__": "module_tampering", "__builtins__": "module_tampering", "exec": "dynamic_code",
    "eval": "dynamic_code", "globals": "harness_introspection", "vars": "harness_introspection",
}

# Assigning to attributes of these patches the clock (timer_patch) or the library
# functions the harness computes with (library_patch).
TIMER_MODULES = {"time", "torch.cuda", "torch.cuda.Event", "triton.testing"}
LIBRARY_MODULES = {
    "torch", "torch.Tensor", "torch.nn", "torch.nn.functional", "F", "nn", "numpy", "np", "statistics", "math",
    "data", "json", "os", "sys",
}

# String constants that point at data the candidate must not read.
PRIVATE_DATA_WORDS = ("val.", "val_", "/val", "audit", "THREADLAB_RESULT_FD")


@dataclass(frozen=True)
class Finding:
    guard: str  # e.g. "static.process_spawn"
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        # A construct's identity across versions: line numbers shift, the code does not.
        return (self.evidence.get("file", ""), self.guard, self.evidence.get("code", ""))


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, source: str, extra_forbidden: Sequence[str], aliases: dict[str, str]):
        self.path = path
        self.lines = source.splitlines()
        self.extra = tuple(extra_forbidden)
        self.aliases = aliases  # local name -> what it was imported as (`import os as o`: o -> os)
        self.findings: list[Finding] = []

    def _resolve(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        real = self.aliases.get(head, head)
        return f"{real}.{rest}" if rest else real

    def _add(self, guard: str, node: ast.AST, message: str) -> None:
        line = getattr(node, "lineno", 0)
        code = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        self.findings.append(
            Finding(f"static.{guard}", f"{self.path}:{line}: {message}", {"file": self.path, "line": line, "code": code})
        )

    def _module(self, name: str, node: ast.AST) -> None:
        for mod, guard in FORBIDDEN_MODULES.items():
            if name == mod or name.startswith(mod + "."):
                self._add(guard, node, f"imports {name}")
        for word in self.extra:
            if name == word or name.startswith(word + "."):
                self._add("task_forbidden", node, f"imports {name}, which this task forbids")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        self._module(base, node)
        for alias in node.names:
            self._module(f"{base}.{alias.name}", node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted:
            dotted = self._resolve(dotted)
            for attr, guard in FORBIDDEN_ATTRS.items():
                if dotted == attr or dotted.startswith(attr + "."):
                    self._add(guard, node, f"uses {dotted}")
            for word in self.extra:
                if dotted == word or dotted.startswith(word + "."):
                    self._add("task_forbidden", node, f"uses {dotted}, which this task forbids")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        real = self.aliases.get(node.id)
        if real and real != node.id:  # `from os import write` makes `write` os.write
            for attr, guard in FORBIDDEN_ATTRS.items():
                if real == attr or real.startswith(attr + "."):
                    self._add(guard, node, f"uses {real} (as {node.id})")
        if node.id in FORBIDDEN_NAMES:
            self._add(FORBIDDEN_NAMES[node.id], node, f"uses {node.id}")
        if node.id in self.extra:
            self._add("task_forbidden", node, f"uses {node.id}, which this task forbids")

    def _targets(self, targets: Iterable[ast.AST], node: ast.AST) -> None:
        for target in targets:
            dotted = _dotted(target) if isinstance(target, ast.Attribute) else None
            dotted = self._resolve(dotted) if dotted else None
            owner = dotted.rsplit(".", 1)[0] if dotted else None
            if owner in TIMER_MODULES:
                self._add("timer_patch", node, f"assigns {dotted}")
            elif owner in LIBRARY_MODULES:
                self._add("library_patch", node, f"assigns {dotted}")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._targets(node.targets, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._targets([node.target], node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
            dotted = _dotted(node.args[0])
            dotted = self._resolve(dotted) if dotted else None
            if dotted in TIMER_MODULES:
                self._add("timer_patch", node, f"setattr on {dotted}")
            elif dotted in LIBRARY_MODULES:
                self._add("library_patch", node, f"setattr on {dotted}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and any(w in node.value for w in PRIVATE_DATA_WORDS):
            self._add("private_data", node, f"names private data {node.value[:60]!r}")


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Names bound by imports anywhere in the file: `import os as o`, `from os import write`."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    found[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                found[a.asname or a.name] = f"{node.module}.{a.name}"
    return found


def scan(path: str, source: str, extra_forbidden: Sequence[str] = ()) -> list[Finding]:
    """Every forbidden construct in one Python file (none if it does not parse)."""
    if not path.endswith(".py"):
        return []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []  # the run will fail with the real error; that is not a hack
    scanner = _Scanner(path, source, extra_forbidden, _aliases(tree))
    scanner.visit(tree)
    return scanner.findings


def check_change(
    before: dict[str, str], after: dict[str, str], extra_forbidden: Sequence[str] = ()
) -> list[Finding]:
    """Findings present in the changed files after the change and not before it."""
    findings = []
    for path, new in after.items():
        old = before.get(path)
        if old == new:
            continue
        known = {f.key for f in scan(path, old or "", extra_forbidden)}
        findings += [f for f in scan(path, new, extra_forbidden) if f.key not in known]
    return findings
