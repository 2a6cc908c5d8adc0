"""A token n-gram language model with interpolated Kneser-Ney smoothing: the cheap quality scorer.

Guo et al. rank documents by perplexity under a KenLM model trained on high-quality text; this is the same
kind of model over the data's own token ids, fitted in seconds with numpy (no compiled dependency). For order n
and history h (the previous n-1 tokens):

    P_n(w | h) = max(c(h w) - D_n, 0) / c(h .) + D_n * N1+(h .) / c(h .) * P_{n-1}(w | h')   if c(h .) > 0
               = P_{n-1}(w | h')                                                             otherwise
    P_1(w)     = max(N1+(. w) - D_1, 0) / N1+(. .) + D_1 * types / N1+(. .) / V

where h' drops h's first token, the highest order uses raw counts c and every lower order uses continuation
counts N1+(. g) (how many distinct tokens precede g), N1+(h .) is the number of distinct continuations of h,
and D_k = n1 / (n1 + 2 n2) from the count-of-counts of order k (Ney et al.), kept within [0.05, 0.95]. Every
P(. | h) sums to 1 over the vocabulary. A document is scored after n-1 EOS tokens, like the training stream
where every document follows an EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from warmstart.errors import UserError


@dataclass
class _Order:
    keys: np.ndarray  # sorted k-gram keys
    counts: np.ndarray  # raw counts (highest order) or continuation counts
    discount: float
    hist_keys: np.ndarray | None = None  # sorted (k-1)-gram keys that have a continuation here
    hist_total: np.ndarray | None = None  # sum of counts over the continuations
    hist_types: np.ndarray | None = None  # number of distinct continuations


def _keys(stream: np.ndarray, k: int, vocab: int) -> np.ndarray:
    """The k-gram starting at every position, as one int64 per k-gram (base-`vocab` digits)."""
    n = len(stream) - k + 1
    key = np.zeros(max(n, 0), dtype=np.int64)
    for j in range(k):
        key = key * vocab + stream[j : j + n]
    return key


def _lookup(table_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[table_keys == query], 0 where absent."""
    if len(table_keys) == 0:
        return np.zeros(len(query), dtype=values.dtype)
    pos = np.minimum(np.searchsorted(table_keys, query), len(table_keys) - 1)
    return np.where(table_keys[pos] == query, values[pos], 0)


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.75
    return float(min(max(d, 0.05), 0.95))


class NgramLM:
    """Interpolated Kneser-Ney over token ids; `fit` on a reference stream, then `doc_nll` per document."""

    def __init__(self, order: int, vocab_size: int, eos_id: int, orders: list[_Order]):
        self.order, self.vocab_size, self.eos_id, self._orders = order, vocab_size, eos_id, orders

    @staticmethod
    def check_order(order: int, vocab_size: int) -> None:
        if order < 1:
            raise UserError(f"--order: must be >= 1 (got {order})")
        if float(vocab_size) ** order >= 2.0**63:
            raise UserError(
                f"--order {order}: {order}-grams over a {vocab_size:,}-token vocabulary do not fit a 64-bit key; "
                "use a lower order"
            )

    @classmethod
    def fit(cls, tokens: np.ndarray, order: int, vocab_size: int, eos_id: int) -> NgramLM:
        """Count a reference token stream (documents each ending in EOS) preceded by order-1 EOS tokens."""
        cls.check_order(order, vocab_size)
        stream = np.concatenate([np.full(order - 1, eos_id, dtype=np.int64), np.asarray(tokens, dtype=np.int64)])
        if len(stream) < order:
            raise UserError("the n-gram reference text has fewer tokens than the model's order")
        orders: list[_Order] = [None] * order  # type: ignore[list-item]
        keys, counts = np.unique(_keys(stream, order, vocab_size), return_counts=True)
        for k in range(order, 0, -1):
            if k < order:  # continuation counts: distinct left extensions of each k-gram
                keys, counts = np.unique(orders[k].keys % vocab_size**k, return_counts=True)
            o = _Order(keys, counts.astype(np.int64), _discount(counts))
            if k > 1:
                o.hist_keys, inverse = np.unique(keys // vocab_size, return_inverse=True)
                o.hist_total = np.bincount(inverse, weights=counts).astype(np.int64)
                o.hist_types = np.bincount(inverse).astype(np.int64)
            orders[k - 1] = o
        return cls(order, vocab_size, eos_id, orders)

    def log_probs(self, stream: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """ln P(stream[i] | the order-1 tokens before it) for each i in `positions` (each >= order-1)."""
        stream = np.asarray(stream, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        v = self.vocab_size
        o1 = self._orders[0]
        cc = _lookup(o1.keys, o1.counts, stream[positions]).astype(np.float64)
        total = float(o1.counts.sum())
        p = np.maximum(cc - o1.discount, 0) / total + o1.discount * len(o1.keys) / total / v
        for k in range(2, self.order + 1):
            o = self._orders[k - 1]
            hist = np.zeros(len(positions), dtype=np.int64)
            for j in range(k - 1, 0, -1):
                hist = hist * v + stream[positions - j]
            gram = hist * v + stream[positions]
            c = _lookup(o.keys, o.counts, gram).astype(np.float64)
            denom = _lookup(o.hist_keys, o.hist_total, hist).astype(np.float64)
            types = _lookup(o.hist_keys, o.hist_types, hist).astype(np.float64)
            seen = denom > 0
            safe = np.where(seen, denom, 1.0)
            mixed = np.maximum(c - o.discount, 0) / safe + o.discount * types / safe * p
            p = np.where(seen, mixed, p)
        return np.log(p)

    def doc_nll(self, docs: list[np.ndarray]) -> np.ndarray:
        """Rows (sum of token NLL, tokens scored) per document, each scored after order-1 EOS tokens."""
        pad = self.order - 1
        rows = np.zeros((len(docs), 2), dtype=np.float64)
        if not docs:
            return rows
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        parts = []
        for d in docs:
            parts += [np.full(pad, self.eos_id, dtype=np.int64), np.asarray(d, dtype=np.int64)]
        stream = np.concatenate(parts)
        starts = np.cumsum(lengths + pad) - lengths  # where each document's first token sits
        positions = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        nll = -self.log_probs(stream, positions)
        owner = np.repeat(np.arange(len(docs)), lengths)
        rows[:, 0] = np.bincount(owner, weights=nll, minlength=len(docs))
        rows[:, 1] = lengths
        return rows
