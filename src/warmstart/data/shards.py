"""The on-disk format every later step reads: flat token arrays per domain and split, plus a JSON index.

    DATA_DIR/manifest.json            tokenizer identity and the list of domains
    DATA_DIR/<domain>/index.json      dtype, counts, fingerprint, per split: file names and counts
    DATA_DIR/<domain>/<split>.bin     the tokens of every document in its recorded format (numpy memmap)
    DATA_DIR/<domain>/<split>.docs.npy  int64 offsets of document starts, plus the total at the end (len docs+1)

Document boundaries live in a .npy beside the index (named by it) so the JSON stays small for any corpus size.

A document's tokens are `prefix + text tokens + suffix`, the checkpoint's own pre-training format (BOS where its
tokenizer adds one, special-token strings encoded as text, one document-end token; see data/doc_format.py).
index.json keys: format, domain, tokenizer {name, vocab_hash, vocab_size, eos_id}, dtype, vocab_size, document
{prefix, suffix, prefix_tokens, suffix_tokens, specials_as_text, bos, doc_end, rule}, fingerprint (of every input
that decides the bytes), settings, sources, bad_records, and splits.<split>
{file, tokens, docs, doc_offsets, max_token_id}. manifest.json: format, tokenizer, domains (recipe order),
fingerprints {domain: fingerprint}.

Written and read here alone: `SplitWriter` streams one split to disk (for `warmstart prepare` and
`warmstart quality select`); `DomainData` and `open_data_dir` read it back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from warmstart.data.doc_format import DocumentFormat, document_format_of_index
from warmstart.errors import UserError
from warmstart.jsonfile import read_json_object

FORMAT = "warmstart-shards-v2"
# v1: documents written as text + EOS with no BOS and special-token strings matched; still readable (its
# document format is reported as `legacy`, and every check that meets a model says how to rebuild it).
LEGACY_FORMATS = ("warmstart-shards-v1",)
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int, requested: str = "auto") -> str:
    """uint16 when every id fits, else uint32; an explicit request that cannot hold the vocabulary is an error."""
    fits16 = vocab_size <= 2**16
    if requested == "auto":
        return "uint16" if fits16 else "uint32"
    if requested == "uint16" and not fits16:
        raise UserError(
            f"dtype uint16 cannot hold a vocabulary of {vocab_size} tokens (max 65536); use dtype: uint32 or auto"
        )
    return requested


@dataclass
class DomainData:
    """A prepared domain: lazy memmaps of its splits."""

    name: str
    path: Path
    index: dict

    @classmethod
    def open(cls, path: str | Path) -> DomainData:
        path = Path(path)
        ipath = path / "index.json"
        if not ipath.is_file():
            raise UserError(f"{path}: not a prepared domain (no index.json); run `warmstart prepare` first")
        index = read_json_object(ipath, "index", "re-run `warmstart prepare --overwrite`")
        if index.get("format") not in (FORMAT, *LEGACY_FORMATS):
            raise UserError(f"{ipath}: unknown format {index.get('format')!r} (expected {FORMAT})")
        doc = index.get("document")
        bad_doc = not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), list) and all(isinstance(i, int) for i in doc[k]) for k in ("prefix", "suffix")
        )
        if index["format"] == FORMAT and bad_doc:
            raise UserError(f"{ipath}: corrupt index (no valid document format); re-run `warmstart prepare --overwrite`")
        if not isinstance(index.get("domain"), str) or not isinstance(index.get("splits"), dict):
            raise UserError(f"{ipath}: corrupt index (no domain or splits); re-run `warmstart prepare --overwrite`")
        return cls(name=index["domain"], path=path, index=index)

    @property
    def document_format(self) -> DocumentFormat:
        """How each document was written (prefix, suffix, specials as text); `legacy` for v1 data."""
        return document_format_of_index(self.index)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.index["dtype"])

    @property
    def tokenizer(self) -> dict:
        return self.index["tokenizer"]

    def n_tokens(self, split: str = "train") -> int:
        return int(self.index["splits"][split]["tokens"])

    def n_docs(self, split: str = "train") -> int:
        return int(self.index["splits"][split]["docs"])

    def tokens(self, split: str = "train") -> np.ndarray:
        return self._tokens[split]

    def doc_offsets(self, split: str = "train") -> np.ndarray:
        return np.load(self.path / self.index["splits"][split]["doc_offsets"])

    def documents(self, split: str = "train"):
        """Yield each document's tokens (EOS included)."""
        toks, offs = self.tokens(split), self.doc_offsets(split)
        for a, b in zip(offs[:-1], offs[1:], strict=True):
            yield toks[a:b]

    def verify(self) -> None:
        """Raise `UserError` unless every split's token file and offsets agree with the index (cheap: sizes and
        the offsets' shape and last value, no token is read)."""
        for split, info in self.index["splits"].items():
            toks = self._tokens[split]
            f = self.path / info["doc_offsets"]
            try:
                offs = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise UserError(
                    f"{f}: missing or corrupt ({e}); re-run `warmstart prepare --overwrite`"
                ) from None
            if offs.shape != (int(info["docs"]) + 1,) or (len(offs) and int(offs[-1]) != len(toks)):
                raise UserError(f"{f}: does not match {split}.bin; re-run `warmstart prepare --overwrite`")

    @cached_property
    def _tokens(self) -> dict[str, np.ndarray]:
        out = {}
        for split, info in self.index["splits"].items():
            f = self.path / info["file"]
            n = int(info["tokens"])
            expected = n * self.dtype.itemsize
            if not f.is_file() or f.stat().st_size != expected:
                raise UserError(
                    f"{f}: missing or truncated ({f.stat().st_size if f.is_file() else 0} bytes, expected "
                    f"{expected}); re-run `warmstart prepare --overwrite`"
                )
            out[split] = (
                np.memmap(f, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype)
            )
        return out


def open_data_dir(path: str | Path) -> dict[str, DomainData]:
    """All domains of a prepared data directory, by name (in manifest order)."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise UserError(f"{path}: not a prepared data directory (no manifest.json); run `warmstart prepare`")
    manifest = read_manifest(path)
    domains = manifest.get("domains")
    if not isinstance(domains, list) or not all(isinstance(n, str) for n in domains):
        raise UserError(f"{mpath}: corrupt manifest (no list of domains); delete it and re-run `warmstart prepare`")
    return {name: DomainData.open(path / name) for name in domains}


def read_manifest(path: str | Path) -> dict:
    """The data directory's manifest.json ({} when there is none); `UserError` when it is not a JSON object."""
    mpath = Path(path) / "manifest.json"
    if not mpath.is_file():
        return {}
    return read_json_object(mpath, "manifest", "delete it and re-run `warmstart prepare`")


# ----------------------------------------------------------------------------------------------- writing
class SplitWriter:
    """Streams one split's tokens to `<split>.bin` and its document offsets into a preallocated `.npy`.

    `n_docs` must be known up front (the offsets file is preallocated, so memory stays flat); `finish()` checks it
    and returns the split's index entry; `abort()` closes the file after an error.
    """

    def __init__(self, root: Path, split: str, n_docs: int, dtype: np.dtype):
        self.split, self.n_docs, self.dtype = split, n_docs, dtype
        self.file, self.offsets_file = f"{split}.bin", f"{split}.docs.npy"
        self.bin = open(root / self.file, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self.offsets = np.lib.format.open_memmap(
            root / self.offsets_file, mode="w+", dtype=np.int64, shape=(n_docs + 1,)
        )
        self.offsets[0] = 0
        self.docs = self.tokens = 0
        self.max_id = -1

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        k = len(lengths)
        if self.docs + k > self.n_docs:
            raise UserError(
                "a source changed while being read (more documents than counted); run prepare again"
            )
        self.offsets[self.docs + 1 : self.docs + 1 + k] = self.tokens + np.cumsum(lengths)
        self.bin.write(tokens.tobytes())
        self.docs += k
        self.tokens += int(tokens.size)
        if tokens.size:
            self.max_id = max(self.max_id, int(tokens.max()))

    def finish(self) -> dict:
        if self.docs != self.n_docs:
            raise UserError(
                "a source changed while being read (fewer documents than counted); run prepare again"
            )
        self.bin.flush()
        os.fsync(self.bin.fileno())
        self.bin.close()
        self.offsets.flush()
        del self.offsets
        return {
            "file": self.file,
            "tokens": self.tokens,
            "docs": self.docs,
            "doc_offsets": self.offsets_file,
            "max_token_id": self.max_id if self.max_id >= 0 else None,
        }

    def abort(self) -> None:
        self.bin.close()
