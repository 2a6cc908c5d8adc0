"""Per-domain validation loss on a fixed set of sequences: the same tokens at every evaluation."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from warmstart.data.shards import DomainData
from warmstart.train.distributed import Dist, all_reduce_sum


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


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    sets: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    d: Dist,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Mean token cross-entropy per domain; ranks split the sequences and sum, so any world size agrees.

    A set is either (seq_len + 1)-token windows (next-token loss) or an (inputs, labels) pair whose labels are
    -100 where no loss is taken (masked-LM evaluation).
    """
    was_training = model.training
    model.eval()
    out = {}
    for name, data in sets.items():
        inputs, labels = data if isinstance(data, tuple) else (data[:, :-1], data[:, 1:])
        total = torch.zeros(2, dtype=torch.float64, device=d.device)
        mine_x, mine_y = inputs[d.rank :: d.world], labels[d.rank :: d.world]
        for i in range(0, len(mine_x), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(mine_x[i : i + batch_size])).to(d.device)
            y = torch.from_numpy(np.ascontiguousarray(mine_y[i : i + batch_size])).to(d.device)
            with autocast or contextlib.nullcontext():
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum", ignore_index=-100)
            total[0] += loss.double()
            total[1] += (y != -100).sum()
        all_reduce_sum(total, d)
        out[name] = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
    model.train(was_training)
    return out


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
