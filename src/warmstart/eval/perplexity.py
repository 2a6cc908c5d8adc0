"""Per-domain validation loss on a fixed set of sequences: the same tokens at every evaluation.

Two ways to cut a validation split into windows:
- `packed` (`val_sequences`): consecutive (seq_len + 1)-token windows of the split's token stream, exactly as
  training reads its data: a window may start mid-document, after the previous document's end token. Every token
  is scored once with up to seq_len tokens of context. Training's in-loop evaluation uses it by default.
- `documents` (`document_windows`): one window per document, from its first token (BOS where the format has one)
  to at most seq_len + 1 tokens: the mean loss a user computes by hand with `transformers` on each document. The
  default of `warmstart eval` on a plain Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from warmstart.data.shards import DomainData
from warmstart.models.loss import LossModel
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
    right-padded with 0 and labels with -100, for documents in split order until `max_tokens` targets are
    taken (at least one document). Documents shorter than 2 tokens predict nothing and are skipped.

    Rows are sorted longest first so that `evaluate` can cut each batch to its longest row.
    """
    toks, offs = domain.tokens(split), domain.doc_offsets(split)
    rows, taken = [], 0
    for a, b in zip(offs[:-1], offs[1:], strict=True):
        n = min(int(b - a), seq_len + 1)
        if n < 2:
            continue
        rows.append(np.asarray(toks[a : a + n], dtype=np.int64))
        taken += n - 1
        if taken >= max_tokens:
            break
    rows.sort(key=len, reverse=True)
    inputs = np.zeros((len(rows), seq_len), dtype=np.int64)
    labels = np.full((len(rows), seq_len), -100, dtype=np.int64)
    for i, w in enumerate(rows):
        inputs[i, : len(w) - 1] = w[:-1]
        labels[i, : len(w) - 1] = w[1:]
    return inputs, labels


def eval_windows(domain: DomainData, seq_len: int, max_tokens: int, windows: str = "packed"):
    """`val_sequences` (packed) or `document_windows` (documents) of a domain's val split."""
    if windows == "documents":
        return document_windows(domain, seq_len, max_tokens)
    return val_sequences(domain, seq_len, max_tokens)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    sets: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    d: Dist,
    autocast: contextlib.AbstractContextManager | None = None,
    causal: bool = True,
) -> dict[str, float]:
    """Mean token cross-entropy per domain; ranks split the sequences and sum, so any world size agrees.
    A collective under torchrun: every rank calls it with the same sets.

    A set is either (seq_len + 1)-token windows (next-token loss) or an (inputs, labels) pair whose labels are
    -100 where no loss is taken (masked-LM evaluation, or right-padded `document_windows`). For a `causal` model
    each batch is cut after its last scored column: later positions cannot change earlier causal logits.
    `model` is a Hugging Face LM or its `LossModel`: the loss is taken block by block (models/loss.py), so memory
    does not grow with batch x sequence x vocabulary.
    """
    loss_model = model if isinstance(model, LossModel) else LossModel(model)
    was_training = loss_model.training
    loss_model.eval()
    out = {}
    for name, data in sets.items():
        inputs, labels = data if isinstance(data, tuple) else (data[:, :-1], data[:, 1:])
        total = torch.zeros(2, dtype=torch.float64, device=d.device)
        mine_x, mine_y = inputs[d.rank :: d.world], labels[d.rank :: d.world]
        # every rank runs the same number of forward passes (a sharded model gathers its weights in each one);
        # a rank out of sequences runs one with no target (labels all -100), which adds nothing
        rank_batches = math.ceil(math.ceil(len(inputs) / d.world) / batch_size)
        for i in range(0, rank_batches * batch_size, batch_size):
            bx, by = mine_x[i : i + batch_size], mine_y[i : i + batch_size]
            if not len(bx):
                bx, by = inputs[:1], np.full(labels[:1].shape, -100, dtype=np.int64)
            scored = np.flatnonzero((by != -100).any(axis=0)) if causal else [bx.shape[1] - 1]
            width = int(scored[-1]) + 1 if len(scored) else 1
            x = torch.from_numpy(np.ascontiguousarray(bx[:, :width])).to(d.device)
            y = torch.from_numpy(np.ascontiguousarray(by[:, :width])).to(d.device)
            with autocast or contextlib.nullcontext():
                loss, n = loss_model(x, y)
            total[0] += loss.double()
            total[1] += n
        all_reduce_sum(total, d)
        out[name] = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
    loss_model.train(was_training)
    return out


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
