"""`warmstart prepare`: text sources -> tokenized train/val token arrays per domain (format: `data/shards.py`).

What a domain's shard holds, exactly: for every document, in input order within its split,
`prefix + tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] + suffix`, concatenated,
where prefix/suffix are the checkpoint's own document format (data/doc_format.py: BOS where the tokenizer adds
one, one document-end token) recorded in index.json. Whatever the worker count, the
bytes on disk are the same: chunks are tokenized in parallel but written in input order.

Two streaming passes per domain: a cheap one that validates every record and counts documents (so the
validation documents can be drawn as an exact, seeded count before any token is written, and a bad line fails
before any work), then the tokenizing one. Nothing in an existing output directory changes unless the whole run
succeeds: each domain is built in a temp directory beside its final place and swapped in only at the end.

A domain is up to date when its fingerprint (tokenizer vocabulary, document format, dtype, split settings, seed and the
sha256 of its source files) matches its index.json. A hub dataset is streamed twice, and is fingerprinted by its
name only: to pick up a new version of it, delete its domain directory.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.atomic import build_dir, write_json
from warmstart.config import PrepareConfig, SourceConfig, read_yaml, set_dotted, validate
from warmstart.data.doc_format import DocumentFormat, encode_texts, resolve_format
from warmstart.data.shards import FORMAT, LEGACY_FORMATS, SPLITS, DomainData, dtype_for_vocab, read_manifest
from warmstart.data.sources import detect_format, fingerprint_source, iter_documents
from warmstart.data.tokenizer import load_tokenizer, tokenizer_identity
from warmstart.errors import UserError

DEFAULT_VAL_FRACTION = 0.01
INFLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to keep workers busy, small enough to bound memory


# ----------------------------------------------------------------------------------------------- results
@dataclass
class DomainResult:
    name: str
    status: str  # "built", "rebuilt", "repaired" or "up to date"
    path: Path
    train_docs: int
    train_tokens: int
    val_docs: int
    val_tokens: int
    bad_records: int = 0
    seconds: float = 0.0

    @property
    def docs(self) -> int:
        return self.train_docs + self.val_docs

    @property
    def tokens(self) -> int:
        return self.train_tokens + self.val_tokens

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens written per second of this run's work on the domain (None when nothing was built)."""
        if self.status == "up to date" or self.seconds <= 0:
            return None
        return self.tokens / self.seconds


@dataclass
class PrepareResult:
    out: Path
    dtype: str
    domains: list[DomainResult]
    seconds: float = 0.0
    unlisted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # quality-selected domains whose source is unchanged
    stale: list[str] = field(default_factory=list)  # quality-selected domains whose source was rebuilt
    document: DocumentFormat | None = None

    @property
    def built(self) -> list[str]:
        return [d.name for d in self.domains if d.status != "up to date"]

    @property
    def up_to_date(self) -> bool:
        return not self.built

    def summary(self) -> str:
        """A short table for the terminal."""
        head = f"{'domain':<16} {'status':<10} {'docs':>9} {'train tok':>13} {'val docs':>8} {'val tok':>11}"
        head += f" {'bad':>5} {'tok/s':>8} {'time':>7}"
        lines = [head]
        for d in self.domains:
            rate = f"{_si(d.tokens_per_s)}/s" if d.tokens_per_s else "-"
            secs = f"{d.seconds:.1f}s" if d.status != "up to date" else "-"
            lines.append(
                f"{d.name:<16} {d.status:<10} {d.docs:>9,} {d.train_tokens:>13,} {d.val_docs:>8,} "
                f"{d.val_tokens:>11,} {d.bad_records:>5,} {rate:>8} {secs:>7}"
            )
        n_built = len(self.built)
        state = "up to date" if not n_built else f"{n_built} built, {len(self.domains) - n_built} up to date"
        lines.append(f"data in {self.out} ({self.dtype}; {state}; {self.seconds:.1f}s)")
        if self.document is not None:
            lines.append(f"documents: {self.document.describe()} ({self.document.rule})")
        if self.kept:
            lines.append(f"kept in the manifest (selected from this recipe's domains): {', '.join(self.kept)}")
        if self.stale:
            lines.append(
                f"note: dropped from the manifest, selected from a domain since rebuilt: {', '.join(self.stale)}; "
                "run `warmstart quality score` and `select` again"
            )
        if self.unlisted:
            lines.append(f"note: left as is, not in this recipe's manifest: {', '.join(self.unlisted)}")
        return "\n".join(lines)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


# ----------------------------------------------------------------------------------------------- config
def _config(cfg: PrepareConfig | dict | str | Path, overrides: dict[str, Any]) -> PrepareConfig:
    """Validate a dict or a recipe path like the CLI does; keyword overrides act like `--set key=value`."""
    if isinstance(cfg, PrepareConfig) and not overrides:
        return cfg
    if isinstance(cfg, PrepareConfig):
        tree, source = cfg.model_dump(mode="json", by_alias=True), "recipe"
    elif isinstance(cfg, dict):
        tree, source = copy.deepcopy(cfg), "recipe"
    elif isinstance(cfg, (str, os.PathLike)):
        tree, source = read_yaml(cfg), str(cfg)
    else:
        raise TypeError(
            f"prepare(cfg): expected PrepareConfig, dict or recipe path, got {type(cfg).__name__}"
        )
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return validate(PrepareConfig, tree, source)


# ----------------------------------------------------------------------------------------------- tokenizing
_WORKER: dict[str, Any] = {}


def _init_worker(tok, fmt: DocumentFormat, dtype: str) -> None:
    # One tokenizer per process; its own Rust thread pool would only fight the other workers for cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ctrl-C is the parent's to handle (it stops the pool); a worker dying of it would read as a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(tok=tok, fmt=fmt, dtype=np.dtype(dtype))


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return encode_chunk(_WORKER["tok"], texts, _WORKER["fmt"], _WORKER["dtype"])


def encode_chunk(tok, texts: list[str], fmt: DocumentFormat, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(per-document lengths, the documents' tokens as prefix + text + suffix, concatenated) for a list of texts.

    Special-token strings inside a text are encoded as text (`encode_texts`)."""
    ids = encode_texts(tok, texts)
    prefix, suffix = fmt.prefix, fmt.suffix
    extra = len(prefix) + len(suffix)
    lengths = np.fromiter((len(x) + extra for x in ids), dtype=np.int64, count=len(ids))
    joined: list[int] = []
    for x in ids:  # list.extend runs in C: a few ns a token, against ~100 for a generator into np.fromiter
        joined.extend(prefix)
        joined.extend(x)
        joined.extend(suffix)
    flat = np.array(joined, dtype=np.int64)
    total = len(joined)
    if total and (flat.min() < 0 or flat.max() > np.iinfo(dtype).max):
        raise UserError(
            f"tokenizer produced id {int(flat.max())} that does not fit {dtype}; set dtype: uint32"
        )
    return lengths, flat.astype(dtype)


def _bar_off(progress: bool) -> bool | None:
    """tqdm's `disable`: None shows bars on a terminal only, so logs and captured stderr stay clean."""
    return None if progress else True


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(docs)
    while batch := list(islice(it, size)):
        yield batch


class _Encoder:
    """Tokenize chunks in order: in-process, or on a process pool with a bounded number of chunks in flight.

    `Pool.imap` would read the whole input ahead into its task queue; submitting at most
    INFLIGHT_PER_WORKER chunks per worker and collecting the oldest first keeps memory bounded and order fixed.
    A `ProcessPoolExecutor` (not `multiprocessing.Pool`) so that a worker killed by the OS fails the run
    instead of hanging it.
    """

    def __init__(self, tok, fmt: DocumentFormat, dtype: np.dtype, workers: int):
        self.tok, self.fmt, self.dtype, self.workers = tok, fmt, dtype, workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Encoder:
        if self.workers > 1:
            # fork where there is one: workers inherit the loaded tokenizer, start in milliseconds, and need no
            # `if __name__ == "__main__"` guard in the caller's script; they only run the tokenizer, so threads
            # of the parent (Arrow, tqdm) do not matter to them.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context(method),
                initializer=_init_worker,
                initargs=(self.tok, self.fmt, self.dtype.str),
            )
            # Start the workers now, with the variable set in the parent: a forked child of a process whose
            # tokenizer already ran multi-threaded otherwise prints a warning from the tokenizers library.
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                self.pool.submit(int).result()
            except BaseException as e:
                self.pool.shutdown(wait=True, cancel_futures=True)
                if isinstance(e, BrokenProcessPool):
                    raise UserError(
                        f"could not start {self.workers} tokenizer worker processes; try workers: 1"
                    ) from None
                raise
            finally:
                if saved is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def map(self, chunks: Iterable[list[str]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.pool is None:
            for chunk in chunks:
                yield encode_chunk(self.tok, chunk, self.fmt, self.dtype)
            return
        pending: deque[Future] = deque()
        limit = INFLIGHT_PER_WORKER * self.workers
        try:
            for chunk in chunks:
                pending.append(self.pool.submit(_encode_in_worker, chunk))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise UserError(
                f"a tokenizer worker process died (out of memory?); try fewer workers (now {self.workers}) "
                "or a smaller batch_docs"
            ) from None
        finally:
            for f in pending:
                f.cancel()


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




# ----------------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    name: str
    sources: list[SourceConfig]
    path: Path
    fingerprint: str
    source_info: list[dict]
    status: str = "up to date"
    n_docs: int = 0
    bad_records: int = 0
    val_index: np.ndarray | None = None
    seconds: float = 0.0


def _domain_key(name: str) -> int:
    """A stable integer per domain name, so domains with the same seed draw different validation sets."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def val_count(n_docs: int, val_docs: int | None, val_fraction: float | None, domain: str = "") -> int:
    """Validation documents of a domain of `n_docs`: `val_docs` exactly, else round-half-up(fraction * n_docs).

    The default (neither given) is 1% but at least one document once a domain has two; a fraction never takes
    the last training document.
    """
    if val_docs is not None:
        if val_docs and val_docs >= n_docs:
            raise UserError(
                f"val_docs {val_docs}: domain {domain!r} has only {n_docs} documents and none would be left "
                "for training; lower val_docs"
            )
        return val_docs
    frac = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    k = math.floor(frac * n_docs + 0.5)
    if val_fraction is None and n_docs >= 2:
        k = max(k, 1)
    return max(0, min(k, n_docs - 1))


def val_indices(n_docs: int, k: int, seed: int, domain: str) -> np.ndarray:
    """Sorted indices (in input order) of the `k` validation documents, drawn without replacement."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed % 2**64, _domain_key(domain)])
    return np.sort(rng.choice(n_docs, size=k, replace=False)).astype(np.int64)


def _open_domain(path: Path) -> DomainData | None:
    """The prepared domain at `path`, or None for anything else (no index, foreign or corrupt index)."""
    try:
        data = DomainData.open(path)
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return None
    return data if isinstance(data.index.get("splits"), dict) else None


def _domain_state(path: Path, fingerprint: str) -> str:
    """'missing', 'same', 'damaged' (same inputs, files truncated) or 'different'."""
    if not path.exists():
        return "missing"
    data = _open_domain(path)
    if data is None or data.index.get("fingerprint") != fingerprint:
        return "different"
    try:
        data.verify()
    except (UserError, KeyError, TypeError, ValueError):
        return "damaged"
    return "same"


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {out} exists and is not a directory; choose another out")
    if not out.is_dir():
        return
    manifest = out / "manifest.json"
    if manifest.is_file():
        if read_manifest(out).get("format") not in (FORMAT, *LEGACY_FORMATS):
            raise UserError(f"{manifest}: not a {FORMAT} manifest; choose another out")
        return
    # Without a manifest, a directory is ours only if it holds nothing but prepared domains (a run that
    # stopped between swapping in its domains and writing the manifest).
    if any(not p.name.startswith(".") and _open_domain(p) is None for p in out.iterdir()):
        raise UserError(
            f"out: {out} exists and is not a warmstart data directory (no manifest.json); "
            "choose another out or empty it"
        )


def _count_documents(plan: _Plan, cfg: PrepareConfig, progress: bool) -> None:
    """First pass: validate every record and count documents, so the validation set is fixed up front."""
    from tqdm import tqdm

    total_bad = 0
    n_total = 0
    with tqdm(desc=f"{plan.name}: reading", unit=" doc", disable=_bar_off(progress), leave=False) as bar:
        for src, info in zip(plan.sources, plan.source_info, strict=True):
            stats: dict = {}
            n = 0
            for _ in iter_documents(src, skip_bad_records=cfg.skip_bad_records, stats=stats):
                n += 1
                if n % 4096 == 0:
                    bar.update(4096)
            bar.update(n % 4096)
            info["docs"], info["bad_records"] = n, stats.get("bad_records", 0)
            n_total += n
            total_bad += info["bad_records"]
    if n_total == 0:
        paths = ", ".join(s.path for s in plan.sources)
        why = f"all {total_bad} records were bad" if total_bad else "its sources hold no documents"
        raise UserError(f"domain {plan.name!r}: no documents to prepare ({why}: {paths})")
    plan.n_docs, plan.bad_records = n_total, total_bad
    k = val_count(n_total, cfg.val_docs, cfg.val_fraction, plan.name)
    plan.val_index = val_indices(n_total, k, cfg.seed, plan.name)


# ----------------------------------------------------------------------------------------------- building
def _members(idx: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """idx in sorted_set, elementwise, in O(len(idx) log len(sorted_set)) (np.isin would sort the set per call)."""
    if not len(sorted_set):
        return np.zeros(len(idx), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, idx), len(sorted_set) - 1)
    return sorted_set[pos] == idx


def _build_domain(
    plan: _Plan, tmp: Path, cfg: PrepareConfig, encoder: _Encoder, index_head: dict, progress: bool
) -> dict:
    """Second pass: tokenize and stream into the temp directory `tmp`; returns the index written there."""
    from tqdm import tqdm

    val = plan.val_index if plan.val_index is not None else np.zeros(0, np.int64)
    writers = {
        "train": SplitWriter(tmp, "train", plan.n_docs - len(val), encoder.dtype),
        "val": SplitWriter(tmp, "val", len(val), encoder.dtype),
    }

    def docs() -> Iterator[str]:
        for src in plan.sources:
            yield from iter_documents(src, skip_bad_records=cfg.skip_bad_records, stats={})

    done = 0
    try:
        with tqdm(total=plan.n_docs, desc=plan.name, unit=" doc", disable=_bar_off(progress)) as bar:
            for lengths, tokens in encoder.map(_batches(docs(), cfg.batch_docs)):
                k = len(lengths)
                is_val = _members(np.arange(done, done + k), val)
                ends = np.concatenate(([0], np.cumsum(lengths)))
                cuts = [0, *(np.flatnonzero(np.diff(is_val.astype(np.int8))) + 1).tolist(), k]
                for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                    writer = writers["val" if is_val[a] else "train"]
                    writer.write(tokens[ends[a] : ends[b]], lengths[a:b])
                done += k
                bar.update(k)
                bar.set_postfix_str(
                    f"{(writers['train'].tokens + writers['val'].tokens) / 1e6:.1f}M tok", False
                )
        splits = {s: writers[s].finish() for s in SPLITS}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    index = {
        **index_head,
        "domain": plan.name,
        "fingerprint": plan.fingerprint,
        "splits": splits,
        "sources": plan.source_info,
        "bad_records": plan.bad_records,
    }
    write_json(tmp / "index.json", index)
    return index


def prepare(
    cfg: PrepareConfig | dict | str | Path, *, progress: bool = True, **overrides: Any
) -> PrepareResult:
    """Tokenize every domain of a prepare recipe into `cfg.out`; domains whose inputs are unchanged are skipped.

    `cfg` may be a validated config, a dict, or a recipe path; keyword overrides (e.g. `workers=2`) are applied
    like `--set`. A domain whose inputs changed is rebuilt only with `overwrite`; otherwise a `UserError`, and
    the output directory is left exactly as it was.
    """
    t_start = time.perf_counter()
    cfg = _config(cfg, overrides)
    out = Path(cfg.out)
    _check_out_dir(out)

    tok = load_tokenizer(cfg.tokenizer)
    doc_fmt = resolve_format(tok, cfg.bos, cfg.doc_end)
    vocab = tok.get_vocab()
    id_bound = max(len(tok), max(vocab.values(), default=-1) + 1, *(i + 1 for i in doc_fmt.prefix + doc_fmt.suffix))
    try:
        dtype = np.dtype(dtype_for_vocab(id_bound, cfg.dtype))
    except UserError as e:
        raise UserError(f"{cfg.tokenizer}: {e}") from None
    # eos_id: the token between documents (the n-gram scorer's start context), kept for readers of the index
    end = (doc_fmt.suffix or doc_fmt.prefix or [tok.eos_token_id])[-1]
    identity = {**tokenizer_identity(tok, name=cfg.tokenizer), "eos_id": end}
    settings = {
        "val_docs": cfg.val_docs,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "bos": doc_fmt.bos,
        "doc_end": doc_fmt.doc_end,
        "dtype": cfg.dtype,
    }
    index_head = {
        "format": FORMAT,
        "tokenizer": identity,
        "dtype": dtype.name,
        "vocab_size": len(tok),
        "document": doc_fmt.to_json(),
        "settings": settings,
    }

    # Plan every domain before writing anything: a bad input anywhere fails with the out dir untouched.
    plans: list[_Plan] = []
    for name, sources in cfg.domains.items():
        t0 = time.perf_counter()
        source_info = []
        for src in sources:
            fmt = detect_format(src)
            info = {**src.model_dump(), "format": fmt, "fingerprint": fingerprint_source(src)}
            source_info.append(info)
        fingerprint = _sha256_json(
            {
                "format": FORMAT,
                "domain": name,
                "vocab_hash": identity["vocab_hash"],
                "document": [doc_fmt.prefix, doc_fmt.suffix, doc_fmt.specials_as_text],
                "dtype": dtype.name,
                "val_docs": cfg.val_docs,
                "val_fraction": cfg.val_fraction,
                "seed": cfg.seed,
                "sources": [i["fingerprint"] for i in source_info],
            }
        )
        plan = _Plan(name, sources, out / name, fingerprint, source_info)
        state = _domain_state(plan.path, fingerprint)
        if state == "different" and not cfg.overwrite:
            old = _open_domain(plan.path)
            if old is not None and old.document_format.legacy:
                raise UserError(
                    f"{plan.path}: domain {name!r} was prepared by an older warmstart (text + EOS, no recorded "
                    "document format); use --overwrite to rebuild it in the checkpoint's format"
                )
            raise UserError(
                f"{plan.path}: domain {name!r} exists with different inputs; use --overwrite to rebuild it"
            )
        plan.status = {"missing": "built", "different": "rebuilt", "damaged": "repaired"}.get(
            state, "up to date"
        )
        if plan.status != "up to date":
            _count_documents(plan, cfg, progress)
        plan.seconds = time.perf_counter() - t0
        plans.append(plan)

    created = not out.exists()
    results: dict[str, DomainResult] = {}
    try:
        todo = [p for p in plans if p.status != "up to date"]
        with contextlib.ExitStack() as swaps:
            if todo:
                encoder = swaps.enter_context(_Encoder(tok, doc_fmt, dtype, cfg.workers))
            for plan in todo:
                t0 = time.perf_counter()
                # Built beside the final place; swapped in when the ExitStack closes, i.e. only if all succeed.
                tmp = swaps.enter_context(build_dir(plan.path, replace=True))
                index = _build_domain(plan, tmp, cfg, encoder, index_head, progress)
                plan.seconds += time.perf_counter() - t0
                results[plan.name] = _result(plan, index)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    for plan in plans:
        if plan.name not in results:
            results[plan.name] = _result(plan, DomainData.open(plan.path).index)

    fingerprints = {p.name: p.fingerprint for p in plans}
    previous = read_manifest(out)
    derived, stale = _derived_domains(out, fingerprints, previous.get("domains", []))
    manifest = {
        "format": FORMAT,
        "tokenizer": identity,
        "domains": list(cfg.domains) + list(derived),
        "fingerprints": {**fingerprints, **derived},
    }
    if previous != manifest:
        write_json(out / "manifest.json", manifest)
    unlisted = sorted(
        p.name
        for p in out.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name not in manifest["domains"]
        and p.name not in stale
        and (p / "index.json").is_file()
    )
    return PrepareResult(
        out=out,
        dtype=dtype.name,
        document=doc_fmt,
        domains=[results[p.name] for p in plans],
        seconds=time.perf_counter() - t_start,
        unlisted=unlisted,
        kept=list(derived),
        stale=stale,
    )


def _derived_domains(out: Path, fingerprints: dict[str, str], listed: list[str]) -> tuple[dict[str, str], list[str]]:
    """Domains made from this recipe's domains (`warmstart quality select`) that stay listed in the manifest:
    ({name: fingerprint} of those whose source is unchanged, in their previous manifest order; names of those
    whose source was rebuilt since, which are dropped until selected again)."""
    found: dict[str, tuple[str, str, str]] = {}
    for path in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if path.name in fingerprints or not (path / "index.json").is_file():
            continue
        try:
            index = json.loads((path / "index.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        src = index.get("selected_from") or {}
        if src.get("domain") in fingerprints:
            found[path.name] = (index.get("fingerprint"), src["domain"], src.get("fingerprint"))
    order = sorted(found, key=lambda n: (listed.index(n) if n in listed else len(listed), n))
    derived, stale = {}, []
    for name in order:
        fp, src_name, src_fp = found[name]
        if src_fp == fingerprints[src_name]:
            derived[name] = fp
        else:
            stale.append(name)
    return derived, stale


def _result(plan: _Plan, index: dict) -> DomainResult:
    sp = index["splits"]
    return DomainResult(
        name=plan.name,
        status=plan.status,
        path=plan.path,
        train_docs=int(sp["train"]["docs"]),
        train_tokens=int(sp["train"]["tokens"]),
        val_docs=int(sp["val"]["docs"]),
        val_tokens=int(sp["val"]["tokens"]),
        bad_records=int(index.get("bad_records", 0)),
        seconds=plan.seconds if plan.status != "up to date" else 0.0,
    )


def _sha256_json(obj: Any) -> str:
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()
