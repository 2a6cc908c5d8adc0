"""The built-in demo corpus: deterministic, bounded, disjoint domains with a measurable distribution shift."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from warmstart.cli import main
from warmstart.config import PrepareConfig, load
from warmstart.data import demo_corpus as dc
from warmstart.errors import UserError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus") / "demo"
    return out, dc.write_demo_corpus(out)


def _docs(out: Path, name: str) -> list[str]:
    lines = (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert all(set(r) == {"text"} for r in records)
    return [r["text"] for r in records]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _js_bits(p: Counter, q: Counter) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint support)."""
    np_, nq = sum(p.values()), sum(q.values())
    total = 0.0
    for k in p.keys() | q.keys():
        a, b = p.get(k, 0) / np_, q.get(k, 0) / nq
        m = (a + b) / 2
        total += (a * math.log2(a / m) if a else 0.0) + (b * math.log2(b / m) if b else 0.0)
    return total / 2


def _bigrams(docs: list[str]) -> Counter:
    c: Counter = Counter()
    for d in docs:
        c.update(d[i : i + 2] for i in range(len(d) - 1))
    return c


def _words(docs: list[str]) -> Counter:
    c: Counter = Counter()
    for d in docs:
        c.update(re.findall(r"[A-Za-z_]+|[0-9]+|[^\sA-Za-z_0-9]", d))
    return c


# ----------------------------------------------------------------------------------------------- contents
def test_domains_present_bounded_and_described(corpus):
    out, info = corpus
    assert list(info["domains"]) == list(dc.DOMAINS) and len(dc.DOMAINS) >= 3
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["format"] == dc.FORMAT
    total = 0
    for name, d in info["domains"].items():
        path = Path(d["file"])
        data = path.read_bytes()
        docs = _docs(out, name)
        assert d["docs"] == len(docs) > 20, name
        assert d["bytes"] == len(data) <= dc.BUDGET_BYTES[name], name
        assert meta["domains"][name] == {
            "docs": d["docs"],
            "bytes": d["bytes"],
            "file": path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        assert all(d.strip() and len(d.encode("utf-8")) <= dc.MAX_DOC_BYTES for d in docs), name
        total += len(data)
    # a few MB: prose is bounded by what CPython ships (~0.5 MB), code by its budget
    assert info["domains"]["prose"]["bytes"] > 300_000
    assert info["domains"]["code"]["bytes"] > 1_000_000
    assert info["domains"]["docstrings"]["bytes"] > 500_000
    assert 2_000_000 < total <= sum(dc.BUDGET_BYTES.values())


def test_domains_share_no_text(corpus):
    out, _ = corpus
    docs = {name: _docs(out, name) for name in dc.DOMAINS}
    for name, ds in docs.items():
        assert len(set(ds)) == len(ds), name  # no repeats, so none can land in both train and val
    long_lines = {
        n: {ln.strip() for d in ds for ln in d.splitlines() if len(ln.strip()) >= 60}
        for n, ds in docs.items()
    }
    names = list(docs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(docs[a]) & set(docs[b]), (a, b)
            shared = long_lines[a] & long_lines[b]
            assert len(shared) < 0.01 * min(len(long_lines[a]), len(long_lines[b])), (
                a,
                b,
                sorted(shared)[:3],
            )


def test_code_is_code_and_docstrings_are_prose(corpus):
    out, _ = corpus
    code = _docs(out, "code")
    assert sum(("def " in d or "class " in d or "import " in d) for d in code) > 0.9 * len(code)
    defs = sum(len(re.findall(r"^\s*(?:async def|def|class) ", d, re.M)) for d in code)
    docstrings_left = sum(
        len(re.findall(r"^\s*(?:async def|def|class) .*:\n\s*[rbuRBU]?('|\")", d, re.M)) for d in code
    )
    assert defs > 1000 and docstrings_left == 0
    docstrings = "\n".join(_docs(out, "docstrings"))
    assert docstrings.count("def ") < 0.001 * len(docstrings.split())


def test_a_real_distribution_shift(corpus):
    """Between-domain divergence clearly exceeds the noise floor of two halves of one domain.

    Each domain is split into alternate documents (halves A and B); "within" compares A with B of the same
    domain, "between" compares equal-sized halves of two domains, so both sides have the same sampling noise.
    Measured on CPython 3.10-3.13: the closest pair (prose, docstrings) is 2.7-4.3x the noise in character
    bigrams and 2.2-2.6x in words; code is ~7x away from both.
    """
    out, _ = corpus
    docs = {name: _docs(out, name) for name in dc.DOMAINS}
    for featurize, factor in ((_bigrams, 2.0), (_words, 1.5)):
        halves = {n: (featurize(ds[0::2]), featurize(ds[1::2])) for n, ds in docs.items()}
        within = {n: _js_bits(a, b) for n, (a, b) in halves.items()}
        between = {
            (a, b): min(_js_bits(halves[a][h], halves[b][h]) for h in (0, 1))
            for i, a in enumerate(docs)
            for b in list(docs)[i + 1 :]
        }
        print(featurize.__name__, "within", within, "between", between)
        assert min(between.values()) > factor * max(within.values()), (featurize.__name__, within, between)


# ----------------------------------------------------------------------------------------------- output
def test_cli_writes_identical_bytes_and_a_usable_recipe(corpus, tmp_path, monkeypatch, capsys):
    ref, _ = corpus
    monkeypatch.chdir(tmp_path)
    assert main(["corpus", "demo", "demo"]) == 0
    printed = capsys.readouterr().out
    for name in dc.DOMAINS:
        assert name in printed and f"demo/{name}.jsonl" in printed
    assert "prepare recipe: demo/prepare.yaml" in printed
    again = _snapshot(Path("demo"))
    first = _snapshot(ref)
    assert (
        sorted(again)
        == sorted(first)
        == ["code.jsonl", "corpus.json", "docstrings.jsonl", "prepare.yaml", "prose.jsonl"]
    )
    for name in again:
        if name != "prepare.yaml":  # the recipe names the directory it was written to
            assert again[name] == first[name], name

    cfg = load(PrepareConfig, "demo/prepare.yaml")
    assert cfg.tokenizer == "demo/tokenizer" and cfg.out == "demo/shards" and cfg.val_docs == dc.VAL_DOCS
    assert list(cfg.domains) == list(dc.DOMAINS)
    for name, sources in cfg.domains.items():
        assert [(s.path, s.format) for s in sources] == [(f"demo/{name}.jsonl", "jsonl")]
        assert Path(sources[0].path).is_file()


@pytest.fixture()
def small_budget(monkeypatch):
    """Tiny budgets: the overwrite logic does not need megabytes."""
    monkeypatch.setattr(dc, "BUDGET_BYTES", {n: 60_000 for n in dc.DOMAINS})


def test_existing_output_refused_unless_overwrite(tmp_path, small_budget, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    dc.write_demo_corpus(out)  # an existing empty directory is fine
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    with pytest.raises(UserError, match="--overwrite"):
        dc.write_demo_corpus(out)
    assert main(["corpus", "demo", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    dc.write_demo_corpus(out, overwrite=True)  # replaced as a whole
    assert not (out / "tokenizer").exists()
    assert {p: b for p, b in before.items() if p.parent == out} == {p: p.read_bytes() for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"]  # no temp directories left behind


def test_overwrite_only_replaces_a_demo_corpus(tmp_path, small_budget):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo corpus"):
        dc.write_demo_corpus(precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        dc.write_demo_corpus(a_file, overwrite=True)
    assert a_file.read_text() == "x"


# ----------------------------------------------------------------------------------------------- pieces
def test_docstrings_removed_from_code_keeps_valid_python():
    src = (
        '"""Module doc."""\n'
        "import os\n\n\n"
        "class A:\n"
        '    """Only a docstring."""\n\n\n'
        "@dec\n"
        "def f(x):\n"
        '    """Doc of f.\n\n    Two paragraphs.\n    """\n'
        "    # a comment stays\n"
        '    s = """not a docstring"""\n'
        "    def g():\n"
        "        'inner doc'\n"
        "        return 1\n"
        '    "a string statement later is not a docstring"\n'
        "    return s\n\n\n"
        'def h(): "same-line docstring is left alone"\n'
    )
    (doc,) = dc.code_documents(src, ast.parse(src))
    ast.parse(doc)
    for gone in ("Module doc", "Only a docstring", "Doc of f", "Two paragraphs", "inner doc"):
        assert gone not in doc
    for kept in (
        "# a comment stays",
        '"""not a docstring"""',
        "a string statement later",
        "same-line docstring",
    ):
        assert kept in doc
    assert "class A:\n    pass\n" in doc

    (docs,) = [dc.docstring_documents(ast.parse(src))]
    assert docs == [
        "Module doc.\n\nOnly a docstring.\n\nDoc of f.\n\nTwo paragraphs.\n\ninner doc\n\nsame-line docstring is left alone"
    ]


def test_long_code_is_split_at_definitions():
    src = "".join(f"def f{i}(x):\n" + "    x += 1\n" * 40 + "    return x\n\n\n" for i in range(60))
    docs = dc.code_documents(src, ast.parse(src), limit=2_000)
    assert len(docs) > 10
    assert all(len(d.encode()) <= 2_000 and d.startswith("def f") for d in docs)
    assert "".join(docs).replace("\n", "") == src.replace("\n", "")


def test_pack_respects_the_limit_and_keeps_the_text():
    text = "para one\n\n" + "x" * 50 + "\n\n" + "é" * 40 + "\n" + "short"
    docs = dc.split_paragraphs(text, limit=30)
    assert all(len(d.encode()) <= 30 for d in docs)
    assert "".join(docs).replace("\n", "") == text.replace("\n", "")
