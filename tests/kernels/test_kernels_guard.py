"""The guard's allowance for Triton's own work on a GPU launch, on real Triton code.

On a GPU the first launch of a kernel makes Triton build its C launcher: gcc, through
triton.runtime.build._build, with stdout to /dev/null, and cache writes. That is excused
(kernels/guard.py, LaunchPolicy); the same calls made by the candidate, or slipped into
the launch as a callable, are not. A CPU has no launch that compiles, so this test plays
the launch and the launcher's constructor with two functions of its own (`entries`,
`builders`) and runs Triton's real compile_module_from_src and _build under them, with
the real gcc. Audit hooks cannot be removed, so it all runs in a child process.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT

CANDIDATE = '''
import functools
import shutil
import subprocess

from triton.runtime import build
from triton.runtime.cache import FileCacheManager

GCC = shutil.which("gcc") or shutil.which("cc")


def _compile(name):
    try:
        build.compile_module_from_src(src=f"int {name}_payload(void) {{ return 1; }}\\n", name=name)
    except ImportError:  # no PyInit: it does not load, but it was built
        pass


def legit(launch, launcher_init):
    launch(launcher_init)  # a kernel launch; Triton builds the launcher


def direct(launch, launcher_init):
    _compile("direct")  # Triton's helper, called by the candidate


def hook_calls_subprocess(launch, launcher_init):
    launch(lambda: subprocess.run([GCC, "--version"], capture_output=True))


def partial_subprocess(launch, launcher_init):
    launch(functools.partial(subprocess.run, [GCC, "--version"], capture_output=True))


def partial_build(launch, launcher_init):
    try:
        launch(functools.partial(build.compile_module_from_src, src="int p(void) { return 2; }\\n", name="p"))
    except ImportError:
        pass


def partial_cache_write(launch, launcher_init):
    launch(functools.partial(FileCacheManager("poison").put, b"not a launcher", "__triton_launcher.so"))
'''

CHILD = '''
import importlib.util, itertools, json, os, sys
from kernels import guard
from triton.runtime import build

candidate, cache, tmp = sys.argv[1:4]
count = itertools.count()


def fake_launch(work):  # plays triton.runtime.jit.JITFunction.run
    return work()


def fake_launcher_init():  # plays CudaLauncher.__init__: a launcher of Triton's own making
    try:
        build.compile_module_from_src(src=f"int launcher_{next(count)}(void) {{ return 0; }}\\n", name="launcher")
    except ImportError:
        pass


build.platform_key()  # cached before the candidate, as the worker's warm-up does on a GPU
policy = guard.launch_policy(cuda=False, entries=[fake_launch], builders=[fake_launcher_init])
g = guard.Guard(candidate, (), [cache, tmp], policy=policy)
g.install([], [])
spec = importlib.util.spec_from_file_location("candidate", candidate)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
results = {}
for name in sys.argv[4:]:
    for notes in g.findings.values():
        notes.clear()
    g.excused.clear()
    getattr(module, name)(fake_launch, fake_launcher_init)
    results[name] = {"failed": {k: v for k, v in g.report().items() if v}, "excused": list(g.excused)}
print(json.dumps(results))
'''

CASES = ["legit", "direct", "hook_calls_subprocess", "partial_subprocess", "partial_build", "partial_cache_write"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("needs a C compiler")
    tmp = tmp_path_factory.mktemp("guard")
    (tmp / "candidate.py").write_text(textwrap.dedent(CANDIDATE))
    cache, scratch = tmp / "triton-cache", tmp / "tmp"
    cache.mkdir()
    scratch.mkdir()
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "TRITON_CACHE_DIR": str(cache), "TMPDIR": str(scratch),
           "PYTHONPATH": str(ROOT), "HOME": str(tmp)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "candidate.py"), str(cache), str(scratch), *CASES],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_launcher_build_under_a_launch_is_excused_and_recorded(results):
    legit = results["legit"]
    assert legit["failed"] == {}
    excused = " ".join(legit["excused"])
    assert "subprocess.Popen" in excused and "C launcher" in excused
    assert "/dev/null" in excused and "caches its artifacts" in excused


def test_the_same_helper_called_by_the_candidate_is_caught(results):
    failed = results["direct"]["failed"]
    assert "runtime.process" in failed and "gcc" in " ".join(failed["runtime.process"])
    assert "/dev/null" in " ".join(failed["runtime.file_access"])


@pytest.mark.parametrize("case", ["hook_calls_subprocess", "partial_subprocess"])
def test_a_process_started_by_a_callable_slipped_into_the_launch_is_caught(results, case):
    assert "runtime.process" in results[case]["failed"], results[case]


def test_a_triton_build_of_the_candidates_source_under_a_launch_is_caught(results):
    # compile_module_from_src under the launch, but not called by the launcher's constructor
    assert "runtime.process" in results["partial_build"]["failed"], results["partial_build"]


def test_a_cache_write_outside_the_compiler_is_caught_even_under_a_launch(results):
    failed = results["partial_cache_write"]["failed"]
    assert "__triton_launcher.so" in " ".join(failed.get("runtime.file_access", [])), failed
