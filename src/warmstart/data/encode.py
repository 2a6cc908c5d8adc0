"""The document encoder: texts -> one chunk of tokens, in-process or on a pool of tokenizer worker processes.

What a domain's shard holds, exactly: for every document, in input order within its split,
`prefix + tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] + suffix`, concatenated,
where prefix/suffix are the checkpoint's own document format (data/doc_format.py: BOS where the tokenizer adds
one, one document-end token) recorded in index.json. Whatever the worker count, the
bytes on disk are the same: chunks are tokenized in parallel but written in input order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any

import numpy as np

from warmstart.data.doc_format import PIECE_CHARS, DocumentFormat, encode_pieces, encode_texts
from warmstart.errors import UserError

BATCH_CHARS = 8 * PIECE_CHARS  # characters per tokenizer call: its memory grows with what one call is given
INFLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to keep workers busy, small enough to bound memory

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

    Special-token strings inside a text are encoded as text (`encode_texts`). Texts go to the tokenizer in calls
    of at most BATCH_CHARS characters, and a text longer than `PIECE_CHARS` a piece at a time (`encode_pieces`:
    the same tokens), so memory follows the tokens, not the tokenizer's work on a whole chunk or document."""
    prefix, suffix = fmt.prefix, fmt.suffix
    extra = len(prefix) + len(suffix)
    lengths = np.zeros(len(texts), dtype=np.int64)
    parts: list[np.ndarray] = []

    def short(a: int, b: int) -> None:  # texts[a:b], all short: one batch call, joined in C by list.extend
        joined: list[int] = []
        for i, x in enumerate(encode_texts(tok, texts[a:b]), a):
            lengths[i] = len(x) + extra
            joined.extend(prefix)
            joined.extend(x)
            joined.extend(suffix)
        parts.append(np.array(joined, dtype=np.int64))

    start, chars = 0, 0  # the batch of short texts so far: texts[start:i], `chars` characters
    for i, text in enumerate(texts):
        if start < i and chars + len(text) > BATCH_CHARS:  # batch_docs bounds documents; this bounds characters
            short(start, i)
            start, chars = i, 0
        chars += len(text)
        if len(text) > PIECE_CHARS:
            if start < i:
                short(start, i)
            doc = [np.array(prefix, dtype=np.int64)]
            doc += [np.array(ids, dtype=np.int64) for ids in encode_pieces(tok, text)]
            doc.append(np.array(suffix, dtype=np.int64))
            parts.append(np.concatenate(doc))
            lengths[i] = len(parts[-1])
            start, chars = i + 1, 0
    if start < len(texts):
        short(start, len(texts))
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(dtype).max):
        raise UserError(
            f"tokenizer produced id {int(flat.max())} that does not fit {dtype}; set dtype: uint32"
        )
    return lengths, flat.astype(dtype)


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

