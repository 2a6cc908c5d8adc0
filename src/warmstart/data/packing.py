"""Document-aware packing: where each document begins inside a window of the token stream.

`data.packing: stream` reads a window as it lies in the stream: causal attention runs across the documents in it,
and a window that begins inside a document gives that fragment no prefix (BOS). `data.packing: documents` (the
default for causal LMs) reads the same tokens, plus, per window, a position id for every token: its distance from
the start of its document, or from the window's first token for the fragment of a document begun in an earlier
window. The model side (models/packing.py) turns position ids that restart at 0 into block-causal attention, so
a document's logits never depend on what is packed before it (Llama 3, Dubey et al. 2024, sec. 3.2; torchtitan's
and OLMo-core's document masking).

The prefix. A fragment that begins mid-document gets the checkpoint's prefix (BOS where the format has one) in
place of its first p tokens: the window's first token is never a target (it is the previous window's last one),
so with a one-token prefix no target is lost, the window keeps its length, and the sampler, the token counts and
resume are untouched (windows aligned to document starts would change all three; see bench/results/packing.md).

Targets. A target is scored only when it lies past its document's prefix and is not the document's first token:
a prefix token is the format's, not the text's, and a document's first token would be predicted from the document
before it, which is exactly the crossing this packing removes. So a documents-packed window scores the tokens a
per-document evaluation (`eval --windows documents`) scores, and documents that fit whole in a window give the
same loss.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100
PACKINGS = ("documents", "stream")


def window_positions(starts: np.ndarray, width: int, doc_offsets: np.ndarray) -> np.ndarray:
    """Position ids (k, width) int64 of the windows tokens[s : s + width] for each s in `starts`: the distance of
    each token from its document's first token, or from the window's first token when the document began before
    the window. `doc_offsets`: document starts plus the total (a split's `.docs.npy`)."""
    starts = np.asarray(starts, dtype=np.int64)
    absolute = starts[:, None] + np.arange(width, dtype=np.int64)[None, :]
    doc_start = np.asarray(doc_offsets)[np.searchsorted(doc_offsets, absolute, side="right") - 1]
    return absolute - np.maximum(doc_start, starts[:, None])


def add_prefix(
    tokens: np.ndarray, positions: np.ndarray, starts: np.ndarray, doc_offsets: np.ndarray, prefix: list[int]
) -> np.ndarray:
    """Give every window that begins inside a document the format's `prefix` in place of its first tokens (in
    place on `tokens` (k, width); returns it). Windows that begin at a document's start already have it."""
    if not prefix:
        return tokens
    starts = np.asarray(starts, dtype=np.int64)
    mid = ~np.isin(starts, doc_offsets)
    p = np.asarray(prefix, dtype=tokens.dtype)
    for j in range(min(len(p), tokens.shape[1])):
        rows = mid & (positions[:, j] == j)  # still the first fragment (it may be shorter than the prefix)
        tokens[rows, j] = p[j]
    return tokens


def scored(positions: np.ndarray, prefix_len: int | np.ndarray) -> np.ndarray:
    """(k, width - 1) bool: which targets (tokens 1..width-1 of each window) a documents-packed window scores;
    `prefix_len`: the format's prefix length, one for all windows or one per window (k,)."""
    first = np.maximum(np.asarray(prefix_len, dtype=np.int64), 1)
    return positions[:, 1:] >= (first[:, None] if first.ndim else first)


def packed_pairs(tokens: np.ndarray, positions: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    """(inputs, labels, position ids), each (k, width - 1) int64, of documents-packed windows (k, width) whose
    scored targets are `keep` (k, width - 1)."""
    labels = np.where(keep, tokens[:, 1:], IGNORE).astype(np.int64)
    return np.ascontiguousarray(tokens[:, :-1]), labels, np.ascontiguousarray(positions[:, :-1])


def document_packed(
    tokens: np.ndarray, starts: np.ndarray, doc_offsets: np.ndarray, prefix: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens with the prefix rule applied, position ids) of windows tokens (k, width) read at `starts`."""
    positions = window_positions(starts, tokens.shape[1], doc_offsets)
    return add_prefix(np.array(tokens, dtype=np.int64), positions, starts, doc_offsets, prefix), positions
