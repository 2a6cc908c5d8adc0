"""The Kneser-Ney n-gram scorer: a proper distribution, equal to a direct dictionary implementation, and usable
as `warmstart quality score --ngram-reference`."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from warmstart.cli import main
from warmstart.data.quality import read_ranking
from warmstart.data.shards import open_data_dir
from warmstart.errors import UserError
from warmstart.models.ngram import NgramLM

V, EOS = 12, 0


def _stream(seed: int, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a skewed, structured token stream: documents of "sentences" that favour a few bigrams
    out = []
    for _ in range(n // 20):
        doc = [int(rng.choice([1, 2, 3, 4])) for _ in range(3)] + list(rng.integers(1, V, 15)) + [5, 6]
        out += doc + [EOS]
    return np.array(out, dtype=np.int64)


class DirectKN:
    """The formula in warmstart.models.ngram, one n-gram at a time with dictionaries."""

    def __init__(self, tokens, order, vocab, eos):
        s = [eos] * (order - 1) + list(map(int, tokens))
        self.order, self.vocab = order, vocab
        self.counts = {order: Counter(tuple(s[i : i + order]) for i in range(len(s) - order + 1))}
        for k in range(order - 1, 0, -1):
            self.counts[k] = Counter(g[1:] for g in self.counts[k + 1])  # distinct left extensions
        self.d = {}
        for k, c in self.counts.items():
            n1 = sum(1 for v in c.values() if v == 1)
            n2 = sum(1 for v in c.values() if v == 2)
            self.d[k] = min(max(n1 / (n1 + 2 * n2) if n1 + n2 else 0.75, 0.05), 0.95)
        self.hist = {k: defaultdict(lambda: [0, 0]) for k in range(2, order + 1)}
        for k in range(2, order + 1):
            for g, v in self.counts[k].items():
                self.hist[k][g[:-1]][0] += v
                self.hist[k][g[:-1]][1] += 1

    def prob(self, history, w):
        c1 = self.counts[1]
        total = sum(c1.values())
        p = max(c1.get((w,), 0) - self.d[1], 0) / total + self.d[1] * len(c1) / total / self.vocab
        for k in range(2, self.order + 1):
            h = tuple(history[len(history) - (k - 1) :])
            denom, types = self.hist[k].get(h, (0, 0))
            if denom:
                p = max(self.counts[k].get((*h, w), 0) - self.d[k], 0) / denom + self.d[k] * types / denom * p
        return p


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_scores_equal_a_direct_dictionary_implementation(order):
    ref = _stream(0)
    lm = NgramLM.fit(ref, order, V, EOS)
    direct = DirectKN(ref, order, V, EOS)
    docs = [_stream(1, 60)[:23], np.array([7, 7, 7, 11, EOS]), np.array([EOS])]
    rows = lm.doc_nll(docs)
    for doc, (nll, n) in zip(docs, rows, strict=True):
        ctx = [EOS] * (order - 1)
        expected = 0.0
        for t in doc:
            expected -= math.log(direct.prob(ctx, int(t)))
            ctx = [*ctx, int(t)]
        assert n == len(doc)
        assert nll == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_conditional_distribution_sums_to_one(order):
    lm = NgramLM.fit(_stream(2), order, V, EOS)
    histories = [[1, 2], [5, 6], [EOS, EOS], [11, 3], [9, 9]]  # seen and unseen
    for h in histories:
        h = h[len(h) - (order - 1) :] if order > 1 else []
        stream = np.array([*h, 0] * V, dtype=np.int64).reshape(V, -1)
        stream[:, -1] = np.arange(V)
        flat = stream.reshape(-1)
        positions = np.arange(V) * (order) + order - 1
        assert np.exp(lm.log_probs(flat, positions)).sum() == pytest.approx(1.0, abs=1e-12)


def test_order_too_high_for_the_vocabulary():
    with pytest.raises(UserError, match="64-bit key"):
        NgramLM.fit(np.arange(10), 5, 50_257, 0)


def test_cli_ngram_ranking_prefers_text_like_the_reference(data_dir, tmp_path, capsys):
    """Scoring prose under a model of code ranks it worse than scoring code itself: a cross-domain check that
    the score reflects the reference distribution, through the same ranking files `select` reads."""
    out = tmp_path / "r"
    assert main(["quality", "score", "--data", str(data_dir), "--domain", "code", "--ngram-reference", "code",
                 "--out", str(out), "--quiet"]) == 0
    _, scores, ranking = read_ranking(out)
    dom = open_data_dir(data_dir)["code"]
    docs = [np.asarray(d) for d in dom.documents("train")]
    assert len(scores) == len(docs) and list(ranking) == list(np.argsort(scores, kind="stable"))
    lm = NgramLM.fit(np.asarray(dom.tokens("train")), 3, dom.tokenizer["vocab_size"], dom.tokenizer["eos_id"])
    rows = lm.doc_nll(docs)
    assert np.allclose(scores, rows[:, 0] / rows[:, 1])

    cross = tmp_path / "x"
    main(["quality", "score", "--data", str(data_dir), "--domain", "prose", "--ngram-reference", "code",
          "--out", str(cross), "--quiet", "--split", "val"])
    own = tmp_path / "o"
    main(["quality", "score", "--data", str(data_dir), "--domain", "code", "--ngram-reference", "code",
          "--out", str(own), "--quiet", "--split", "val"])
    # held-out code reads as far likelier than held-out prose under a model of code
    assert np.median(read_ranking(own)[1]) < np.median(read_ranking(cross)[1]) - 0.5

    capsys.readouterr()
    assert main(["quality", "score", "--data", str(data_dir), "--domain", "code", "--out", str(tmp_path / "n"),
                 "--quiet"]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    assert main(["quality", "score", "--data", str(data_dir), "--domain", "code", "--ngram-reference", "nope",
                 "--out", str(tmp_path / "n"), "--quiet"]) == 2
    assert "no domain nope" in capsys.readouterr().err


def test_bad_order_leaves_no_ranking_behind(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["quality", "score", "--data", str(data_dir), "--domain", "code", "--ngram-reference", "code",
                 "--order", "0", "--out", str(out), "--quiet"]) == 2
    assert "--order: must be >= 1" in capsys.readouterr().err and not out.exists()
