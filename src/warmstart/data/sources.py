"""Reading documents from a recipe's sources: JSONL (plain, gzip, zstd), Parquet, plain text, HF datasets.

Everything streams (a line, a record batch or a file at a time) so a corpus never has to fit in memory, and
every bad input becomes a one-line `UserError` naming the file and line (with skip_bad_records: skipped and
counted). A text holding a lone UTF-16 surrogate (a JSON `\\ud83d` escape without its pair) is a bad record: it
is not valid Unicode and is never passed on, nor silently replaced. The same source always yields the same
documents in the same order, which the validation split and the byte-identical output depend on.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from warmstart.config import SourceConfig
from warmstart.data.location import FsPath, location, open_raw
from warmstart.errors import UserError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
PARQUET_SUFFIXES = (".parquet", ".pq")
HF_MARKERS = ("dataset_info.json", "dataset_dict.json")
SKIP_HINT = "fix it or pass --skip-bad-records to skip such records"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PARQUET_BATCH = 1024


# ----------------------------------------------------------------------------------------------- format
def _data_suffix(path: Path) -> str:
    """The suffix that names the content, looking through a compression suffix (`x.jsonl.zst` -> `.jsonl`)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _file_format(path: Path) -> str:
    suffix = _data_suffix(path)
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def detect_format(src: SourceConfig) -> str:
    """The concrete format of a source: its `format`, or for `auto` a guess from the path.

    A directory holding `dataset_info.json`/`dataset_dict.json` is a `save_to_disk` dataset; a directory whose
    files (as matched by `glob`) are all JSONL or all Parquet is read as those files; any other directory is
    plain text, one document per file.
    """
    if src.format != "auto":
        return src.format
    path = location(src.path)
    if not path.exists():
        looks_like_hub = src.path.count("/") == 1 and not path.suffix and not src.path.startswith((".", "~"))
        hint = " (for a Hugging Face hub dataset set format: hf)" if looks_like_hub else ""
        raise UserError(f"{src.path}: no such file or directory{hint}")
    if path.is_dir():
        if any((path / m).is_file() for m in HF_MARKERS):
            return "hf"
        kinds = {_file_format(f) for _, f in _dir_files(path, src.glob)}
        if len(kinds) == 1 and kinds != {"text"}:
            return kinds.pop()
        return "text"
    return _file_format(path)


def _dir_files(root: Path, pattern: str) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the regular files under `root` matching `pattern`, hidden ones skipped,
    sorted by relative path so every machine reads them in the same order."""
    out = []
    for p in root.glob(pattern):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append((rel.as_posix(), p))
    out.sort(key=lambda rp: rp[0])
    return out


def _source_files(src: SourceConfig, fmt: str) -> list[tuple[str, Path]]:
    """The files a file-based source reads, in order: the file itself, or a directory's matching files."""
    path = location(src.path)
    if not path.exists():
        raise UserError(f"{src.path}: no such file or directory")
    if path.is_file():
        return [("", path)]  # a single file: its name is not part of its identity
    files = _dir_files(path, src.glob)
    if not files:
        raise UserError(f"{src.path}: no files match glob {src.glob!r}; check the path or set glob")
    return files


# ----------------------------------------------------------------------------------------------- opening
def open_binary(path: Path) -> IO[bytes]:
    """A buffered binary stream of a file's content, decompressing gzip or zstd (recognised by magic bytes)."""
    if isinstance(path, FsPath):
        return _open_url(path)
    fh = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    head = fh.peek(4)[:4]
    if head.startswith(_GZIP_MAGIC):
        fh.close()
        return gzip.open(path, "rb")
    if head == _ZSTD_MAGIC or _is_skippable_frame(head):  # pzstd opens its files with a skippable frame
        return io.BufferedReader(_ZstdFrames(fh), buffer_size=1 << 20)
    return fh


def _open_url(path: FsPath) -> IO[bytes]:
    """`open_binary` for a URL: the filesystem's own stream, decompressed as a local file would be."""
    fh = path.open_raw()
    head = fh.read(4)
    fh.seek(0)
    if head.startswith(_GZIP_MAGIC):
        stream = gzip.GzipFile(fileobj=fh, mode="rb")
        stream.myfileobj = fh  # closed with the gzip stream, as gzip.open does with the file it opens
        return stream
    if head == _ZSTD_MAGIC or _is_skippable_frame(head):
        return io.BufferedReader(_ZstdFrames(fh), buffer_size=1 << 20)
    return fh


def _is_skippable_frame(head: bytes) -> bool:
    """zstd's skippable-frame magic, 0x184D2A50 to 0x184D2A5F little-endian (metadata that decoders skip)."""
    return len(head) == 4 and head[1:] == b"\x2a\x4d\x18" and 0x50 <= head[0] <= 0x5F


class _ZstdFrames(io.RawIOBase):
    """A zstd file's content, frame after frame; input that stops inside a frame raises EOFError.

    python-zstandard's `stream_reader` reports a clean end when its input stops mid-frame, so a cut `.zst`
    would read as a shorter corpus. A decompression object says whether its frame ended (`eof`); one per frame
    (files written by multi-threaded zstd, or concatenated, hold several). Compressed input goes in 16 KiB at a
    time, which bounds the output held at once by the data's compression ratio.
    """

    _CHUNK = 1 << 14

    def __init__(self, fh: IO[bytes]):
        import zstandard

        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = None  # the current frame's decompressor; None between frames
        self._pending = b""  # compressed input not yet given to a decompressor
        self._out = b""
        self._pos = 0
        self._offset = 0  # compressed bytes read so far, for the message

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._out):
            if not self._decompress_more():
                return 0
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _decompress_more(self) -> bool:
        """Decompress the next piece into `_out`; False at a clean end of input (between frames)."""
        if not self._pending:
            self._pending = self._fh.read(self._CHUNK)
            self._offset += len(self._pending)
            if not self._pending:
                if self._obj is not None:
                    raise EOFError(f"input ends inside a zstd frame at byte {self._offset}")
                return False
        if self._obj is None:
            self._obj = self._dctx.decompressobj()
        data, self._pending = self._pending, b""
        self._out, self._pos = self._obj.decompress(data), 0
        if self._obj.eof:
            self._pending = self._obj.unused_data
            self._obj = None
        return True

    def close(self) -> None:
        self._fh.close()
        super().close()


# ----------------------------------------------------------------------------------------------- readers
class _Bad:
    """Either raise on a bad record or count it, as the recipe asks."""

    def __init__(self, skip: bool, stats: dict | None):
        self.skip = skip
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("bad_records", 0)

    def __call__(self, where: str, what: str, records: int = 1) -> None:
        if not self.skip:
            raise UserError(f"{where}: {what}; {SKIP_HINT}")
        self.stats["bad_records"] += records
        self.stats.setdefault("first_bad_record", f"{where}: {what}")


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zlib.error, zstandard.ZstdError)


def _json_problem(e: ValueError) -> str:
    """json's message with the position inside this one line (its own line/char count the whole record)."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}" if e.lineno == 1 else f"{e.msg} at end of line"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 at byte {e.start}"
    return _first_line(e)


def _iter_jsonl(path: Path, field: str, bad: _Bad, start: int = 0, end: int | None = None) -> Iterator[str]:
    """The records of the lines that start in bytes [start, end) of an uncompressed file (the whole file when
    start is 0 and end None); a line is named by its number in the whole file either way."""
    try:
        stream = open_binary(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    with stream:
        pos = 0
        if start:
            stream.seek(start - 1)
            pos = start - 1 + len(stream.readline())  # the line holding byte start-1 is the previous part's
        first = pos
        base: list[int] = []  # lines before `first`, counted only when a message needs them

        def at(lineno: int) -> str:
            if not base:
                base.append(_count_newlines(path, first))
            return f"{path}:{base[0] + lineno}"

        lineno = 0
        try:
            for lineno, line in enumerate(stream, 1):  # noqa: B007 - lineno is read after the loop on errors
                if end is not None and pos >= end:
                    break
                pos += len(line)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    bad(at(lineno), f"not valid JSON ({_json_problem(e)})")
                    continue
                if not isinstance(record, dict):
                    bad(at(lineno), f"expected a JSON object per line, got {type(record).__name__}")
                    continue
                if field not in record:
                    keys = ", ".join(sorted(record)[:8]) or "none"
                    bad(
                        at(lineno), f"no {field!r} key (keys: {keys}); set text_field to the text key"
                    )
                    continue
                text = record[field]
                if not isinstance(text, str):
                    bad(at(lineno), f"{field!r} is a {type(text).__name__}, not a string")
                    continue
                problem = _unicode_problem(text)
                if problem:
                    bad(at(lineno), f"{field!r} {problem}")
                    continue
                yield text
        except _corrupt_errors() as e:  # a truncated or corrupt gzip/zstd stream
            raise UserError(f"{path}: corrupt or truncated after line {lineno} ({_first_line(e)})") from None


def _count_newlines(path: Path, stop: int) -> int:
    """Newlines in the first `stop` bytes of an uncompressed file: a part's line numbers start after them."""
    n = 0
    with open_binary(path) as f:
        while stop > 0 and (chunk := f.read(min(1 << 22, stop))):
            n += chunk.count(b"\n")
            stop -= len(chunk)
    return n


def _iter_parquet(path: Path, field: str, bad: _Bad) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path.open_raw() if isinstance(path, FsPath) else path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise UserError(
            f"{path}: no column {field!r} (columns: {', '.join(names[:12])}); set text_field to the text column"
        )
    ftype = pf.schema_arrow.field(field).type
    is_view = getattr(pa.types, "is_string_view", lambda _t: False)  # pyarrow >= 16
    if not (pa.types.is_string(ftype) or pa.types.is_large_string(ftype) or is_view(ftype)):
        raise UserError(f"{path}: column {field!r} is {ftype}, not a string column; set text_field")
    row = 0  # rows before the current row group
    for group in range(pf.metadata.num_row_groups):
        size, done = pf.metadata.row_group(group).num_rows, 0
        try:
            for batch in pf.iter_batches(columns=[field], batch_size=_PARQUET_BATCH, row_groups=[group]):
                for text in _parquet_texts(batch.column(0)):
                    done += 1
                    if text is None:
                        bad(f"{path}: row {row + done}", f"{field!r} is null")
                        continue
                    if isinstance(text, UnicodeDecodeError):
                        bad(f"{path}: row {row + done}", f"{field!r} not UTF-8 (byte {text.start})")
                        continue
                    yield text
        except (OSError, pa.ArrowException) as e:  # a damaged page: the rest of the group cannot be decoded
            # what is lost is the rest of the row group: counted as bad records
            where = f"{path}: row group {group} (rows {row + done + 1}-{row + size})"
            bad(where, f"damaged ({_first_line(e)})", records=size - done)
        row += size


def _parquet_texts(column) -> list:
    """A string column's values: str, None (null) or, for a value that is not valid UTF-8 (Arrow does not check
    what a writer put in a string column), its UnicodeDecodeError."""
    import pyarrow as pa

    try:
        return column.to_pylist()
    except UnicodeDecodeError:  # one bad value fails the batch: decode value by value
        out: list = []
        for raw in column.cast(pa.large_binary()).to_pylist():
            try:
                out.append(None if raw is None else raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                out.append(e)
        return out


def _iter_text(files: list[tuple[str, Path]], bad: _Bad) -> Iterator[str]:
    for rel, path in files:
        try:
            with open_binary(path) as f:  # a .txt.gz / .md.zst is read as its text
                data = f.read()
        except _corrupt_errors() as e:
            raise UserError(f"{path}: cannot read ({_first_line(e)})") from None
        try:
            # a byte-order mark opening the file is its encoding, not text (JSONL's reader drops it too)
            yield data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            hint = "; narrow the source's glob to text files" if rel else ""
            bad(f"{path}", f"not UTF-8 text (byte {e.start}){hint}")


def _require_datasets(src: SourceConfig):
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{src.path}: reading Hugging Face datasets needs the optional package: pip install 'warmstart[datasets]'"
        ) from None
    return datasets


def _iter_hf(src: SourceConfig, bad: _Bad) -> Iterator[str]:
    """A local `save_to_disk` directory (memory-mapped Arrow) or a hub dataset (streamed)."""
    datasets = _require_datasets(src)
    field = src.text_field
    path = Path(src.path)
    if path.exists():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises FileNotFoundError, ValueError, ... for a bad directory
            raise UserError(f"{src.path}: not a dataset saved with save_to_disk ({_first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):
            split = src.split or "train"
            if split not in ds:
                raise UserError(f"{src.path}: no split {split!r} (splits: {', '.join(ds)}); set split")
            ds = ds[split]
        if field not in ds.column_names:
            raise UserError(
                f"{src.path}: no column {field!r} (columns: {', '.join(ds.column_names[:12])}); set text_field"
            )
        rows = (
            t for batch in ds.select_columns([field]).iter(batch_size=_PARQUET_BATCH) for t in batch[field]
        )
    else:
        try:
            ds = datasets.load_dataset(src.path, split=src.split or "train", streaming=True)
        except Exception as e:  # network, unknown name, unknown split: all one line for the user
            raise UserError(f"{src.path}: cannot load Hugging Face dataset ({_first_line(e)})") from None
        rows = (r.get(field) if isinstance(r, dict) else None for r in ds)
    for i, text in enumerate(rows, 1):
        if not isinstance(text, str):
            what = (
                f"{field!r} is missing or null" if text is None else f"{field!r} is a {type(text).__name__}"
            )
            bad(f"{src.path}: row {i}", what)
            continue
        problem = _unicode_problem(text)
        if problem:
            bad(f"{src.path}: row {i}", f"{field!r} {problem}")
            continue
        yield text


def _unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode, or None. JSON's \\uXXXX escapes can spell a lone UTF-16 surrogate (an
    emoji cut in half by a crawler), which no tokenizer can encode; such a record is bad, not silently altered."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone UTF-16 surrogate (\\u{ord(text[e.start]):04x} at character {e.start}), not valid Unicode"
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def iter_documents(
    src: SourceConfig, skip_bad_records: bool = False, stats: dict | None = None
) -> Iterator[str]:
    """Yield the source's documents in a fixed order, streaming.

    A bad record raises a one-line `UserError` naming file and line, or with `skip_bad_records` is skipped and
    counted in `stats['bad_records']` (the first one is kept in `stats['first_bad_record']`).
    """
    bad = _Bad(skip_bad_records, stats)
    for part in source_parts(src):
        yield from _iter_part(src, part, bad)


# ----------------------------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class SourcePart:
    """A piece of a source that one task reads: a range of lines of one JSONL file (the lines that start in
    bytes [start, end)), one whole file, a run of a directory's text files, or a whole dataset (`hf`).

    A source's parts, read one after another, yield exactly its documents in `iter_documents`' order."""

    fmt: str
    files: tuple[tuple[str, Path], ...] = ()
    start: int = 0
    end: int | None = None
    size: int = 0  # input bytes, for balancing tasks


def source_parts(src: SourceConfig, part_bytes: int | None = None) -> list[SourcePart]:
    """The source cut into parts of about `part_bytes` input bytes (None: a part per file, as read locally).

    Uncompressed JSONL is cut by byte range; a compressed or Parquet file is one part; a directory's text
    files are grouped in order; a Hugging Face dataset is one part."""
    fmt = detect_format(src)
    if fmt == "hf":
        return [SourcePart(fmt)]
    files = _source_files(src, fmt)
    sizes = [f.stat().st_size for _, f in files]
    if fmt == "text":
        if part_bytes is None:
            return [SourcePart(fmt, tuple(files), size=sum(sizes))]
        parts, run, size = [], [], 0
        for rel_path, n in zip(files, sizes, strict=True):
            run.append(rel_path)
            size += n
            if size >= part_bytes:
                parts.append(SourcePart(fmt, tuple(run), size=size))
                run, size = [], 0
        if run:
            parts.append(SourcePart(fmt, tuple(run), size=size))
        return parts
    parts = []
    for rel_path, n in zip(files, sizes, strict=True):
        if part_bytes is None or fmt != "jsonl" or n <= part_bytes or _is_compressed(rel_path[1]):
            parts.append(SourcePart(fmt, (rel_path,), size=n))
            continue
        cuts = list(range(0, n, part_bytes))
        for a, b in zip(cuts, [*cuts[1:], None], strict=True):
            parts.append(SourcePart(fmt, (rel_path,), a, b, size=(b or n) - a))
    return parts


def _is_compressed(path: Path | FsPath) -> bool:
    with open_raw(path) as f:
        head = f.read(4)
    return head.startswith(_GZIP_MAGIC) or head == _ZSTD_MAGIC or _is_skippable_frame(head)


def iter_part(
    src: SourceConfig, part: SourcePart, skip_bad_records: bool = False, stats: dict | None = None
) -> Iterator[str]:
    """Yield the documents of one part of a source (`source_parts`); bad records as in `iter_documents`."""
    yield from _iter_part(src, part, _Bad(skip_bad_records, stats))


def _iter_part(src: SourceConfig, part: SourcePart, bad: _Bad) -> Iterator[str]:
    if part.fmt == "hf":
        yield from _iter_hf(src, bad)
    elif part.fmt == "text":
        yield from _iter_text(list(part.files), bad)
    elif part.fmt == "jsonl":
        yield from _iter_jsonl(part.files[0][1], src.text_field, bad, part.start, part.end)
    elif part.fmt == "parquet":
        yield from _iter_parquet(part.files[0][1], src.text_field, bad)
    else:  # pragma: no cover - the config's Literal rules this out
        raise UserError(f"{src.path}: unknown format {part.fmt!r}")


# ----------------------------------------------------------------------------------------------- identity
def _hash_file(h, path: Path) -> None:
    try:
        with open_raw(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def fingerprint_source(src: SourceConfig) -> str:
    """sha256 over what decides the documents: file contents (streamed), names relative to the source root,
    and format/text_field/glob/split.

    The absolute location is left out, so moving a corpus does not force a rebuild. A hub dataset can only be
    identified by its name and split (its content is not fetched here).
    """
    fmt = detect_format(src)
    h = hashlib.sha256()
    settings = {"format": fmt, "text_field": src.text_field, "glob": src.glob, "split": src.split}
    h.update(json.dumps(settings, sort_keys=True).encode())
    path = location(src.path)
    if fmt == "hf" and not path.exists():
        h.update(f"hub:{src.path}".encode())
        return h.hexdigest()
    files = _dir_files(path, "**/*") if fmt == "hf" else _source_files(src, fmt)
    for rel, f in files:
        name = rel.encode("utf-8")
        h.update(len(name).to_bytes(8, "little") + name)
        h.update(f.stat().st_size.to_bytes(8, "little"))
        _hash_file(h, f)
    return h.hexdigest()
