"""engine.sandbox: the bwrap command line, and what it really allows under bwrap."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from engine import sandbox


@pytest.fixture(autouse=True)
def _fresh_probe():
    sandbox.bwrap_path.cache_clear()
    yield
    sandbox.bwrap_path.cache_clear()


needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def test_no_sandbox_env_turns_it_off(monkeypatch, tmp_path):
    monkeypatch.setenv("THREADLAB_NO_SANDBOX", "1")
    assert sandbox.bwrap_path() is None
    assert sandbox.wrap(["echo", "hi"], cwd=str(tmp_path), writable=[str(tmp_path)]) == [
        "echo", "hi"]
    assert "WITHOUT a sandbox" in (sandbox.sandbox_warning() or "")


def test_missing_bwrap_gives_one_clear_warning(monkeypatch):
    monkeypatch.delenv("THREADLAB_NO_SANDBOX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert sandbox.bwrap_path() is None
    assert sandbox.sandbox_warning() == (
        "bubblewrap not found: runs execute WITHOUT a sandbox (network and files are "
        "reachable); install it with `apt-get install bubblewrap`")


@needs_bwrap
def test_probe_finds_bwrap(monkeypatch):
    monkeypatch.delenv("THREADLAB_NO_SANDBOX", raising=False)
    assert sandbox.bwrap_path() == shutil.which("bwrap")
    assert sandbox.sandbox_warning() is None


def test_wrap_argv(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: "/usr/bin/bwrap")
    run = tmp_path / "run"
    (run / "work").mkdir(parents=True)
    protected = run / "work" / "harness.py"
    protected.write_text("x")
    secret_dir = tmp_path / "val"
    secret_dir.mkdir()
    secret_file = tmp_path / "key.txt"
    secret_file.write_text("k")
    argv = sandbox.wrap(
        ["python", "train.py"], cwd=str(run / "work"), writable=[str(run)],
        readonly=[str(protected), str(run / "work" / "missing.py")],
        hidden=[str(secret_dir), str(secret_file), str(tmp_path / "nope")])

    assert argv[:3] == ["/usr/bin/bwrap", "--ro-bind", "/"]
    for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent",
                 "--new-session"):
        assert flag in argv
    joined = " ".join(argv)
    assert "--dev /dev" in joined and "--proc /proc" in joined and "--tmpfs /tmp" in joined
    assert f"--tmpfs {secret_dir} " in joined
    assert f"--ro-bind /dev/null {secret_file} " in joined
    assert "nope" not in joined and "missing.py" not in joined
    # The protected file is bound read-only after (inside) the writable run dir.
    assert joined.index(f"--bind {run} {run}") < joined.index(
        f"--ro-bind {protected} {protected}")
    assert argv[-5:] == ["--chdir", str(run / "work"), "--", "python", "train.py"]


def test_most_specific_path_wins(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: "/usr/bin/bwrap")
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "secret").mkdir()
    joined = " ".join(sandbox.wrap(
        ["true"], cwd=str(run), writable=[str(run / "eval")], readonly=[str(run)],
        hidden=[str(run / "secret")]))
    ro = joined.index(f"--ro-bind {run} {run}")
    assert ro < joined.index(f"--bind {run / 'eval'} {run / 'eval'}")
    assert ro < joined.index(f"--tmpfs {run / 'secret'}")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def real_bwrap(monkeypatch):
    monkeypatch.delenv("THREADLAB_NO_SANDBOX", raising=False)
    if sandbox.bwrap_path() is None:
        pytest.skip("bubblewrap cannot create a sandbox here")


def test_real_sandbox_enforces_the_rules(real_bwrap, tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "log.txt").write_text("log")
    sibling = tmp_path / "sibling.txt"  # under the host's /tmp, not bound
    sibling.write_text("x")
    # Outside /tmp, which the sandbox replaces anyway.
    fd, name = tempfile.mkstemp(prefix="threadlab-test-", dir="/var/tmp")
    os.close(fd)
    secret = Path(name)
    secret.write_text("s3cret")
    try:
        script = (
            "echo ok > eval/new.txt; "
            "(echo bad > log.txt) 2>/dev/null && echo WROTE-RO; "
            f"cat {secret}; echo '|'; "
            f"(echo bad > {secret}) 2>/dev/null && echo WROTE-ROOT; "
            f"test -e {sibling} && echo SEES-HOST-TMP; true")
        done = _run(sandbox.wrap(["sh", "-c", script], cwd=str(run),
                                 writable=[str(run / "eval")], readonly=[str(run)],
                                 hidden=[str(secret)]))
        assert done.returncode == 0, done.stderr
        assert (run / "eval" / "new.txt").read_text() == "ok\n"
        assert "WROTE" not in done.stdout
        assert "s3cret" not in done.stdout
        assert "SEES-HOST-TMP" not in done.stdout  # /tmp is the sandbox's own
        assert secret.read_text() == "s3cret"
        assert (run / "log.txt").read_text() == "log"
    finally:
        secret.unlink()
