"""Static checks on a candidate's source, each reported under its own name.

  static.library_op      the problem's library op named (F.rms_norm, x.softmax, a @ b...)
  static.threads         threading, _thread, concurrent, multiprocessing, asyncio
  static.file_access     open(), io, pathlib, shutil, tempfile, os, glob, mmap, pickle, torch.load/save
  static.network         socket, ssl, http, urllib, requests, httpx
  static.process         subprocess, pty, os.system/fork/exec/spawn
  static.patching        assigning attributes of imported modules or classes (torch, time...)
  static.result_channel  atexit, THREADLAB_* names, raw fd writes
  static.introspection   ctypes, importlib, inspect, gc, sys._getframe, sys.modules, torch._C,
                         eval/exec/__import__/globals
  static.side_stream     CUDA streams (work there escapes a timer that watches one stream)

Names resolve through imports (`import torch.nn.functional as F`, `from os import write`).
Attributes of `tl`/`triton.language` never count as library ops (tl.max is a kernel op).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from kernels.checks import Finding

CHECKS = ("static.library_op", "static.threads", "static.file_access", "static.network", "static.process",
          "static.patching", "static.result_channel", "static.introspection", "static.side_stream")

_MODULES = {
    "threading": "static.threads", "_thread": "static.threads", "concurrent": "static.threads",
    "multiprocessing": "static.threads", "asyncio": "static.threads", "torch.multiprocessing": "static.threads",
    "io": "static.file_access", "pathlib": "static.file_access", "shutil": "static.file_access",
    "tempfile": "static.file_access", "os": "static.file_access", "glob": "static.file_access",
    "mmap": "static.file_access", "pickle": "static.file_access", "shelve": "static.file_access",
    "socket": "static.network", "ssl": "static.network", "http": "static.network", "urllib": "static.network",
    "requests": "static.network", "httpx": "static.network", "subprocess": "static.process", "pty": "static.process",
    "atexit": "static.result_channel", "signal": "static.result_channel",
    "ctypes": "static.introspection", "cffi": "static.introspection", "importlib": "static.introspection",
    "inspect": "static.introspection", "gc": "static.introspection", "builtins": "static.introspection",
    "sys": "static.introspection", "torch._C": "static.introspection", "torch.overrides": "static.introspection",
    "torch.utils.cpp_extension": "static.introspection",
}
_ATTRS = {
    "os.system": "static.process", "os.fork": "static.process", "os.popen": "static.process",
    "os.execv": "static.process", "os.execve": "static.process", "os.posix_spawn": "static.process",
    "os.write": "static.result_channel", "os.fdopen": "static.result_channel", "os.dup2": "static.result_channel",
    "os.environ": "static.result_channel", "os.getenv": "static.result_channel",
    "torch.load": "static.file_access", "torch.save": "static.file_access", "numpy.load": "static.file_access",
    "numpy.save": "static.file_access", "numpy.fromfile": "static.file_access",
    "torch.cuda.Stream": "static.side_stream", "torch.cuda.stream": "static.side_stream",
    "torch.cuda.set_stream": "static.side_stream", "torch.cuda.ExternalStream": "static.side_stream",
    "torch.Stream": "static.side_stream", "torch.cuda.graphs": "static.side_stream",
    "torch._C": "static.introspection", "torch.overrides": "static.introspection",
}
_NAMES = {"open": "static.file_access", "eval": "static.introspection", "exec": "static.introspection",
          "compile": "static.introspection", "__import__": "static.introspection",
          "globals": "static.introspection", "vars": "static.introspection", "breakpoint": "static.introspection"}
_KERNEL_LANG = ("tl", "triton.language", "triton")
_MATMUL_OPS = ("torch.matmul", "torch.Tensor.matmul")


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def scan(source: str, library_ops: Iterable[str] = (), path: str = "solution.py") -> list[Finding]:
    """Every finding in the candidate's source; a file that does not parse has none (the
    worker then reports the SyntaxError as an import failure)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    ops = {op.rsplit(".", 1)[-1] for op in library_ops}
    lines = source.splitlines()
    found: list[Finding] = []

    def add(check: str, node: ast.AST, what: str) -> None:
        line = getattr(node, "lineno", 0)
        code = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        found.append(Finding(check, f"{path}:{line}: {what}", {"line": line, "code": code}))

    def resolve(dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        real = aliases.get(head, head)
        return f"{real}.{rest}" if rest else real

    def module_check(name: str, node: ast.AST) -> None:
        for mod, check in _MODULES.items():
            if name == mod or name.startswith(mod + "."):
                add(check, node, f"imports {name}")
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                module_check(a.name, node)
        elif isinstance(node, ast.ImportFrom):
            module_check(node.module or "", node)
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if a.name in ops and not full.startswith(_KERNEL_LANG):
                    add("static.library_op", node, f"imports the library op {full}")
                for attr, check in _ATTRS.items():
                    if full == attr:
                        add(check, node, f"imports {full}")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            real = resolve(dotted) if dotted else None
            if real:
                for attr, check in _ATTRS.items():
                    if real == attr or real.startswith(attr + "."):
                        add(check, node, f"uses {real}")
            base = resolve(_dotted(node.value) or "") if _dotted(node.value) else ""
            if node.attr in ops and not base.startswith(_KERNEL_LANG) and isinstance(node.ctx, ast.Load):
                add("static.library_op", node, f"uses the library op .{node.attr}")
        elif isinstance(node, ast.Name):
            if node.id in _NAMES and isinstance(node.ctx, ast.Load):
                add(_NAMES[node.id], node, f"uses {node.id}")
            real = aliases.get(node.id, "")
            if real and real != node.id and real.rsplit(".", 1)[-1] in ops and not real.startswith(_KERNEL_LANG):
                add("static.library_op", node, f"uses the library op {real} (as {node.id})")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult) and set(_MATMUL_OPS) & set(library_ops):
            add("static.library_op", node, "uses the @ operator (a library matmul)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "THREADLAB" in node.value:
            add("static.result_channel", node, f"names {node.value[:60]!r}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                dotted = _dotted(target) if isinstance(target, ast.Attribute) else None
                if dotted and dotted.split(".")[0] in aliases:
                    add("static.patching", node, f"assigns {resolve(dotted)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            add("static.patching", node, "calls setattr")
    return found
