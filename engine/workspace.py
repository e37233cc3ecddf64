"""One git repository per task: a Node is a commit, a Thread is a branch.

The repository is bare. Every write goes through plumbing (hash-object, a private
temporary index, commit-tree, update-ref) and never through a working tree or the shared
index, so several OS threads may commit to one repository at once. Callers in the
asyncio engine run these blocking methods through asyncio.to_thread.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from engine.edits import apply_edits, normalize_path
from engine.errors import EditError, MergeConflict, WorkspaceError
from engine.models import Edit

ROOT_REF = "refs/threadlab/root"
_IDENTITY = {
    "GIT_AUTHOR_NAME": "threadlab",
    "GIT_AUTHOR_EMAIL": "threadlab@localhost",
    "GIT_COMMITTER_NAME": "threadlab",
    "GIT_COMMITTER_EMAIL": "threadlab@localhost",
}
# Settings that keep the user's configuration and hooks out of our repositories.
_CONFIG = (
    "-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0", "-c", "core.autocrlf=false",
    "-c", "core.quotePath=false", "-c", "color.ui=never", "-c", "diff.external=",
)
_SKIP_DIRS = {".git", "__pycache__"}
_REGULAR, _EXECUTABLE, _SYMLINK = "100644", "100755", "120000"

# One lock per repository for ref updates: git refuses, rather than waits, when two
# update-ref calls race on one ref.
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _repo_lock(repo_dir: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(repo_dir, threading.Lock())


def _one_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    text = "; ".join(lines) or "no message"
    return text if len(text) <= 300 else text[:297] + "..."


class Workspace:
    """A task's git repository at repo_dir."""

    def __init__(self, repo_dir: Path, root_sha: str):
        self.repo_dir = repo_dir
        self._root_sha = root_sha
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(_IDENTITY)
        env.update(
            GIT_DIR=str(repo_dir), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
            GIT_TERMINAL_PROMPT="0", LC_ALL="C",
        )
        self._env = env

    # ----- opening -----------------------------------------------------------------

    @classmethod
    def open_or_create(cls, repo_dir: Path, task_dir: Path, exclude: Sequence[str] = (),
                       include: Mapping[str, str] | None = None) -> Workspace:
        """Open the repository at repo_dir, or create it with task_dir as the root commit.

        include: more files of the task that live elsewhere ({name: path}, the task's
        `include`): they join the root commit's top level under their names."""
        repo_dir = Path(repo_dir).resolve()
        task_dir = Path(task_dir).resolve()
        with _repo_lock(repo_dir):
            if not (repo_dir / "HEAD").is_file():
                if repo_dir.exists() and any(repo_dir.iterdir()):
                    raise WorkspaceError(
                        f"{repo_dir} exists but is not a git repository",
                        hint="remove it or choose another directory for the task repository",
                    )
                repo_dir.mkdir(parents=True, exist_ok=True)
                cls(repo_dir, "")._git("init", "--bare", "--quiet")
            ws = cls(repo_dir, "")
            root = ws._rev_parse(ROOT_REF)
            if root is None:  # new, or a creation that died before the root ref was written
                if not task_dir.is_dir():
                    raise WorkspaceError(
                        f"task folder {task_dir} does not exist",
                        hint="pass the folder that holds the task's task.toml",
                    )
                root = ws._import_tree(task_dir, _skipped(repo_dir, task_dir, exclude), include or {})
                ws._git("update-ref", ROOT_REF, root)
            ws._root_sha = root
            return ws

    @property
    def root_sha(self) -> str:
        return self._root_sha

    def changed_since_root(self, task_dir: Path, exclude: Sequence[str] = (),
                           include: Mapping[str, str] | None = None) -> list[str]:
        """The files of task_dir (and its included ones) that differ from the root commit's
        (the task's seed code and harness as this repository first took them)."""
        task_dir = Path(task_dir).resolve()
        tree = self._tree_of(task_dir, _skipped(self.repo_dir, task_dir, exclude), include or {})
        (root_tree,) = self.trees([self.root_sha])
        if tree == root_tree:
            return []
        return self._git("diff", "--name-only", "--no-renames", root_tree, tree).decode().split()

    def _import_tree(self, task_dir: Path, skip: set[Path], include: Mapping[str, str]) -> str:
        tree = self._tree_of(task_dir, skip, include)
        message = f"baseline: {task_dir.name}"
        return self._git("commit-tree", tree, "-F", "-", input=message.encode()).decode().strip()

    def _tree_of(self, task_dir: Path, skip: set[Path], include: Mapping[str, str]) -> str:
        entries: list[tuple[str, str, str]] = []  # (mode, blob, path)
        regular: list[tuple[str, Path, str]] = []  # (mode, file, path in the tree)
        for path in _walk(task_dir, skip):
            rel = path.relative_to(task_dir).as_posix()
            if path.is_symlink():
                blob = self._hash_blob(os.readlink(path).encode())
                entries.append((_SYMLINK, blob, rel))
            else:
                regular.append((_mode(path), path, rel))
        regular += [(_mode(Path(source)), Path(source), name) for name, source in sorted(include.items())]
        if regular:
            listing = "".join(f"{p}\n" for _, p, _ in regular).encode()
            out = self._git("hash-object", "-w", "--no-filters", "--stdin-paths", input=listing)
            blobs = out.decode().split()
            for (mode, _, rel), blob in zip(regular, blobs, strict=True):
                entries.append((mode, blob, rel))
        return self._write_tree(None, entries)

    # ----- reading -----------------------------------------------------------------

    def trees(self, shas: Sequence[str]) -> list[str]:
        """The tree id of each commit: equal trees are the same code, however they were made."""
        out: list[str] = []
        for i in range(0, len(shas), 2000):  # bounded command lines, however many nodes
            out += self._git("rev-parse", *(f"{sha}^{{tree}}" for sha in shas[i:i + 2000])).decode().split()
        return out

    def read_file(self, sha: str, path: str) -> str:
        return self.read_files(sha, [path])[path]

    def read_files(self, sha: str, paths: Iterable[str]) -> dict[str, str]:
        """Contents of paths at commit sha; a missing file is a WorkspaceError."""
        commit = self._commit(sha)
        paths = list(paths)
        found = self._read_blobs(commit, paths)
        for path in paths:
            if found[path] is None:
                raise WorkspaceError(
                    f"file '{path}' does not exist in commit {commit[:10]}",
                    hint="check the path against list_files() of that commit",
                )
        return {p: text for p, text in found.items() if text is not None}

    def list_files(self, sha: str) -> list[str]:
        out = self._git("ls-tree", "-r", "-z", "--name-only", self._commit(sha))
        return [p for p in out.decode().split("\0") if p]

    def diff(self, a_sha: str, b_sha: str, paths: Sequence[str] | None = None) -> str:
        """Unified diff from commit a to commit b, optionally limited to paths."""
        args = ["diff", "--no-color", "--no-ext-diff", "--no-textconv",
                self._commit(a_sha), self._commit(b_sha), "--"]
        return self._git(*args, *(paths or ())).decode("utf-8", "replace")

    def export(self, sha: str, dest: Path) -> None:
        """Write the files of commit sha into dest (created when missing)."""
        commit = self._commit(sha)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        tar = self._git("archive", "--format=tar", commit)
        try:
            with tarfile.open(fileobj=io.BytesIO(tar), mode="r") as archive:
                archive.extractall(dest, filter="tar")
        except (tarfile.TarError, OSError) as exc:
            raise WorkspaceError(
                f"cannot export commit {commit[:10]} to {dest}: {exc}",
                hint="check that the destination is writable and has free space",
            ) from exc

    def is_ancestor(self, a: str, b: str) -> bool:
        """True when commit a is b or one of b's ancestors."""
        result = self._run("merge-base", "--is-ancestor", self._commit(a), self._commit(b))
        if result.returncode not in (0, 1):
            self._fail("merge-base", result.stderr)
        return result.returncode == 0

    # ----- writing -----------------------------------------------------------------

    def commit_edits(self, parent_sha: str, edits: Sequence[Edit], editable: Sequence[str],
                     message: str, branch: str | None = None) -> str:
        """Commit parent's tree with edits applied; return the new commit's sha.

        EditError from apply_edits propagates unchanged.
        """
        parent = self._commit(parent_sha)
        touched = list(dict.fromkeys(normalize_path(e.file) for e in edits))
        before = {p: t for p, t in self._read_blobs(parent, touched).items() if t is not None}
        after = apply_edits(before, edits, editable)
        changed = {p: t for p, t in after.items() if before.get(p) != t}
        if not changed:
            raise EditError(
                "edits leave the code unchanged",
                hint="make REPLACE differ from SEARCH",
            )
        modes = self._modes(parent, list(changed))
        entries = [(modes.get(p, _REGULAR), self._hash_blob(t.encode("utf-8")), p)
                   for p, t in changed.items()]
        tree = self._write_tree(parent, entries)
        sha = self._commit_tree(tree, [parent], message)
        if branch is not None:
            self.set_branch(branch, sha)
        return sha

    def merge(self, ours_sha: str, theirs_sha: str, message: str,
              branch: str | None = None) -> str:
        """Three-way merge theirs into ours; return the merge commit's sha."""
        ours, theirs = self._commit(ours_sha), self._commit(theirs_sha)
        if self.is_ancestor(theirs, ours):
            raise WorkspaceError(
                f"nothing to merge: {ours[:10]} already contains {theirs[:10]}",
                hint="merge a node that has changes the target does not have yet",
            )
        result = self._run("merge-tree", "--write-tree", "-z", "--name-only", "--no-messages",
                           ours, theirs)
        if result.returncode not in (0, 1):
            self._fail("merge-tree", result.stderr, hint="threadlab needs git 2.38 or newer")
        fields = result.stdout.decode("utf-8", "replace").split("\0")
        if result.returncode == 1:
            conflicted = sorted({f for f in fields[1:] if f})
            raise MergeConflict(
                f"merging {theirs[:10]} into {ours[:10]} conflicts in: {', '.join(conflicted)}",
                hint="merge other nodes, or edit the head by hand to combine both changes",
            )
        sha = self._commit_tree(fields[0].strip(), [ours, theirs], message)
        if branch is not None:
            self.set_branch(branch, sha)
        return sha

    def set_branch(self, name: str, sha: str) -> None:
        commit = self._commit(sha)
        ref = self._branch_ref(name)
        with _repo_lock(self.repo_dir):
            self._git("update-ref", ref, commit)

    def keep(self, node_id: int, sha: str) -> None:
        """Keep a Node's commit reachable (refs/threadlab/nodes/ID) whatever its thread does."""
        commit = self._commit(sha)
        with _repo_lock(self.repo_dir):
            self._git("update-ref", f"refs/threadlab/nodes/{node_id}", commit)

    def branch_sha(self, name: str) -> str | None:
        return self._rev_parse(self._branch_ref(name))

    # ----- helpers -----------------------------------------------------------------

    @property
    def _hint(self) -> str:
        return f"check that the task repository at {self.repo_dir} is intact and git works"

    def _run(self, *args: str, input: bytes | None = None,
             index: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        env = self._env if index is None else {**self._env, "GIT_INDEX_FILE": str(index)}
        try:
            return subprocess.run(["git", *_CONFIG, *args], env=env, input=input,
                                  capture_output=True, check=False)
        except FileNotFoundError as exc:
            raise WorkspaceError("git is not installed", hint="install git 2.38 or newer") from exc

    def _git(self, *args: str, input: bytes | None = None, index: Path | None = None) -> bytes:
        result = self._run(*args, input=input, index=index)
        if result.returncode != 0:
            self._fail(args[0], result.stderr)
        return result.stdout

    def _fail(self, command: str, stderr: bytes, hint: str | None = None) -> None:
        raise WorkspaceError(f"git {command} failed: {_one_line(stderr)}", hint=hint or self._hint)

    def _rev_parse(self, ref: str) -> str | None:
        result = self._run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        return result.stdout.decode().strip() if result.returncode == 0 else None

    def _commit(self, sha: str) -> str:
        """The full sha of a commit, or a WorkspaceError naming the unknown one."""
        full = self._rev_parse(sha) if sha and not sha.startswith("-") else None
        if full is None:
            raise WorkspaceError(
                f"unknown commit '{sha}' in {self.repo_dir}",
                hint="use a sha returned by commit_edits or merge, or root_sha",
            )
        return full

    def _branch_ref(self, name: str) -> str:
        ref = f"refs/heads/{name}"
        if self._run("check-ref-format", ref).returncode != 0:
            raise WorkspaceError(f"invalid branch name '{name}'",
                                 hint="use letters, digits, '-', '_' and '/'")
        return ref

    def _hash_blob(self, data: bytes) -> str:
        return self._git("hash-object", "-w", "--no-filters", "--stdin", input=data).decode().strip()

    def _modes(self, commit: str, paths: list[str]) -> dict[str, str]:
        out = self._git("ls-tree", "-r", "-z", "--full-tree", commit, "--", *paths)
        modes = {}
        for record in out.decode().split("\0"):
            if record:
                meta, path = record.split("\t", 1)
                modes[path] = meta.split()[0]
        return modes

    def _write_tree(self, base: str | None, entries: list[tuple[str, str, str]]) -> str:
        """A tree: base commit's tree (or empty) with entries (mode, blob, path) set."""
        with tempfile.TemporaryDirectory(prefix="threadlab-index-") as tmp:
            index = Path(tmp) / "index"
            if base is not None:
                self._git("read-tree", base, index=index)
            else:
                self._git("read-tree", "--empty", index=index)
            info = "".join(f"{mode} {blob}\t{path}\0" for mode, blob, path in entries)
            self._git("update-index", "-z", "--index-info", input=info.encode(), index=index)
            return self._git("write-tree", index=index).decode().strip()

    def _commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self._git(*args, "-F", "-", input=message.encode("utf-8")).decode().strip()

    def _read_blobs(self, commit: str, paths: list[str]) -> dict[str, str | None]:
        """Contents at commit; None for a path that is not a file there."""
        if not paths:
            return {}
        request = "".join(f"{commit}:{p}\n" for p in paths).encode()
        out = self._git("cat-file", "--batch", input=request)
        found: dict[str, str | None] = {}
        pos = 0
        for path in paths:
            end = out.index(b"\n", pos)
            header = out[pos:end].split(b" ")
            pos = end + 1
            if len(header) != 3 or not header[2].isdigit():  # "<name> missing", "... ambiguous"
                found[path] = None
                continue
            kind, size = header[1], int(header[2])
            data = out[pos:pos + size]
            pos += size + 1
            if kind != b"blob":
                found[path] = None
                continue
            try:
                found[path] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WorkspaceError(f"file '{path}' in commit {commit[:10]} is not UTF-8 text",
                                     hint="only text files can be read or edited") from exc
        return found


def _mode(path: Path) -> str:
    return _EXECUTABLE if os.stat(path).st_mode & stat.S_IXUSR else _REGULAR


def _skipped(repo_dir: Path, task_dir: Path, exclude: Sequence[str]) -> set[Path]:
    skip = {Path(repo_dir).resolve()}
    for p in exclude:  # relative paths are taken relative to the task folder
        path = task_dir / p
        skip |= {Path(os.path.abspath(path)), path.resolve()}
    return skip


def _walk(root: Path, skip: set[Path]) -> Iterable[Path]:
    """Every file and symlink under root, skipping git/cache artifacts and skip paths."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            path = here / name
            if name in _SKIP_DIRS or path in skip:
                continue
            if path.is_symlink():
                yield path  # stored as a link, never followed
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            if name.endswith(".pyc") or path in skip:
                continue
            if path.is_symlink() or path.is_file():  # never fifos or sockets
                yield path
