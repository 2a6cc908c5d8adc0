"""MixtureSampler: exact interleaving bound, epochs as permutations, determinism, resume, subsets, replay, errors.

Shards are written here from known arrays: token p of the domain at manifest position i is i * 1_000_000 + p, so
every row read back names its domain and its start.
"""

from __future__ import annotations

import json
import math
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from warmstart.config import DataConfig, ReplayConfig, SubsetConfig
from warmstart.data.sampler import MixtureSampler
from warmstart.data.shards import FORMAT, DomainData, open_data_dir
from warmstart.errors import UserError

BASE = 1_000_000


def write_domain(
    root: Path,
    name: str,
    train: np.ndarray,
    val: np.ndarray | None = None,
    *,
    dtype: str = "uint32",
    vocab_hash: str = "vocab-1",
    fingerprint: str | None = None,
) -> DomainData:
    """Write one domain in the shards.py format (one document per split) and add it to root/manifest.json."""
    root = Path(root)
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    tok = {
        "name": "test-tok",
        "vocab_hash": vocab_hash,
        "vocab_size": 2**32 - 1 if dtype == "uint32" else 2**16,
    }
    splits = {}
    for split, arr in (("train", train), ("val", np.zeros(0) if val is None else val)):
        arr = np.asarray(arr).astype(dtype)
        arr.tofile(d / f"{split}.bin")
        np.save(d / f"{split}.docs.npy", np.array([0, len(arr)] if len(arr) else [0], dtype=np.int64))
        splits[split] = {
            "file": f"{split}.bin",
            "tokens": len(arr),
            "docs": 1 if len(arr) else 0,
            "doc_offsets": f"{split}.docs.npy",
            "max_token_id": int(arr.max()) if len(arr) else 0,
        }
    index = {
        "format": FORMAT,
        "domain": name,
        "tokenizer": tok,
        "dtype": dtype,
        "fingerprint": fingerprint or f"fp-{name}-{len(train)}",
        "document": {"prefix": [], "suffix": [0], "prefix_tokens": [], "suffix_tokens": ["<eos>"]},
        "splits": splits,
    }
    (d / "index.json").write_text(json.dumps(index))
    mpath = root / "manifest.json"
    manifest = (
        json.loads(mpath.read_text())
        if mpath.is_file()
        else {"format": FORMAT, "tokenizer": tok, "domains": []}
    )
    if name not in manifest["domains"]:
        manifest["domains"].append(name)
    mpath.write_text(json.dumps(manifest))
    return DomainData.open(d)


def make_dir(root: Path, sizes: dict[str, int]) -> dict[str, DomainData]:
    """Domains with the given train token counts, in this order; tokens = position * BASE + offset."""
    for i, (name, n) in enumerate(sizes.items()):
        write_domain(root, name, i * BASE + np.arange(n))
    return open_data_dir(root)


def draw_all(s: MixtureSampler, total: int, batch: int) -> np.ndarray:
    rows = [s.next_indices(min(batch, total - k)) for k in range(0, total, batch)]
    return np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)


def tijdeman(k: int) -> Fraction:
    return Fraction(0) if k < 2 else 1 - Fraction(1, 2 * k - 2)


def max_deviation(domain_col: np.ndarray, members: list[int], weights: list[Fraction]) -> Fraction:
    """max over prefixes n and members d of |c_d(n) - w_d n|, exactly (restricted to draws of `members`)."""
    sub = domain_col[np.isin(domain_col, members)]
    n = np.arange(1, len(sub) + 1, dtype=object)
    worst = Fraction(0)
    N = math.lcm(*(w.denominator for w in weights))
    for d, w in zip(members, weights, strict=True):
        c = np.cumsum(sub == d).astype(object)
        worst = max(worst, Fraction(int(np.abs(int(w * N) * n - N * c).max()), N))
    return worst


# ------------------------------------------------------------------------------------------------ interleaving
RNG_WEIGHTS = [float(x) for x in np.random.default_rng(7).random(16)]

WEIGHT_VECTORS = {
    "even2": [1, 1],
    "70-30": [0.7, 0.3],
    "99-1": [0.99, 0.01],
    "1-99": [0.01, 0.99],
    "thirds": [1, 1, 1],
    "four": [0.5, 0.3, 0.15, 0.05],
    "skewed-many": [0.9] + [0.01] * 10,
    "geometric12": [2.0**-i for i in range(12)],
    "random16": RNG_WEIGHTS,
    # the simple largest-deficit rule lets a domain fall 40/37 behind here (see test_largest_deficit_rule_...)
    "deficit-breaker": [304, 1, 18, 8, 1, 1],
}


@pytest.mark.parametrize("name", list(WEIGHT_VECTORS))
def test_counts_follow_weights_within_tijdeman_bound_at_every_prefix(tmp_path, name):
    ws = WEIGHT_VECTORS[name]
    names = [f"d{i}" for i in range(len(ws))]
    domains = make_dir(tmp_path, {n: 4 * 5 + 1 for n in names})
    s = MixtureSampler(domains, dict(zip(names, ws, strict=True)), seq_len=4, seed=0)
    exact = [Fraction(repr(float(w))) for w in ws]
    exact = [w / sum(exact) for w in exact]
    assert [s.exact_weights[n] for n in names] == exact
    period = math.lcm(*(w.denominator for w in exact))
    total = min(period, 6000) if period > 6000 else 2 * period  # two full periods cover every prefix
    rows = draw_all(s, total, 37)
    bound = tijdeman(len(ws))
    dev = max_deviation(rows[:, 0], list(range(len(ws))), exact)
    assert dev <= bound, (name, float(dev), float(bound))
    assert bound < 1
    if total >= period:  # after a whole period the counts are exactly the weights
        c = np.bincount(rows[:period, 0], minlength=len(ws))
        assert [int(x) for x in c] == [int(w * period) for w in exact]
    assert sum(s.counts.values()) == total == s.draws


def test_largest_deficit_rule_exceeds_one_where_ours_does_not():
    """Why the sampler does not use argmax_d w_d*t - c_d: its lag is not bounded by one sequence."""
    a = [304, 1, 18, 8, 1, 1]
    N = sum(a)
    c, worst = [0] * len(a), Fraction(0)
    for t in range(1, N + 1):
        best = max(range(len(a)), key=lambda d: (a[d] * t - N * c[d], -d))
        c[best] += 1
        worst = max(worst, *(Fraction(a[d] * t - N * c[d], N) for d in range(len(a))))
    assert worst == Fraction(40, 37)


def test_batch_splitting_does_not_change_the_stream(tmp_path):
    domains = make_dir(tmp_path, {"a": 41, "b": 61, "c": 29})
    w = {"a": 0.5, "b": 0.3, "c": 0.2}
    one = MixtureSampler(domains, w, 4, seed=3).next_indices(500)
    many = draw_all(MixtureSampler(domains, w, 4, seed=3), 500, 7)
    assert np.array_equal(one, many)
    assert MixtureSampler(domains, w, 4, seed=3).next_indices(0).shape == (0, 2)


def test_zero_weight_domain_is_never_drawn(tmp_path):
    domains = make_dir(tmp_path, {"a": 41, "b": 41, "c": 41})
    s = MixtureSampler(domains, {"a": 1, "b": 0}, 4, seed=0)
    rows = s.next_indices(300)
    assert set(rows[:, 0].tolist()) == {0}
    assert s.weights == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert s.counts == {"a": 300, "b": 0, "c": 0}
    assert s.sequences_per_epoch == {"a": 10}


# ------------------------------------------------------------------------------------------------ epochs and reading
def test_each_epoch_is_a_permutation_and_reads_match_the_memmap(tmp_path):
    L = 4
    domains = make_dir(tmp_path, {"a": 10 * L + 3, "b": 7 * L + 1})  # 10 and 7 sequences
    s = MixtureSampler(domains, {"a": 0.6, "b": 0.4}, L, seed=11)
    rows = draw_all(s, 200, 16)
    for pos, name, pool in ((0, "a", 10), (1, "b", 7)):
        stream = rows[rows[:, 0] == pos, 1]
        epochs = [stream[i : i + pool] for i in range(0, len(stream) - pool + 1, pool)]
        assert len(epochs) >= 5
        for e, chunk in enumerate(epochs):
            assert sorted(chunk.tolist()) == list(range(pool))
            expected = np.random.default_rng([11, zlib.crc32(name.encode()), e]).permutation(pool)
            assert np.array_equal(chunk, expected)
        assert len({tuple(c.tolist()) for c in epochs}) == len(epochs)
        assert s.completed_epochs[name] == len(stream) // pool
        assert s.epochs[name] == len(stream) / pool
    toks = s.read(rows)
    assert toks.shape == (200, L + 1) and toks.dtype == np.int64
    for (pos, seq), row in zip(rows, toks, strict=True):
        mm = domains[s.domain_names[pos]].tokens("train")
        assert np.array_equal(row, mm[seq * L : seq * L + L + 1])
        assert np.array_equal(row, pos * BASE + seq * L + np.arange(L + 1))
    assert np.array_equal(s.read(rows[::-3]), toks[::-3])  # any order, any subset (a rank's slice)


def test_read_uint16_domain_and_last_sequence(tmp_path):
    L = 8
    write_domain(tmp_path, "small", np.arange(5 * L + 1) % 60000, dtype="uint16")
    s = MixtureSampler(open_data_dir(tmp_path), {"small": 1}, L, seed=0)
    rows = s.next_indices(5)
    out = s.read(rows)
    assert sorted(rows[:, 1].tolist()) == [0, 1, 2, 3, 4]
    for (_, seq), row in zip(rows, out, strict=True):
        assert np.array_equal(row, seq * L + np.arange(L + 1))


def test_domain_order_does_not_depend_on_other_domains(tmp_path):
    d1 = make_dir(tmp_path / "x", {"a": 41, "b": 41})
    d2 = make_dir(tmp_path / "y", {"c": 81, "b": 21, "a": 41})
    r1 = MixtureSampler(d1, {"a": 1, "b": 1}, 4, seed=5).next_indices(60)
    r2 = MixtureSampler(d2, {"a": 0.2, "b": 0.3, "c": 0.5}, 4, seed=5).next_indices(200)
    a1, a2 = r1[r1[:, 0] == 0, 1], r2[r2[:, 0] == 2, 1]
    k = min(len(a1), len(a2))
    assert k >= 30 and np.array_equal(a1[:k], a2[:k])


# ------------------------------------------------------------------------------------------------ determinism, resume
def test_same_seed_same_stream_different_seed_different(tmp_path):
    domains = make_dir(tmp_path, {"a": 401, "b": 201})
    w = {"a": 0.5, "b": 0.5}
    r0 = MixtureSampler(domains, w, 4, seed=0).next_indices(300)
    assert np.array_equal(r0, MixtureSampler(domains, w, 4, seed=0).next_indices(300))
    r1 = MixtureSampler(domains, w, 4, seed=1).next_indices(300)
    assert np.array_equal(r0[:, 0], r1[:, 0])  # the interleaving is not random
    assert not np.array_equal(r0[:, 1], r1[:, 1])


def _resume_setup(tmp_path):
    domains = make_dir(tmp_path, {"a": 7 * 4 + 1, "b": 5 * 4 + 2, "old": 9 * 4 + 1, "sub": 50 * 4 + 1})
    kw = dict(
        weights={"a": 0.5, "b": 0.2, "sub": 0.3},
        seq_len=4,
        seed=9,
        subsets={"sub": SubsetConfig(tokens=6 * 4 + 3, mode="random")},
        replay=ReplayConfig(fraction=0.25, domains={"old": 1.0}),
    )
    return domains, kw


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_resume_yields_the_same_subsequent_batches(tmp_path, k):
    domains, kw = _resume_setup(tmp_path)
    ref = MixtureSampler(domains, **kw)
    for _ in range(k):
        ref.next_indices(6)
    state = json.loads(json.dumps(ref.state_dict()))
    epochs_before = ref.completed_epochs
    res = MixtureSampler(domains, **kw)
    res.load_state_dict(state)
    assert res.counts == ref.counts and res.draws == ref.draws == 6 * k
    for _ in range(10):
        assert np.array_equal(res.next_indices(6), ref.next_indices(6))
    assert res.state_dict() == ref.state_dict()
    assert all(ref.completed_epochs[n] > epochs_before[n] for n in ("a", "b", "old", "sub"))  # crossed epochs


def test_resume_exactly_at_an_epoch_boundary(tmp_path):
    domains = make_dir(tmp_path, {"a": 5 * 4 + 1})
    ref = MixtureSampler(domains, {"a": 1}, 4, seed=2)
    ref.next_indices(10)
    state = json.loads(json.dumps(ref.state_dict()))
    assert state["epochs"] == {"a": 2} and state["positions"] == {"a": 0}
    res = MixtureSampler(domains, {"a": 1}, 4, seed=2)
    res.load_state_dict(state)
    assert np.array_equal(res.next_indices(12), ref.next_indices(12))


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"weights": {"a": 0.6, "b": 0.1, "sub": 0.3}}, "weight of a 0.375 -> 0.45"),
        ({"seq_len": 2}, "data.seq_len 4 -> 2"),
        ({"subsets": {"sub": SubsetConfig(tokens=5 * 4, mode="random")}}, "subset of sub"),
        ({"subsets": {}}, "subset of sub"),
        ({"seed": 10}, "seed 9 -> 10"),
        ({"replay": ReplayConfig(fraction=0.5, domains={"old": 1.0})}, "data.replay.fraction 0.25 -> 0.5"),
        ("data", "data of a changed"),
    ],
)
def test_fingerprint_mismatch_is_refused_with_strict_and_accepted_without(tmp_path, change, needle):
    domains, kw = _resume_setup(tmp_path)
    s = MixtureSampler(domains, **kw)
    s.next_indices(13)
    state = json.loads(json.dumps(s.state_dict()))
    if change == "data":
        write_domain(tmp_path, "a", np.arange(7 * 4 + 1), fingerprint="re-prepared")
        domains = open_data_dir(tmp_path)
    else:
        kw = {**kw, **change}
    other = MixtureSampler(domains, **kw)
    assert other.fingerprint() != s.fingerprint()
    with pytest.raises(UserError, match="^resume would read different data: ") as e:
        other.load_state_dict(state)
    assert needle in str(e.value) and "\n" not in str(e.value)
    other.load_state_dict(state, strict=False)
    assert other.counts == s.counts and other.draws == 13
    # each domain continues its own stream where it left off (no sequence of the epoch is repeated)
    rows = other.next_indices(40)
    if "seq_len" not in change and "seed" not in change and "subsets" not in change:
        for name in ("a", "b"):
            pos = other.domain_names.index(name)
            got = rows[rows[:, 0] == pos, 1]
            pool = s.pool_size(name)
            perms = [
                np.random.default_rng([9, zlib.crc32(name.encode()), e]).permutation(pool) for e in range(30)
            ]
            start = s.counts[name]
            assert np.array_equal(got, np.concatenate(perms)[start : start + len(got)])


def test_non_strict_resume_restarts_the_interleaving_for_new_weights(tmp_path):
    domains = make_dir(tmp_path, {"a": 401, "b": 401})
    s = MixtureSampler(domains, {"a": 0.9, "b": 0.1}, 4, seed=0)
    s.next_indices(100)
    t = MixtureSampler(domains, {"a": 0.5, "b": 0.5}, 4, seed=0)
    t.load_state_dict(s.state_dict(), strict=False)
    rows = t.next_indices(40)
    assert np.bincount(rows[:, 0]).tolist() == [20, 20]  # no burst of b to "catch up" on the old prefix
    assert t.counts == {"a": 110, "b": 30}


def test_state_dict_is_plain_json_with_the_documented_fields(tmp_path):
    domains, kw = _resume_setup(tmp_path)
    s = MixtureSampler(domains, **kw)
    s.next_indices(20)
    st = s.state_dict()
    assert json.loads(json.dumps(st)) == st
    assert st["fingerprint"] == s.fingerprint() and len(st["fingerprint"]) == 64
    assert st["draws"] == 20 and sum(st["counts"].values()) == 20
    for n in ("a", "sub"):
        assert st["epochs"][n] * s.pool_size(n) + st["positions"][n] == st["counts"][n]
    with pytest.raises(UserError, match="sampler state"):
        s.load_state_dict({"draws": 3})


# ------------------------------------------------------------------------------------------------ subsets
@pytest.mark.parametrize("mode", ["first", "random"])
def test_subset_pool_is_repeated_exactly_e_times(tmp_path, mode):
    L = 4
    domains = make_dir(tmp_path, {"a": 40 * L + 1, "b": 41})
    sub = {"a": SubsetConfig(tokens=6 * L + L - 1, mode=mode)}  # 6 whole sequences
    s = MixtureSampler(domains, {"a": 1}, L, seed=4, subsets=sub)
    assert s.pool_size("a") == 6 and s.pool_size("b") == 10
    E = 5
    rows = s.next_indices(E * 6)
    pool = np.unique(rows[:, 1])
    assert len(pool) == 6 and np.bincount(rows[:, 1])[pool].tolist() == [E] * 6
    for e in range(E):  # every epoch is a permutation of the same pool
        assert np.array_equal(np.sort(rows[e * 6 : (e + 1) * 6, 1]), pool)
    if mode == "first":
        assert pool.tolist() == list(range(6))
    else:
        assert pool.tolist() != list(range(6)) and pool.max() < 40
        other = MixtureSampler(domains, {"a": 1}, L, seed=5, subsets=sub).next_indices(6)
        assert set(other[:, 1].tolist()) != set(pool.tolist())  # the choice is seeded
    toks = s.read(rows)
    assert np.array_equal(toks[:, 0], rows[:, 1] * L)


# ------------------------------------------------------------------------------------------------ replay
@pytest.mark.parametrize("fraction", [0.25, 0.1, 0.37])
def test_replay_share_holds_in_every_batch_and_cumulatively(tmp_path, fraction):
    domains = make_dir(tmp_path, {"n1": 81, "n2": 41, "o1": 41, "o2": 21, "unused": 41})
    rp = ReplayConfig(fraction=fraction, domains={"o1": 2.0, "o2": 1.0})
    f = Fraction(repr(fraction))
    for B in (8, 32, 100):
        s = MixtureSampler(domains, {"n1": 3, "n2": 1}, 4, seed=0, replay=rp)
        assert s.exact_weights["o1"] == f * Fraction(2, 3) and s.exact_weights["n2"] == (1 - f) / 4
        batches = [s.next_indices(B) for _ in range(60)]
        for b in batches:
            old = int(np.isin(b[:, 0], [2, 3]).sum())
            assert abs(old - f * B) <= 1, (B, old, float(f * B))
        col = np.concatenate(batches)[:, 0]
        is_old = np.isin(col, [2, 3])
        n = np.arange(1, len(col) + 1, dtype=object)
        cum = np.cumsum(is_old).astype(object)
        assert max(abs(c - f * k) for c, k in zip(cum, n, strict=True)) <= Fraction(1, 2)
        # within each group, the group's own counts follow its relative weights (two members: bound 1/2)
        assert max_deviation(col, [2, 3], [Fraction(2, 3), Fraction(1, 3)]) <= Fraction(1, 2)
        assert max_deviation(col, [0, 1], [Fraction(3, 4), Fraction(1, 4)]) <= Fraction(1, 2)
        # globally, per domain: (w_d / W_g) / 2 + Tijdeman(k_g) = 1/2 * rel + 1/2
        for pos, rel in ((0, Fraction(3, 4)), (1, Fraction(1, 4)), (2, Fraction(2, 3)), (3, Fraction(1, 3))):
            w = s.exact_weights[s.domain_names[pos]]
            c = np.cumsum(col == pos).astype(object)
            assert max(abs(w * k - ci) for ci, k in zip(c, n, strict=True)) <= rel / 2 + Fraction(1, 2)
        assert s.counts["unused"] == 0


def test_from_config_uniform_default_and_replay(tmp_path):
    domains = make_dir(tmp_path, {"a": 41, "b": 41, "c": 41})
    cfg = DataConfig(dir=str(tmp_path), seq_len=4, weights_from="ignored.json")
    s = MixtureSampler.from_config(cfg, domains, seed=0)
    assert s.exact_weights == {"a": Fraction(1, 3), "b": Fraction(1, 3), "c": Fraction(1, 3)}
    cfg = DataConfig(dir=str(tmp_path), seq_len=4, replay={"fraction": 0.2, "domains": {"c": 1}})
    s = MixtureSampler.from_config(cfg, domains, seed=0)
    assert s.weights == pytest.approx({"a": 0.4, "b": 0.4, "c": 0.2})
    cfg = DataConfig(
        dir=str(tmp_path), seq_len=4, weights={"b": 1}, subsets={"b": {"tokens": 8, "mode": "first"}}
    )
    s = MixtureSampler.from_config(cfg, domains, seed=0)
    assert s.weights["a"] == 0 and s.pool_size("b") == 2
    assert [r["domain"] for r in s.summary()] == ["b"]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"weights": {"foo": 1}}, "data.weights.foo: no such domain in data.dir (have: a, b, short)"),
        ({"subsets": {"foo": SubsetConfig(tokens=8)}}, "data.subsets.foo: no such domain"),
        (
            {"replay": ReplayConfig(fraction=0.1, domains={"foo": 1})},
            "data.replay.domains.foo: no such domain",
        ),
        ({"weights": {"a": 1, "short": 1}}, "data.weights.short: domain 'short' has 4 train tokens"),
        ({"replay": ReplayConfig(fraction=0.1, domains={"short": 1})}, "data.replay.domains.short:"),
        (
            {"replay": ReplayConfig(fraction=0.1, domains={"a": 1})},
            "data.replay.domains.a: also a new-data domain",
        ),
        ({"replay": ReplayConfig(fraction=0.1, domains={"b": 0})}, "data.replay.domains: at least one"),
        ({"subsets": {"a": SubsetConfig(tokens=3)}}, "data.subsets.a.tokens: 3 is less than one sequence"),
        (
            {"subsets": {"a": SubsetConfig(tokens=44)}},
            "data.subsets.a.tokens: 44 is more than domain 'a' has",
        ),
        ({"weights": {"a": -1, "b": 2}}, "data.weights.a: expected a number >= 0"),
        ({"weights": {"a": float("nan")}}, "data.weights.a: expected a number >= 0"),
        ({"weights": {"a": 0, "b": 0}}, "data.weights: at least one weight must be positive"),
        ({"seq_len": 0}, "data.seq_len: must be > 0"),
        ({"seed": -1}, "seed: must be >= 0"),
    ],
)
def test_bad_input_names_the_key(tmp_path, kw, message):
    domains = make_dir(tmp_path, {"a": 41, "b": 41, "short": 4})  # 'short' holds no sequence of 4 (+1)
    args = {"weights": {"a": 1}, "seq_len": 4, "seed": 0, **kw}
    with pytest.raises(UserError) as e:
        MixtureSampler(domains, **args)
    assert str(e.value).startswith(message.split(":")[0] + ":")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_mixed_tokenizers_are_refused(tmp_path):
    write_domain(tmp_path, "a", np.arange(41))
    write_domain(tmp_path, "b", np.arange(41), vocab_hash="other")
    with pytest.raises(UserError, match="^data.dir: "):
        MixtureSampler(open_data_dir(tmp_path), {"a": 1, "b": 1}, 4, seed=0)
    MixtureSampler(open_data_dir(tmp_path), {"a": 1, "b": 0}, 4, seed=0)  # an unused domain does not matter
