"""Per-domain validation loss on a fixed set of sequences: the same tokens at every evaluation.

Two ways to cut a validation split into windows:
- `documents` (`document_windows`): one window per document, from its first token (BOS where the format has one)
  to at most seq_len + 1 tokens: the mean loss a user computes by hand with `transformers` on each document,
  over exactly the first `max_tokens` targets of the split. The default of `warmstart eval` and of a run's
  in-loop evaluation, so a checkpoint's eval, a run's step 0 and its final eval are one quantity on one set of
  tokens (with the same seq_len and max_tokens).
- `packed` (`val_sequences`): consecutive (seq_len + 1)-token windows of the split's token stream, read the way
  training reads its data (`data.packing`): with `documents` packing (`packed_val_sets`) attention and positions
  restart at each document and a window's mid-document fragment gets the prefix (data/packing.py); with `stream`
  a window may start mid-document and attends across documents.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from warmstart.data.packing import document_packed, packed_pairs, scored
from warmstart.data.shards import DomainData
from warmstart.models.loss import LossModel
from warmstart.models.packing import DocumentAttention
from warmstart.runtime.distributed import Dist, all_reduce_sum


def val_sequences(domain: DomainData, seq_len: int, max_tokens: int, split: str = "val") -> np.ndarray:
    """The first `max_tokens // seq_len` non-overlapping (seq_len + 1)-token windows of the split.

    A split shorter than one window is used whole as one shorter sequence, so tiny domains still evaluate.
    """
    toks = domain.tokens(split)
    n = min((len(toks) - 1) // seq_len, max(1, max_tokens // seq_len))
    if n <= 0:
        if len(toks) < 2:
            return np.zeros((0, seq_len + 1), dtype=np.int64)
        return np.asarray(toks, dtype=np.int64)[None, :]
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return np.asarray(toks[idx], dtype=np.int64)


def document_windows(
    domain: DomainData, seq_len: int, max_tokens: int, split: str = "val"
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels), each (n_docs, seq_len) int64: document i's first min(len, seq_len + 1) tokens, inputs
    right-padded with 0 and labels with -100, for documents in split order until exactly `max_tokens` targets
    are taken (the last document's later targets unscored), or the split ends. Documents shorter than 2 tokens
    predict nothing and are skipped.

    Rows are sorted longest first so that `evaluate` can cut each batch to its longest row.
    """
    toks, offs = domain.tokens(split), domain.doc_offsets(split)
    rows, taken = [], 0
    for a, b in zip(offs[:-1], offs[1:], strict=True):
        n = min(int(b - a), seq_len + 1)
        if n < 2:
            continue
        rows.append((np.asarray(toks[a : a + n], dtype=np.int64), min(n - 1, max_tokens - taken)))
        taken += rows[-1][1]
        if taken >= max_tokens:
            break
    rows.sort(key=lambda r: len(r[0]), reverse=True)
    inputs = np.zeros((len(rows), seq_len), dtype=np.int64)
    labels = np.full((len(rows), seq_len), -100, dtype=np.int64)
    for i, (w, k) in enumerate(rows):
        inputs[i, : len(w) - 1] = w[:-1]
        labels[i, :k] = w[1 : k + 1]
    return inputs, labels


def packed_val_sets(
    domain: DomainData, seq_len: int, max_tokens: int, split: str = "val"
) -> tuple[np.ndarray, ...]:
    """`val_sequences` read with `data.packing: documents`: (inputs, labels, position ids), each (k, seq_len)."""
    windows = val_sequences(domain, seq_len, max_tokens, split)
    starts = np.arange(len(windows), dtype=np.int64) * seq_len
    prefix = list(domain.document_format.prefix)
    tokens, positions = document_packed(windows, starts, domain.doc_offsets(split), prefix)
    return packed_pairs(tokens, positions, scored(positions, len(prefix)))


def eval_windows(
    domain: DomainData, seq_len: int, max_tokens: int, windows: str = "packed", packing: str = "stream"
):
    """`document_windows` (documents; None: the causal default), or the packed windows of a domain's val split
    as `packing` reads them."""
    if windows in ("documents", None):
        return document_windows(domain, seq_len, max_tokens)
    if packing == "documents":
        return packed_val_sets(domain, seq_len, max_tokens)
    return val_sequences(domain, seq_len, max_tokens)


def scored_targets(s) -> int:
    """Tokens a set scores: every target of stream windows; the labels != -100 of (inputs, labels[, ...])."""
    return int((s[1] != -100).sum()) if isinstance(s, tuple) else int(s[:, 1:].size)


def scored_width(scored: np.ndarray) -> int:
    """Columns a causal batch needs: up to its last scored column ((B, T) bool; at least 1). Later positions cannot
    change earlier causal logits, so cutting there changes no loss and saves their compute."""
    cols = np.flatnonzero(scored.any(axis=0))
    return int(cols[-1]) + 1 if len(cols) else 1


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    sets: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    d: Dist,
    autocast: contextlib.AbstractContextManager | None = None,
    causal: bool = True,
    attention: DocumentAttention | None = None,
) -> dict[str, float]:
    """Mean token cross-entropy per domain; ranks split the sequences and sum, so any world size agrees.
    A collective under torchrun: every rank calls it with the same sets.

    A set is either (seq_len + 1)-token windows (next-token loss) or an (inputs, labels) pair whose labels are
    -100 where no loss is taken (masked-LM evaluation, or right-padded `document_windows`), or an (inputs, labels,
    position ids) triple of documents-packed windows (`packed_val_sets`; `attention`, built for the model, turns
    the ids into its forward's arguments; built here when not given). For a `causal` model
    each batch is cut after its last scored column: later positions cannot change earlier causal logits.
    `model` is a Hugging Face LM or its `LossModel`: the loss is taken block by block (models/loss.py), so memory
    does not grow with batch x sequence x vocabulary.
    """
    loss_model = model if isinstance(model, LossModel) else LossModel(model)
    was_training = loss_model.training
    loss_model.eval()
    out = {}
    for name, data in sets.items():
        inputs, labels = data[:2] if isinstance(data, tuple) else (data[:, :-1], data[:, 1:])
        positions = data[2] if isinstance(data, tuple) and len(data) == 3 else None
        if positions is not None and attention is None:
            attention = DocumentAttention(loss_model.model)
        total = torch.zeros(2, dtype=torch.float64, device=d.device)
        mine_x, mine_y = inputs[d.rank :: d.world], labels[d.rank :: d.world]
        mine_p = positions[d.rank :: d.world] if positions is not None else None
        # every rank runs the same number of forward passes (a sharded model gathers its weights in each one);
        # a rank out of sequences runs one with no target (labels all -100), which adds nothing
        rank_batches = math.ceil(math.ceil(len(inputs) / d.world) / batch_size)
        for i in range(0, rank_batches * batch_size, batch_size):
            bx, by = mine_x[i : i + batch_size], mine_y[i : i + batch_size]
            bp = mine_p[i : i + batch_size] if mine_p is not None else None
            if not len(bx):
                bx, by = inputs[:1], np.full(labels[:1].shape, -100, dtype=np.int64)
                bp = positions[:1] if positions is not None else None
            width = scored_width(by != -100) if causal else bx.shape[1]
            x = torch.from_numpy(np.ascontiguousarray(bx[:, :width])).to(d.device)
            y = torch.from_numpy(np.ascontiguousarray(by[:, :width])).to(d.device)
            forward = {}
            if bp is not None:
                forward = attention.kwargs(torch.from_numpy(np.ascontiguousarray(bp[:, :width])).to(d.device))
            with autocast or contextlib.nullcontext():
                loss, n = loss_model(x, y, **forward)
            total[0] += loss.double()
            total[1] += n
        all_reduce_sum(total, d)
        out[name] = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
    loss_model.train(was_training)
    return out


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
