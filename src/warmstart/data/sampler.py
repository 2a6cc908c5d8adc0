"""A deterministic mixture sampler: which sequence of which domain every position of the global stream reads.

Every rank builds the same sampler from the same recipe and calls `next_indices(global_batch)` each step, so all
ranks hold the same global plan and each `read`s only its slice; no communication is needed. `state_dict` makes
resuming exact.

Sequences. A domain with n train tokens has (n - 1) // seq_len sequences; sequence i is
tokens[i*seq_len : i*seq_len + seq_len + 1] (inputs plus the shifted target). A domain's pool is all of them, or a
subset (`first`: the first K // seq_len; `random`: a seeded choice fixed for the run, sorted). Epoch e of domain d
is `np.random.default_rng([seed, crc32(d), e]).permutation(pool)`, so adding, removing or reordering domains never
changes another domain's order; each epoch reads every pool sequence exactly once. Subset mode `resample` draws a
fresh subset every epoch (the general data of a pretraining-like mixture, Guo et al. 2024): epoch e reads the
first K // seq_len entries of `default_rng([seed, crc32(d), e]).permutation(all sequences)` - a uniform random
K-subset in random order, different each epoch, no sequence twice within an epoch.

Interleaving (which domain draw t goes to). Not random: Tijdeman's rule for the chairman assignment problem
(R. Tijdeman, Discrete Math. 32 (1980) 323-330). With k domains of positive weight w_d, counts c_d so far and
delta = 1/(2k - 2), draw t (1-based) goes, among the domains with sigma_d = w_d*t - c_d >= delta, to the one with
the smallest (1 - delta - sigma_d) / w_d (the one whose lag would first reach 1 - delta; ties: the lowest domain
position). His theorem: for every prefix n and every domain d

    |c_d(n) - w_d * n| <= 1 - 1/(2k - 2)        (1/2 for two domains; 0 for one; always < 1)

Weights are exact rationals (the decimal written in the recipe), so the bound holds exactly and the schedule is
periodic: after N draws (the weights' common denominator) every count is exactly w_d * N. The simpler "largest
deficit" rule (argmax w_d*t - c_d) keeps overshoot below 1 but not lag: weights (304, 1, 18, 8, 1, 1)/333 let a
domain fall 40/37 sequences behind, hence this rule.

Replay is a second level: each draw first picks "new" or "replay" by the same rule with weights (1 - f, f), then a
domain within that group by the rule on the group's relative weights and the group's own count. So the replay
share obeys |C_replay(n) - f*n| <= 1/2 at every prefix: every batch of B consecutive sequences holds f*B +- 1
replay sequences and the error never accumulates. Per domain, |c_d(n) - w_d*n| <= (w_d/W_g)/2 + 1 - 1/(2k_g - 2)
(0 for the second term when its group g, of share W_g, has a single domain k_g = 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from fractions import Fraction
from typing import Any

import numpy as np

from warmstart.config import DataConfig, ReplayConfig, SubsetConfig
from warmstart.data.packing import document_packed, scored
from warmstart.data.shards import DomainData
from warmstart.errors import UserError

STATE_FORMAT = "warmstart-sampler-v1"
# The random subset's stream: an "epoch" number no run reaches, so it never equals an epoch's stream.
_SUBSET_STREAM = 2**32 - 1


def _rational(w: Any, key: str) -> Fraction:
    """The weight as written (0.1 is exactly 1/10), so shares like 10% replay hold exactly, forever."""
    try:
        x = float(w)
    except (TypeError, ValueError):
        raise UserError(f"{key}: expected a number >= 0 (got {w!r})") from None
    if not math.isfinite(x) or x < 0:
        raise UserError(f"{key}: expected a number >= 0 (got {w!r})")
    return Fraction(repr(x))


def _fmt(f: Fraction | str) -> str:
    return f"{float(Fraction(f)):.6g}"


class _Interleave:
    """Tijdeman's rule over k members with exact rational weights, in integers: weight_i = a_i / N."""

    def __init__(self, weights: list[Fraction]):
        self.N = math.lcm(*(w.denominator for w in weights))
        self.a = [int(w * self.N) for w in weights]
        assert sum(self.a) == self.N, "weights must sum to 1"
        self.k = len(weights)
        self.m = 2 * self.k - 2  # delta = 1/m
        self.set_counts([0] * self.k)

    def set_counts(self, counts: list[int]) -> None:
        self.counts = [int(c) for c in counts]
        t = sum(self.counts) + 1  # the next draw
        # s_i = N * sigma_i = a_i * t - N * c_i, kept up to date incrementally
        self.s = [a * t - self.N * c for a, c in zip(self.a, self.counts, strict=True)]

    def pick(self) -> int:
        a, s, N, m = self.a, self.s, self.N, self.m
        best = 0
        if self.k > 1:
            best, bnum = -1, 0
            top = (m - 1) * N
            for i in range(self.k):
                si = s[i]
                if m * si >= N:  # sigma_i >= delta
                    num = top - m * si  # (1 - delta - sigma_i) / w_i == num / (m * a_i)
                    if best < 0 or num * a[best] < bnum * a[i]:
                        best, bnum = i, num
        self.counts[best] += 1
        for i in range(self.k):
            s[i] += a[i]
        s[best] -= N
        return best


class MixtureSampler:
    """The global stream of (domain position, sequence index) pairs for a weighted mixture of prepared domains."""

    def __init__(
        self,
        domains: dict[str, DomainData],
        weights: dict[str, float],
        seq_len: int,
        seed: int,
        subsets: dict[str, SubsetConfig] | None = None,
        replay: ReplayConfig | None = None,
    ):
        if not domains:
            raise UserError("data.dir: no domains to sample from; run `warmstart prepare` first")
        if int(seq_len) <= 0:
            raise UserError(f"data.seq_len: must be > 0 (got {seq_len})")
        if int(seed) < 0:
            raise UserError(f"seed: must be >= 0 (got {seed})")
        self._domains = dict(domains)
        self._names = list(domains)
        self._pos = {n: i for i, n in enumerate(self._names)}
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        L = self.seq_len
        have = ", ".join(self._names)

        def known(key: str, name: str) -> None:
            if name not in self._domains:
                raise UserError(f"{key}.{name}: no such domain in data.dir (have: {have})")

        new = {}
        for name, w in weights.items():
            known("data.weights", name)
            new[name] = _rational(w, f"data.weights.{name}")
        old, frac = {}, Fraction(0)
        if replay is not None:
            frac = _rational(replay.fraction, "data.replay.fraction")
            if frac >= 1:
                raise UserError(f"data.replay.fraction: must be < 1 (got {replay.fraction})")
            for name, w in replay.domains.items():
                known("data.replay.domains", name)
                old[name] = _rational(w, f"data.replay.domains.{name}")
                if old[name] > 0 and new.get(name, 0) > 0:
                    raise UserError(
                        f"data.replay.domains.{name}: also a new-data domain (data.weights.{name} > 0); "
                        "give it weight 0 there or drop it from the replay"
                    )
            if frac > 0 and sum(old.values()) == 0:
                raise UserError("data.replay.domains: at least one replay weight must be positive")
        subsets = dict(subsets or {})
        for name in subsets:
            known("data.subsets", name)
        if sum(new.values()) == 0:
            raise UserError("data.weights: at least one weight must be positive")

        self._n_seq = {n: max(0, (d.n_tokens("train") - 1) // L) for n, d in self._domains.items()}

        # groups: (share, {name: weight}); members are kept in domain order (ties go to the lowest position)
        groups: list[tuple[Fraction, dict[str, Fraction]]] = [(1 - frac, new)]
        if frac > 0:
            groups.append((frac, old))
        self._groups: list[list[str]] = []
        self._eff = {n: Fraction(0) for n in self._names}
        for share, ws in groups:
            total = sum(ws.values())
            members = sorted((n for n, w in ws.items() if w > 0), key=self._pos.__getitem__)
            for n in members:
                self._eff[n] += share * ws[n] / total
                if self._n_seq[n] == 0:
                    key = f"data.weights.{n}" if ws is new else f"data.replay.domains.{n}"
                    raise UserError(
                        f"{key}: domain {n!r} has {self._domains[n].n_tokens('train')} train tokens, less than one "
                        f"sequence of data.seq_len + 1 = {L + 1}; lower data.seq_len or give it weight 0"
                    )
            self._groups.append(members)
        self._active = [n for n in self._names if self._eff[n] > 0]
        hashes = {self._domains[n].tokenizer.get("vocab_hash") for n in self._active}
        if len(hashes) > 1:
            raise UserError(
                "data.dir: its domains were prepared with different tokenizers; re-prepare them together"
            )
        self._top = _Interleave([share for share, _ in groups]) if len(groups) > 1 else None
        self._inner = [
            _Interleave([ws[n] / sum(ws.values()) for n in members])
            for (_, ws), members in zip(groups, self._groups, strict=True)
        ]
        self._frac = frac

        # pools: None means every sequence (0 .. n_seq-1)
        self._pools: dict[str, np.ndarray | None] = {n: None for n in self._names}
        self._subset_desc: dict[str, dict] = {}
        self._resample: dict[str, int] = {}  # domain -> sequences per epoch, drawn afresh each epoch
        for name, sc in subsets.items():
            m = int(sc.tokens) // L
            n_seq = self._n_seq[name]
            if m == 0:
                raise UserError(
                    f"data.subsets.{name}.tokens: {sc.tokens} is less than one sequence of data.seq_len {L}; raise it"
                )
            if m > n_seq:
                raise UserError(
                    f"data.subsets.{name}.tokens: {sc.tokens} is more than domain {name!r} has ({n_seq * L} tokens "
                    f"in {n_seq} sequences of {L}); lower it or drop the subset"
                )
            if sc.mode == "resample":
                self._resample[name] = m
                self._subset_desc[name] = {"mode": sc.mode, "sequences": m}
                continue
            if sc.mode == "first":
                pool = np.arange(m, dtype=np.int64)
            else:
                rng = np.random.default_rng([self.seed, self._key(name), _SUBSET_STREAM])
                pool = np.sort(rng.choice(n_seq, size=m, replace=False)).astype(np.int64)
            self._pools[name] = pool
            self._subset_desc[name] = {"mode": sc.mode, "sequences": m}

        self._perm_cache: dict[str, tuple[int, np.ndarray]] = {}
        self._windows: dict[str, np.ndarray] = {}
        self._layouts: dict[str, tuple[np.ndarray, list[int]]] = {}
        self._cursor = {
            n: 0 for n in self._names
        }  # sequences drawn per domain (position in its epoch stream)
        self._draws = 0  # global stream position
        self._sched_draws = 0  # draws since the interleaving started (differs only after a non-strict resume)
        self._parts = self._fingerprint_parts()
        self._fp = hashlib.sha256(json.dumps(self._parts, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_config(cls, cfg: DataConfig, domains: dict[str, DomainData], seed: int) -> MixtureSampler:
        """From the recipe's `data` section; no weights means uniform over every non-replay domain."""
        weights = dict(cfg.weights)
        if not weights:
            old = set(cfg.replay.domains) if cfg.replay is not None else set()
            weights = {n: 1.0 for n in domains if n not in old}
            if not weights:
                raise UserError("data.weights: every domain is a replay domain; give the new-data weights")
        return cls(domains, weights, cfg.seq_len, seed, subsets=cfg.subsets, replay=cfg.replay)

    # ------------------------------------------------------------------------------------------- info
    @property
    def domain_names(self) -> list[str]:
        """Every domain, in data-dir order; a row's first column indexes this list."""
        return list(self._names)

    @property
    def weights(self) -> dict[str, float]:
        """Effective share of the stream per domain (0.0 for those never drawn)."""
        return {n: float(w) for n, w in self._eff.items()}

    @property
    def exact_weights(self) -> dict[str, Fraction]:
        """The effective weights as the exact rationals the interleaving bound is stated for."""
        return dict(self._eff)

    @property
    def draws(self) -> int:
        return self._draws

    @property
    def counts(self) -> dict[str, int]:
        """Sequences drawn so far per domain."""
        return dict(self._cursor)

    @property
    def epochs(self) -> dict[str, float]:
        """Epochs of its pool each domain has been through: sequences drawn / pool size."""
        return {n: (c / self.pool_size(n) if self.pool_size(n) else 0.0) for n, c in self._cursor.items()}

    @property
    def completed_epochs(self) -> dict[str, int]:
        return {n: (c // self.pool_size(n) if self.pool_size(n) else 0) for n, c in self._cursor.items()}

    def pool_size(self, domain: str) -> int:
        """Sequences in one epoch of `domain` (its subset, else all its sequences)."""
        if domain in self._resample:
            return self._resample[domain]
        pool = self._pools[domain]
        return self._n_seq[domain] if pool is None else len(pool)

    @property
    def sequences_per_epoch(self) -> dict[str, int]:
        """Pool size of every domain that is drawn (one epoch of it, in sequences)."""
        return {n: self.pool_size(n) for n in self._active}

    def summary(self) -> list[dict]:
        """One row per drawn domain, for logs: share, pool, and how many global draws one epoch of it takes."""
        return [
            {
                "domain": n,
                "weight": float(self._eff[n]),
                "sequences": self.pool_size(n),
                "tokens_per_epoch": self.pool_size(n) * self.seq_len,
                "global_sequences_per_epoch": float(self.pool_size(n) / self._eff[n]),
                "epochs": self.epochs[n],
            }
            for n in self._active
        ]

    def vanishing_shares(self, draws: int) -> list[str]:
        """One line per positive share (the replay fraction, a domain's weight) worth less than one sequence over a
        run of `draws` sequences: the interleaving meets every share within about a sequence, so such a share may
        read nothing at all, and a run that silently skips what was asked for must say so."""
        out = []
        if self._frac > 0 and self._frac * draws < 1:
            out.append(
                f"data.replay.fraction {_fmt(self._frac)} is {float(self._frac * draws):.2g} of the run's {draws:,} "
                "sequences: it may read no replay sequence at all; raise data.replay.fraction or train longer"
            )
        for g, members in enumerate(self._groups):
            if g == 1 and self._frac * draws < 1:
                continue  # said for the whole replay share above
            for n in members:
                if self._eff[n] * draws < 1:
                    key = f"data.weights.{n}" if g == 0 else f"data.replay.domains.{n}"
                    out.append(
                        f"{key}: domain {n!r} gets a share of {_fmt(self._eff[n])} of the stream, "
                        f"{float(self._eff[n] * draws):.2g} of the run's {draws:,} sequences: it may read none of it; "
                        "raise its weight or train longer"
                    )
        return out

    def fingerprint(self) -> str:
        """sha256 of everything that decides which tokens the stream reads (data identity, weights, seq_len, ...)."""
        return self._fp

    def _fingerprint_parts(self) -> dict:
        doms = {}
        for n in self._active:
            d = self._domains[n]
            doms[n] = {
                "fingerprint": d.index.get("fingerprint"),
                "vocab_hash": d.tokenizer.get("vocab_hash"),
                "train_tokens": d.n_tokens("train"),
            }
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "groups": self._groups,
            "replay_fraction": str(self._frac),
            "weights": {n: str(self._eff[n]) for n in self._active},
            "domains": doms,
            "subsets": {n: self._subset_desc[n] for n in self._active if n in self._subset_desc},
        }

    # ------------------------------------------------------------------------------------------- drawing
    @staticmethod
    def _key(name: str) -> int:
        return zlib.crc32(name.encode("utf-8"))

    def _permutation(self, name: str, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(name)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rng = np.random.default_rng([self.seed, self._key(name), epoch])
        pool = self._pools[name]
        perm = rng.permutation(self._n_seq[name] if pool is None else pool).astype(np.int64, copy=False)
        if name in self._resample:
            perm = perm[: self._resample[name]]
        self._perm_cache[name] = (epoch, perm)
        return perm

    def _stream(self, name: str, start: int, m: int) -> np.ndarray:
        """Entries start .. start+m-1 of the domain's endless sequence of epochs."""
        size = self.pool_size(name)
        out = np.empty(m, dtype=np.int64)
        done, pos = 0, start
        while done < m:
            epoch, off = divmod(pos, size)
            take = min(size - off, m - done)
            out[done : done + take] = self._permutation(name, epoch)[off : off + take]
            done += take
            pos += take
        return out

    def _plan(self, n: int) -> np.ndarray:
        """Domain positions of the next n draws (advances the interleaving)."""
        lookup = [[self._pos[name] for name in members] for members in self._groups]
        inner, top = self._inner, self._top
        out = np.empty(n, dtype=np.int64)
        if top is None:
            pick, pos = inner[0].pick, lookup[0]
            for j in range(n):
                out[j] = pos[pick()]
        else:
            for j in range(n):
                g = top.pick()
                out[j] = lookup[g][inner[g].pick()]
        self._sched_draws += n
        return out

    def next_indices(self, n: int) -> np.ndarray:
        """The next n rows (domain position, sequence index) of the global stream, int64 of shape (n, 2)."""
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0 (got {n})")
        out = np.empty((n, 2), dtype=np.int64)
        plan = self._plan(n)
        out[:, 0] = plan
        for name in self._active:
            mask = plan == self._pos[name]
            m = int(np.count_nonzero(mask))
            if m:
                out[mask, 1] = self._stream(name, self._cursor[name], m)
                self._cursor[name] += m
        self._draws += n
        return out

    def _window_view(self, name: str) -> np.ndarray:
        """All sequences of a domain as overlapping rows of its memmap (a view: nothing is read)."""
        view = self._windows.get(name)
        if view is None:
            toks = self._domains[name].tokens("train")
            L, step = self.seq_len, toks.dtype.itemsize
            view = np.lib.stride_tricks.as_strided(
                toks, shape=(self._n_seq[name], L + 1), strides=(L * step, step), writeable=False
            )
            self._windows[name] = view
        return view

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Token rows (k, seq_len + 1) int64 for rows (domain position, sequence index), in the given order."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 2 or idx.shape[1] != 2:
            raise ValueError(f"indices must have shape (k, 2), got {idx.shape}")
        out = np.empty((len(idx), self.seq_len + 1), dtype=np.int64)
        if not len(idx):
            return out
        for p in np.unique(idx[:, 0]):
            if not 0 <= p < len(self._names):
                raise ValueError(f"domain position {p} out of range")
            name = self._names[int(p)]
            sel = idx[:, 0] == p
            seqs = idx[sel, 1]
            if seqs.min() < 0 or seqs.max() >= self._n_seq[name]:
                raise ValueError(
                    f"sequence index out of range for domain {name!r} ({self._n_seq[name]} sequences)"
                )
            out[sel] = self._window_view(name)[seqs]
        return out

    def read_packed(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`read` for `data.packing: documents` (data/packing.py): (tokens (k, seq_len + 1) with a mid-document
        window's first tokens replaced by its domain's prefix, position ids (k, seq_len + 1), scored targets
        (k, seq_len) bool). The same rows `read` gives, so counts, resume and data-parallel slices are unchanged."""
        idx = np.asarray(indices, dtype=np.int64)
        tokens = self.read(idx)
        positions = np.empty_like(tokens)
        keep = np.empty((len(idx), self.seq_len), dtype=bool)
        for p in np.unique(idx[:, 0]) if len(idx) else ():
            name = self._names[int(p)]
            sel = idx[:, 0] == p
            offsets, prefix = self._layout(name)
            starts = idx[sel, 1] * self.seq_len
            toks, pos = document_packed(tokens[sel], starts, offsets, prefix)
            tokens[sel], positions[sel] = toks, pos
            keep[sel] = scored(pos, len(prefix))
        return tokens, positions, keep

    def _layout(self, name: str) -> tuple[np.ndarray, list[int]]:
        """A domain's train document offsets and its format's prefix, read once."""
        got = self._layouts.get(name)
        if got is None:
            dom = self._domains[name]
            got = self._layouts[name] = (dom.doc_offsets("train"), list(dom.document_format.prefix))
        return got

    # ------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """JSON-serialisable position of the stream; with the same recipe and data, resuming is exact."""
        sizes = {n: self.pool_size(n) for n in self._names}
        return {
            "format": STATE_FORMAT,
            "fingerprint": self._fp,
            "fingerprint_parts": self._parts,
            "draws": self._draws,
            "counts": dict(self._cursor),
            "epochs": {n: (c // sizes[n] if sizes[n] else 0) for n, c in self._cursor.items()},
            "positions": {n: (c % sizes[n] if sizes[n] else 0) for n, c in self._cursor.items()},
            "schedule": {
                "draws": self._sched_draws,
                "counts": {
                    n: c
                    for g, members in enumerate(self._groups)
                    for n, c in zip(members, self._inner[g].counts, strict=True)
                },
            },
        }

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Continue where `state` left off. strict: the data must be exactly the same (else UserError). Not strict:
        each domain continues its own stream from its count, and the interleaving restarts if the mixture changed."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(
                f"sampler state: not a {STATE_FORMAT} state; was it written by this version of warmstart?"
            )
        same = state.get("fingerprint") == self._fp
        if not same and strict:
            raise UserError(f"resume would read different data: {self._describe_diff(state)}")
        try:
            counts = {str(n): int(c) for n, c in state["counts"].items()}
            draws = int(state["draws"])
            sched = state["schedule"]
            sched_draws = int(sched["draws"])
            sched_counts = {str(n): int(c) for n, c in sched["counts"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"sampler state: malformed ({e!r})") from None
        if min(counts.values(), default=0) < 0 or sum(sched_counts.values()) != sched_draws:
            raise UserError("sampler state: inconsistent counts")
        old = state.get("fingerprint_parts") or {}
        keep_schedule = same or (
            old.get("groups") == self._groups
            and old.get("weights") == self._parts["weights"]
            and old.get("replay_fraction") == self._parts["replay_fraction"]
        )
        self._cursor = {n: counts.get(n, 0) for n in self._names}
        self._draws = draws
        if keep_schedule:
            self._sched_draws = sched_draws
            for g, members in enumerate(self._groups):
                self._inner[g].set_counts([sched_counts.get(n, 0) for n in members])
            if self._top is not None:
                self._top.set_counts(
                    [sum(sched_counts.get(n, 0) for n in members) for members in self._groups]
                )
        else:
            self._sched_draws = 0
            for inner in self._inner:
                inner.set_counts([0] * inner.k)
            if self._top is not None:
                self._top.set_counts([0] * self._top.k)

    def _describe_diff(self, state: dict) -> str:
        old, new = state.get("fingerprint_parts") or {}, self._parts
        if not old:
            return f"fingerprint {str(state.get('fingerprint'))[:12]} != {self._fp[:12]}"
        out = []
        for key, label in (("seed", "seed"), ("seq_len", "data.seq_len")):
            if old.get(key) != new[key]:
                out.append(f"{label} {old.get(key)} -> {new[key]}")
        if old.get("groups") != new["groups"]:
            out.append(f"domains drawn {old.get('groups')} -> {new['groups']}")
        if old.get("replay_fraction") != new["replay_fraction"]:
            out.append(
                f"data.replay.fraction {_fmt(old.get('replay_fraction', '0'))} -> {_fmt(new['replay_fraction'])}"
            )
        ow, nw = old.get("weights", {}), new["weights"]
        for n in sorted(set(ow) | set(nw), key=lambda n: (self._pos.get(n, len(self._pos)), n)):
            if ow.get(n) != nw.get(n):
                out.append(f"weight of {n} {_fmt(ow.get(n, '0'))} -> {_fmt(nw.get(n, '0'))}")
        od, nd = old.get("domains", {}), new["domains"]
        for n in nd:
            if n in od and od[n] != nd[n]:
                out.append(f"data of {n} changed (re-prepared?)")
        os_, ns = old.get("subsets", {}), new["subsets"]
        for n in sorted(set(os_) | set(ns)):
            if os_.get(n) != ns.get(n):
                out.append(f"subset of {n} {os_.get(n)} -> {ns.get(n)}")
        return "; ".join(out) or f"fingerprint {str(state.get('fingerprint'))[:12]} != {self._fp[:12]}"
