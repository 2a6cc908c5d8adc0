"""Subset mode `resample` (a fresh random subset every epoch) and the pretraining-like mixture built on it."""

from __future__ import annotations

import json
import zlib
from fractions import Fraction

import numpy as np
import pytest
from test_sampler import make_dir

from warmstart.config import SubsetConfig
from warmstart.data.sampler import MixtureSampler
from warmstart.errors import UserError
from warmstart.recipes.continual import pretraining_like_weights

L = 4


def test_each_epoch_is_a_fresh_seeded_subset(tmp_path):
    domains = make_dir(tmp_path, {"a": 40 * L + 1, "b": 41})
    sub = {"a": SubsetConfig(tokens=6 * L, mode="resample")}
    s = MixtureSampler(domains, {"a": 1}, L, seed=4, subsets=sub)
    assert s.pool_size("a") == 6
    E = 5
    rows = s.next_indices(E * 6)[:, 1]
    for e in range(E):
        expected = np.random.default_rng([4, zlib.crc32(b"a"), e]).permutation(40)[:6]
        assert rows[e * 6 : (e + 1) * 6].tolist() == expected.tolist()
        assert len(set(rows[e * 6 : (e + 1) * 6].tolist())) == 6  # no sequence twice within an epoch
    epochs = [frozenset(rows[e * 6 : (e + 1) * 6].tolist()) for e in range(E)]
    assert len(set(epochs)) == E  # a different subset each epoch
    assert s.completed_epochs["a"] == E
    more = s.next_indices(3)
    assert np.array_equal(s.read(more)[:, 0], more[:, 1] * L)  # reads the sequences it names


def test_resample_differs_from_random_and_resumes_exactly(tmp_path):
    domains = make_dir(tmp_path, {"new": 30 * L + 1, "gen": 40 * L + 1})
    kw = dict(weights={"new": 0.75, "gen": 0.25}, seq_len=L, seed=1)
    res = MixtureSampler(domains, subsets={"gen": SubsetConfig(tokens=5 * L, mode="resample")}, **kw)
    fixed = MixtureSampler(domains, subsets={"gen": SubsetConfig(tokens=5 * L, mode="random")}, **kw)
    assert res.fingerprint() != fixed.fingerprint()
    for k in (0, 2, 5, 9):  # mid-epoch and across epoch boundaries of `gen` (5 sequences per epoch)
        ref = MixtureSampler(domains, subsets={"gen": SubsetConfig(tokens=5 * L, mode="resample")}, **kw)
        for _ in range(k):
            ref.next_indices(8)
        other = MixtureSampler(domains, subsets={"gen": SubsetConfig(tokens=5 * L, mode="resample")}, **kw)
        other.load_state_dict(json.loads(json.dumps(ref.state_dict())))
        for _ in range(6):
            assert np.array_equal(other.next_indices(8), ref.next_indices(8))
        assert other.state_dict() == ref.state_dict()
    gen_pos = res.domain_names.index("gen")
    rows = res.next_indices(8 * 10)
    gen = rows[rows[:, 0] == gen_pos, 1]
    assert len(gen) == 20 and len(set(gen.tolist())) > 5  # 4 epochs of 5, not the same 5 again


def test_pretraining_like_weights_keep_old_proportions_exactly():
    w = pretraining_like_weights({"web": 0.6, "books": 0.3, "wiki": 0.1}, "medical", 0.82)
    assert w["medical"] == 0.82
    rest = 1 - Fraction("0.82")
    assert w["web"] == float(rest * Fraction(6, 10)) and w["books"] == float(rest * Fraction(3, 10))
    assert w["books"] / w["wiki"] == pytest.approx(3.0)
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(UserError, match="new_share"):
        pretraining_like_weights({"web": 1.0}, "medical", 1.0)
    with pytest.raises(UserError, match="general domain"):
        pretraining_like_weights({"medical": 1.0}, "medical", 0.5)


def test_pretraining_like_recipe_trains_with_exact_shares_and_fresh_epochs(data_dir, tokenizer_dir, tmp_path):
    """Through the real loop: 75% new / 25% general, the general part a fresh 4-sequence subset each epoch."""
    from train_helpers import tiny_recipe_tree

    from warmstart.recipes.continual import pretraining_like_recipe
    from warmstart.train.loop import train

    base = tiny_recipe_tree(data_dir, tokenizer_dir, tmp_path, "ptmix")
    recipe = pretraining_like_recipe(base, {"prose": 1.0}, "code", 0.75, general_tokens_per_epoch=4 * 32)
    assert recipe.data.weights == {"code": 0.75, "prose": 0.25}
    assert recipe.data.subsets["prose"].mode == "resample" and recipe.data.subsets["prose"].tokens == 128
    train(recipe)
    (ck,) = sorted((recipe.run_dir / "checkpoints").iterdir())
    state = json.loads((ck / "state.json").read_text())["sampler"]
    assert state["counts"] == {"code": 48, "prose": 16}  # 8 steps x 8 sequences, exactly 3:1
    assert state["epochs"]["prose"] == 4  # 16 general sequences = 4 epochs of 4
