"""Reading documents from every source format, and the one-line errors for bad inputs."""

from __future__ import annotations

import gzip
import json
import shutil
import sys

import pytest

from warmstart.config import SourceConfig
from warmstart.data.sources import detect_format, fingerprint_source, iter_documents
from warmstart.errors import UserError

DOCS = ["first document\nwith two lines", "", "third — ünïcode 🙂", '{"looks": "like json"}', "last"]


def jsonl_bytes(docs, field="text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def read(path, **kw) -> list[str]:
    return list(iter_documents(SourceConfig(path=str(path), **kw)))


def write_parquet(path, docs, field="text"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({field: docs, "n": list(range(len(docs)))}), path, row_group_size=2)


# ----------------------------------------------------------------------------------------------- formats
def test_jsonl_plain_gzip_and_multiframe_zstd(tmp_path):
    import zstandard

    data = jsonl_bytes(DOCS)
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    # two zstd frames back to back, as multi-threaded zstd writes them: both must be read
    half = data.index(b"\n", len(data) // 2) + 1
    cctx = zstandard.ZstdCompressor()
    (tmp_path / "a.jsonl.zst").write_bytes(cctx.compress(data[:half]) + cctx.compress(data[half:]))
    for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst"):
        src = SourceConfig(path=str(tmp_path / name))
        assert detect_format(src) == "jsonl"
        assert read(tmp_path / name) == DOCS, name


def test_jsonl_custom_field_blank_lines_and_json_suffix(tmp_path):
    p = tmp_path / "b.json"
    p.write_bytes(b"\n" + jsonl_bytes(DOCS, field="content") + b"   \n\n")
    assert read(p, text_field="content") == DOCS


def test_parquet_streams_the_text_column(tmp_path):
    p = tmp_path / "c.parquet"
    write_parquet(p, DOCS)
    assert detect_format(SourceConfig(path=str(p))) == "parquet"
    assert read(p) == DOCS


def test_text_file_is_one_document(tmp_path):
    p = tmp_path / "notes.md"
    p.write_text("a whole file\nis one document\n")
    assert read(p) == ["a whole file\nis one document\n"]
    gz = tmp_path / "notes.md.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert read(gz) == read(p)  # compressed text is read as its text


def test_text_dir_sorted_hidden_skipped_glob(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / "b.txt").write_text("B")
    (d / "a.txt").write_text("A")
    (d / "sub" / "c.txt").write_text("C")
    (d / "sub" / "d.py").write_text("D")
    (d / ".hidden.txt").write_text("hidden")
    (d / ".git" / "config").write_text("git")
    assert detect_format(SourceConfig(path=str(d))) == "text"
    assert read(d) == ["A", "B", "C", "D"]
    assert read(d, glob="**/*.txt") == ["A", "B", "C"]


def test_dir_of_jsonl_files_reads_each_as_jsonl(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    (d / "part-1.jsonl").write_bytes(jsonl_bytes(DOCS[2:]))
    (d / "part-0.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(DOCS[:2])))
    assert detect_format(SourceConfig(path=str(d))) == "jsonl"
    assert read(d) == DOCS


def test_hf_dir_detected_and_missing_datasets_says_how_to_install(tmp_path, monkeypatch):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "dataset_dict.json").write_text('{"splits": ["train"]}')
    src = SourceConfig(path=str(d))
    assert detect_format(src) == "hf"
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(UserError, match=r"pip install 'warmstart\[datasets\]'"):
        list(iter_documents(src))


def test_hf_save_to_disk_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "ds"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"body": DOCS}),
            "test": datasets.Dataset.from_dict({"body": ["x"]}),
        }
    ).save_to_disk(str(d))
    assert read(d, text_field="body") == DOCS
    assert read(d, text_field="body", split="test") == ["x"]
    with pytest.raises(UserError, match="no split 'dev'"):
        read(d, text_field="body", split="dev")


# ----------------------------------------------------------------------------------------------- bad input
def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_path_is_named(tmp_path):
    with pytest.raises(UserError) as e:
        read(tmp_path / "nope.jsonl")
    assert "nope.jsonl: no such file or directory" in one_line(e)
    with pytest.raises(UserError, match="nope.jsonl: no such file"):
        read(tmp_path / "nope.jsonl", format="jsonl")


@pytest.mark.parametrize(
    "line, why",
    [
        (b"{not json", "not valid JSON"),
        (b'{"body": "x"}', "no 'text' key"),
        (b'{"text": 7}', "'text' is a int, not a string"),
        (b'["text"]', "expected a JSON object"),
        (b"\xff\xfe garbage", "not valid JSON"),
    ],
)
def test_bad_jsonl_line_names_file_and_line_or_is_skipped(tmp_path, line, why):
    p = tmp_path / "d.jsonl"
    p.write_bytes(jsonl_bytes(["ok"]) + line + b"\n" + jsonl_bytes(["fine"]))
    with pytest.raises(UserError) as e:
        read(p)
    msg = one_line(e)
    assert f"{p}:2:" in msg and why in msg and "--skip-bad-records" in msg
    stats: dict = {}
    docs = list(iter_documents(SourceConfig(path=str(p)), skip_bad_records=True, stats=stats))
    assert docs == ["ok", "fine"] and stats["bad_records"] == 1


def test_parquet_bad_column_and_nulls(tmp_path):
    p = tmp_path / "c.parquet"
    write_parquet(p, ["a", None, "c"])
    with pytest.raises(UserError, match="no column 'body'"):
        read(p, text_field="body")
    with pytest.raises(UserError, match="column 'n' is int64, not a string column"):
        read(p, text_field="n")
    with pytest.raises(UserError, match=r"row 2: 'text' is null.*--skip-bad-records"):
        read(p)
    stats: dict = {}
    assert list(iter_documents(SourceConfig(path=str(p)), True, stats)) == ["a", "c"]
    assert stats["bad_records"] == 1


def test_non_utf8_file_in_text_dir(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "a.txt").write_text("A")
    (d / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\x00")
    with pytest.raises(UserError, match=r"img\.png: not UTF-8 text.*--skip-bad-records"):
        read(d)
    stats: dict = {}
    assert list(iter_documents(SourceConfig(path=str(d)), True, stats)) == ["A"]
    assert stats["bad_records"] == 1


def test_truncated_gzip_is_a_user_error(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(gzip.compress(jsonl_bytes(["x" * 5000] * 50))[:300])
    with pytest.raises(UserError, match=r"t\.jsonl\.gz: corrupt or truncated"):
        read(p)


def test_empty_dir_glob_matches_nothing(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="no files match glob"):
        read(tmp_path / "e", format="text")


# ----------------------------------------------------------------------------------------------- fingerprint
def test_fingerprint_follows_content_and_settings_not_location(tmp_path):
    d = tmp_path / "c1"
    d.mkdir()
    (d / "a.txt").write_text("A")
    (d / "b.txt").write_text("B")
    fp = fingerprint_source(SourceConfig(path=str(d)))
    assert fp == fingerprint_source(SourceConfig(path=str(d)))
    shutil.copytree(d, tmp_path / "moved")
    assert fingerprint_source(SourceConfig(path=str(tmp_path / "moved"))) == fp
    assert fingerprint_source(SourceConfig(path=str(d), glob="*.txt")) != fp
    (d / "b.txt").rename(d / "c.txt")
    assert fingerprint_source(SourceConfig(path=str(d))) != fp
    f = tmp_path / "x.jsonl"
    f.write_bytes(jsonl_bytes(["one"]))
    fp_file = fingerprint_source(SourceConfig(path=str(f)))
    assert fingerprint_source(SourceConfig(path=str(f), text_field="body")) != fp_file
    f.write_bytes(jsonl_bytes(["two"]))
    assert fingerprint_source(SourceConfig(path=str(f))) != fp_file


# ----------------------------------------------------------------------------------------------- damaged input
def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


@pytest.mark.parametrize("name", ["t.jsonl.zst", "t.txt.zst"])
def test_truncated_zstd_is_refused_not_read_short(tmp_path, name):
    """python-zstandard's stream reader ends cleanly when its input stops inside a frame: a cut .zst must not
    read as a shorter corpus (it did: 29 of 60 documents, exit 0)."""
    import zstandard

    data = jsonl_bytes([f"document {i} " + "words " * 200 for i in range(60)])
    p = tmp_path / name
    p.write_bytes(_cut(zstandard.ZstdCompressor().compress(data), 0.6))
    with pytest.raises(UserError) as e:
        read(p)
    msg = one_line(e)
    assert msg.startswith(f"{p}: ") and "input ends inside a zstd frame at byte" in msg
    if name.endswith(".jsonl.zst"):
        assert "corrupt or truncated after line" in msg
    # --skip-bad-records does not make a cut file whole: how many records were lost is unknown
    with pytest.raises(UserError, match="inside a zstd frame"):
        list(iter_documents(SourceConfig(path=str(p)), skip_bad_records=True, stats={}))


def test_zstd_frame_cut_exactly_between_frames_reads_the_whole_frames(tmp_path):
    import zstandard

    cctx = zstandard.ZstdCompressor()
    first = cctx.compress(jsonl_bytes(["a", "b"]))
    p = tmp_path / "f.jsonl.zst"
    p.write_bytes(first + cctx.compress(jsonl_bytes(["c"])))
    assert read(p) == ["a", "b", "c"]
    p.write_bytes(first + b"\x28\xb5\x2f\xfd")  # a second frame's magic and nothing else
    with pytest.raises(
        UserError, match=r"f\.jsonl\.zst: corrupt or truncated after line 2 \(input ends inside"
    ):
        read(p)


def _damaged_parquet(path, rows: int, group: int) -> None:
    """A Parquet file of `rows` rows in groups of 100 whose `group`-th row group has garbage in its page data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"row {i} " + "text " * 20 for i in range(rows)]
    pq.write_table(
        pa.table({"text": docs}), path, row_group_size=100, compression="snappy", use_dictionary=False
    )
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = chunk.data_page_offset + chunk.total_compressed_size // 2  # past the page header, inside its data
    raw = bytearray(path.read_bytes())
    for k in range(start, chunk.data_page_offset + chunk.total_compressed_size):
        raw[k] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_parquet_damaged_page_named_by_file_or_skipped_and_counted(tmp_path):
    p = tmp_path / "d.parquet"
    _damaged_parquet(p, rows=300, group=1)
    with pytest.raises(UserError) as e:
        read(p)
    msg = one_line(e)
    assert msg.startswith(f"{p}: row group 1 (rows 101-200): damaged (") and "--skip-bad-records" in msg
    stats: dict = {}
    docs = list(iter_documents(SourceConfig(path=str(p)), skip_bad_records=True, stats=stats))
    assert len(docs) == 200 and docs[100].startswith("row 200 ")
    assert stats["bad_records"] == 100 and stats["first_bad_record"].startswith(
        f"{p}: row group 1 (rows 101-200)"
    )


def test_parquet_invalid_utf8_is_a_bad_record_not_a_traceback(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "u.parquet"
    col = pa.array([b"ok", b"bad \xff here", b"fine"], type=pa.binary()).cast(pa.string(), safe=False)
    pq.write_table(pa.table({"text": col}), p)
    with pytest.raises(UserError) as e:
        read(p)
    assert (
        one_line(e)
        == f"{p}: row 2: 'text' not UTF-8 (byte 4); fix it or pass --skip-bad-records to skip such records"
    )
    stats: dict = {}
    assert list(iter_documents(SourceConfig(path=str(p)), True, stats)) == ["ok", "fine"]
    assert stats["bad_records"] == 1


def test_the_same_text_is_the_same_document_whatever_the_format(tmp_path):
    """A UTF-8 byte-order mark opening a file is encoding, not text: JSONL (json reads bytes as utf-8-sig) never
    passed it on, a plain text file did (as U+FEFF at the document's start). Line ends and Unicode are kept
    as written in every format."""
    import zstandard

    text = "first line\r\nsecond — ünïcode 🙂\n"
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.txt").write_bytes(bom + text.encode())
    (tmp_path / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(bom + text.encode()))
    (tmp_path / "c.jsonl").write_bytes(bom + jsonl_bytes([text]))
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(bom + jsonl_bytes([text])))
    write_parquet(tmp_path / "e.parquet", [text])
    for name in ("a.txt", "b.txt.zst", "c.jsonl", "d.jsonl.gz", "e.parquet"):
        assert read(tmp_path / name) == [text], name


def test_zstd_with_skippable_frames_as_pzstd_writes_it(tmp_path):
    """pzstd opens its output with a skippable frame (its frame sizes): such a file was read as raw bytes."""
    import struct

    import zstandard

    cctx = zstandard.ZstdCompressor()
    skip = struct.pack("<II", 0x184D2A50, 4) + b"abcd"
    p = tmp_path / "s.jsonl.zst"
    p.write_bytes(skip + cctx.compress(jsonl_bytes(DOCS[:2])) + skip + cctx.compress(jsonl_bytes(DOCS[2:])))
    assert read(p) == DOCS
