"""Read side of the nanochat task's prepared data (written by prepare.py).

Imported by the training runner and the evaluator, inside the sandbox. It never imports
the engine. Layout (see prepare.py for the whole of it)::

    <data>/nanochat/public/v{V}/   tokenizer.json, token_bytes.npy, train.bin, meta.json
    <data>/nanochat/private/v{V}/  val.bin, audit.bin, meta.json

`<data>` is the THREADLAB_DATA_DIR environment variable, else ~/.cache/threadlab.
Token files are flat uint16 arrays of token ids, every document prefixed by the BOS id.
In the evaluator's sandbox private/ is not mounted: the executor hands it over as an
open directory (THREADLAB_PRIVATE), which this module reads through.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "THREADLAB_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/threadlab")
TASK_FOLDER = "nanochat"
SPLITS = ("train", "val", "audit")
PUBLIC_SPLITS = ("train",)
HINT = "run `threadlab prepare nanochat` (or `python tasks/nanochat/prepare.py`) first"


def data_home(data_dir: str | os.PathLike | None = None) -> Path:
    """The threadlab data folder: `data_dir`, else $THREADLAB_DATA_DIR, else ~/.cache/threadlab."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().resolve()


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder everything of this task lives in: `<data>/nanochat`."""
    return data_home(data_dir) / TASK_FOLDER


def through(path: Path, handles: dict[str, str]) -> Path:
    """`path`, or the same file read through a handle the executor gave this process on it
    or on a folder above it ({hidden path: /proc/self/fd/N})."""
    real = os.path.realpath(path)
    for original, handle in handles.items():
        rel = os.path.relpath(real, os.path.realpath(original))
        if rel == ".":
            return Path(handle)
        if not rel.startswith(".."):
            return Path(handle) / rel
    return path


def private_root(root: Path) -> Path:
    """root/private, or the handle on it that the executor gave this process."""
    return through(root / "private", json.loads(os.environ.get("THREADLAB_PRIVATE") or "{}"))


def vocab_dir(vocab: int, private: bool = False, root: Path | None = None) -> Path:
    root = data_root() if root is None else Path(root)
    return (private_root(root) if private else root / "public") / f"v{int(vocab)}"


def _split_path(split: str, vocab: int, root: Path | None, handles: dict[str, str]) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return through(vocab_dir(vocab, split not in PUBLIC_SPLITS, root) / f"{split}.bin", handles)


def _missing(what: str, path: Path, vocab: int) -> FileNotFoundError:
    return FileNotFoundError(
        f"nanochat {what} for vocab {vocab} not found at {path}: {HINT} "
        f"(with --vocab {vocab})"
    )


def load_tokens(split: str, vocab: int, root: Path | None = None,
                handles: dict[str, str] | None = None) -> np.memmap:
    """The token ids of one split as a read-only uint16 memmap.

    train is read from public/ (hidden during a run's set-up; `handles` from the executor's
    go reach it), val and audit from private/ (hidden from candidates)."""
    path = _split_path(split, vocab, root, handles or {})
    if not path.is_file():
        raise _missing(f"{split} tokens", path, vocab)
    return np.memmap(path, dtype=np.uint16, mode="r")


def load_token_bytes(vocab: int, root: Path | None = None) -> np.ndarray:
    """int32 array, one entry per token id: the UTF-8 bytes it stands for (0: special)."""
    path = vocab_dir(vocab, False, root) / "token_bytes.npy"
    if not path.is_file():
        raise _missing("token byte lengths", path, vocab)
    return np.load(path)


def tokenizer_path(vocab: int, root: Path | None = None) -> Path:
    path = vocab_dir(vocab, False, root) / "tokenizer.json"
    if not path.is_file():
        raise _missing("tokenizer", path, vocab)
    return path


def load_meta(vocab: int, private: bool = False, root: Path | None = None) -> dict:
    """public/v{V}/meta.json (or private/v{V}/meta.json with private=True)."""
    path = vocab_dir(vocab, private, root) / "meta.json"
    if not path.is_file():
        raise _missing("metadata", path, vocab)
    return json.loads(path.read_text(encoding="utf-8"))


def bos_id(vocab: int, root: Path | None = None) -> int:
    """The id of `<|bos|>`, which starts every document in the token files."""
    return int(load_meta(vocab, root=root)["bos_id"])
