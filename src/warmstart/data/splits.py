"""The validation split: how many documents of a domain are held out, and which ones (a seeded draw).

The draw is fixed before any token is written (the counting pass of `prepare` knows the domain's size), so the
same inputs and seed always give the same split, and domains with the same seed draw different documents.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from warmstart.errors import UserError

DEFAULT_VAL_FRACTION = 0.01


def _domain_key(name: str) -> int:
    """A stable integer per domain name, so domains with the same seed draw different validation sets."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def val_count(n_docs: int, val_docs: int | None, val_fraction: float | None, domain: str = "") -> int:
    """Validation documents of a domain of `n_docs`: `val_docs` exactly, else round-half-up(fraction * n_docs).

    A positive fraction (the default, neither given, is 1%) is at least one document once a domain has two, so
    `val_fraction: 0.01` of 30 documents validates on one, not silently on none; a fraction never takes the last
    training document.
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
    if frac > 0 and n_docs >= 2:
        k = max(k, 1)
    return max(0, min(k, n_docs - 1))


def val_indices(n_docs: int, k: int, seed: int, domain: str) -> np.ndarray:
    """Sorted indices (in input order) of the `k` validation documents, drawn without replacement."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed % 2**64, _domain_key(domain)])
    return np.sort(rng.choice(n_docs, size=k, replace=False)).astype(np.int64)


def _members(idx: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """idx in sorted_set, elementwise, in O(len(idx) log len(sorted_set)) (np.isin would sort the set per call)."""
    if not len(sorted_set):
        return np.zeros(len(idx), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, idx), len(sorted_set) - 1)
    return sorted_set[pos] == idx


def split_runs(lengths: np.ndarray, first: int, val: np.ndarray) -> list[tuple[str, int, int]]:
    """Cut consecutive documents (the first is document `first` of its domain, `lengths` tokens each) into
    runs of one split: (split, first document, end document) as indices into `lengths`, in order."""
    k = len(lengths)
    if not k:
        return []
    is_val = _members(np.arange(first, first + k), val)
    cuts = [0, *(np.flatnonzero(np.diff(is_val.astype(np.int8))) + 1).tolist(), k]
    return [("val" if is_val[a] else "train", a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def write_runs(writers: dict, lengths: np.ndarray, tokens: np.ndarray, first: int, val: np.ndarray) -> None:
    """Write consecutive documents (the first is document `first` of the domain, `tokens` theirs concatenated)
    to the `SplitWriter` of their split, in order."""
    ends = np.concatenate(([0], np.cumsum(lengths)))
    for split, a, b in split_runs(lengths, first, val):
        writers[split].write(tokens[ends[a] : ends[b]], lengths[a:b])
