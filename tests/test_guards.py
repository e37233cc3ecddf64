"""Static guards: only constructs the change introduces are flagged, each by its name."""

import pytest

from engine.guards import check_change, scan

BASE = "import math\n\nLR = 0.1\n\n\ndef solve(x):\n    return x\n"


@pytest.mark.parametrize(
    "added, guard",
    [
        ("import subprocess\n", "static.process_spawn"),
        ("from socket import create_connection\n", "static.network"),
        ("import os\nos.system('true')\n", "static.process_spawn"),
        ("import sys\nsys.modules['torch'] = None\n", "static.module_tampering"),
        ("import time\ntime.perf_counter = lambda: 0.0\n", "static.timer_patch"),
        ("import time\nsetattr(time, 'time', lambda: 0.0)\n", "static.timer_patch"),
        ("DATA = open('data/val.bin').read()\n", "static.private_data"),
        ("import atexit\n", "static.result_tampering"),
        ("x = __import__('os')\n", "static.module_tampering"),
        ("import ctypes\n", "static.native_code"),
    ],
)
def test_each_hack_is_named(added, guard):
    findings = check_change({"solution.py": BASE}, {"solution.py": BASE + added})
    assert guard in {f.guard for f in findings}, findings
    hit = next(f for f in findings if f.guard == guard)
    assert hit.evidence["file"] == "solution.py" and hit.evidence["line"] > 0


def test_constructs_already_in_the_parent_are_not_the_candidates_doing():
    parent = BASE + "import subprocess\n"
    child = parent.replace("LR = 0.1", "LR = 0.2")
    assert check_change({"solution.py": parent}, {"solution.py": child}) == []


def test_a_harmless_change_passes():
    assert check_change({"solution.py": BASE}, {"solution.py": BASE.replace("0.1", "0.05")}) == []


def test_task_specific_forbidden_names():
    findings = check_change({"s.py": BASE}, {"s.py": BASE + "import torch.distributed\n"}, ["torch.distributed"])
    assert [f.guard for f in findings] == ["static.task_forbidden"]


def test_unparseable_and_non_python_files_are_left_to_the_run():
    assert scan("s.py", "def (:\n") == []
    assert scan("notes.md", "import subprocess") == []


def test_import_aliases_do_not_hide_a_construct():
    """The result-channel exploit a review found: an aliased os writing a raw fd."""
    hack = (BASE + "import os as _o\n"
            "_fd = _o.getenv('THREADLAB_' + 'RESULT' + '_FD')\n"
            "if _fd:\n    _o.write(int(_fd), b'{\"metric\": 0.5}')\n    _o._exit(0)\n")
    guards = {f.guard for f in check_change({"solution.py": BASE}, {"solution.py": hack})}
    assert {"static.environment", "static.result_tampering"} <= guards
    from_import = BASE + "from os import write as w\nw(3, b'x')\n"
    assert "static.result_tampering" in {f.guard for f in check_change({"s.py": BASE}, {"s.py": from_import})}
    patched = BASE + "import torch as T\nT.logsumexp = None\n"
    assert "static.library_patch" in {f.guard for f in check_change({"s.py": BASE}, {"s.py": patched})}
