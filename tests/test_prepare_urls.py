"""`prepare` reads sources behind fsspec URLs (here `file://` and `memory://`; `s3://`, `gs://`, `hf://` the
same
way where their packages are installed): the same documents, shards and fingerprints as from the local paths,
also when cut into tasks by byte range."""

from __future__ import annotations

import json

import pytest
from test_prepare import TEXTS, make_source, run, tree_digest
from test_prepare_tasks import inline  # noqa: F401 - the fixture

from warmstart.config import SourceConfig
from warmstart.data.sources import detect_format, fingerprint_source, iter_documents
from warmstart.errors import UserError

fsspec = pytest.importorskip("fsspec")


def _to_memory(local_root, prefix: str) -> None:
    """Copy every file under local_root to memory://prefix/, keeping relative paths."""
    fs = fsspec.filesystem("memory")
    for p in sorted(local_root.rglob("*")):
        if p.is_file():
            fs.pipe(f"/{prefix}/{p.relative_to(local_root).as_posix()}", p.read_bytes())


def _as_url(src: dict, local_root, base: str) -> dict:
    return {**src, "path": base + src["path"][len(str(local_root)) :]}


def _shards(root) -> dict:
    """Every file's digest but index.json's (which records each source's path), and every fingerprint."""
    out = {k: v for k, v in tree_digest(root).items() if not k.endswith("index.json")}
    for index in sorted(root.glob("*/index.json")):
        out[str(index)[len(str(root)) :]] = json.loads(index.read_text())["fingerprint"]
    return out


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "text-dir"])
@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_url_sources_give_the_local_bytes(tmp_path, tokenizer_dir, inline, kind, scheme):  # noqa: F811
    local = tmp_path / "src"
    local.mkdir()
    src, docs = make_source(kind, local, TEXTS * 2)
    if scheme == "memory":
        _to_memory(local, tmp_path.name)
        base = f"memory://{tmp_path.name}"
    else:
        base = f"file://{local}"
    url = _as_url(src, local, base)
    assert detect_format(SourceConfig(**url)) == detect_format(SourceConfig(**src))
    assert list(iter_documents(SourceConfig(**url))) == docs
    assert fingerprint_source(SourceConfig(**url)) == fingerprint_source(SourceConfig(**src))
    run(tokenizer_dir, tmp_path / "local", {"web": [src]}, val_docs=3)
    run(tokenizer_dir, tmp_path / "url", {"web": [url]}, val_docs=3)
    assert _shards(tmp_path / "url") == _shards(tmp_path / "local")
    run(tokenizer_dir, tmp_path / "tasks", {"web": [url]}, val_docs=3, executor="ray", task_mb=2e-4)
    assert _shards(tmp_path / "tasks") == _shards(tmp_path / "local")


def test_missing_url_and_unknown_protocol_are_one_line(tmp_path, tokenizer_dir):
    with pytest.raises(UserError, match=r"^memory://nowhere/d.jsonl: no such file or directory"):
        run(tokenizer_dir, tmp_path / "o", {"web": [{"path": "memory://nowhere/d.jsonl"}]})
    with pytest.raises(UserError, match=r"^nosuchproto://b/d.jsonl: no filesystem for nosuchproto://"):
        run(tokenizer_dir, tmp_path / "o", {"web": [{"path": "nosuchproto://b/d.jsonl"}]})
    assert not (tmp_path / "o").exists()
