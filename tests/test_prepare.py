"""`prepare`: exact tokens for every format, worker-count independence, the validation split, rebuild rules,
and one-line CLI errors (exit code 2) for every bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from warmstart.cli import main
from warmstart.data import prepare
from warmstart.data.shards import DomainData, dtype_for_vocab, open_data_dir, read_manifest
from warmstart.data.splits import val_count, val_indices
from warmstart.data.tokenizer import load_tokenizer
from warmstart.errors import UserError

TEXTS = [
    f"Document {i}: "
    + ["The quick brown fox. ", "def f(x):\n    return x\n", "Ünïcödé 🙂 漢字 ", ""][i % 4] * (i % 5)
    for i in range(23)
] + [""]  # an empty document is just its EOS


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


def expected(tok, texts) -> list[list[int]]:
    """The definition for a tokenizer with no template (GPT-2 style): each document's ids, special-token strings
    as text, then EOS."""
    return [tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [tok.eos_token_id] for t in texts]


def write_jsonl(path: Path, texts, field="text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def run(tokenizer_dir, out, domains, **kw):
    cfg = {"tokenizer": str(tokenizer_dir), "out": str(out), "domains": domains, **kw}
    return prepare(cfg, progress=False)


def docs_of(d: DomainData, split: str) -> list[list[int]]:
    return [x.tolist() for x in d.documents(split)]


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 of its bytes (or 'dir'), to prove a failed run changed nothing."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


# ----------------------------------------------------------------------------------------------- formats
def make_source(kind: str, root: Path, texts) -> tuple[dict, list[str]]:
    """A source of `kind` holding `texts`; returns its recipe entry and the documents in reading order."""
    if kind == "jsonl":
        return {"path": str(write_jsonl(root / "d.jsonl", texts))}, texts
    if kind == "jsonl.gz":
        p = root / "d.jsonl.gz"
        p.write_bytes(gzip.compress("".join(json.dumps({"t": t}) + "\n" for t in texts).encode()))
        return {"path": str(p), "text_field": "t"}, texts
    if kind == "jsonl.zst":
        import zstandard

        p = root / "d.jsonl.zst"
        p.write_bytes(
            zstandard.ZstdCompressor().compress(write_jsonl(root / "tmp.jsonl", texts).read_bytes())
        )
        (root / "tmp.jsonl").unlink()
        return {"path": str(p)}, texts
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = root / "d.parquet"
        pq.write_table(pa.table({"content": texts}), p, row_group_size=5)
        return {"path": str(p), "text_field": "content"}, texts
    if kind == "text-file":
        p = root / "essay.txt"
        p.write_text(texts[1], encoding="utf-8")
        return {"path": str(p)}, [texts[1]]
    if kind == "text-dir":
        d = root / "docs"
        d.mkdir()
        names = [f"{i:03d}.txt" for i in range(len(texts))]
        for name, t in zip(names, texts, strict=True):
            (d / name).write_text(t, encoding="utf-8")
        return {"path": str(d), "glob": "*.txt"}, texts
    if kind == "hf-disk":
        datasets = pytest.importorskip("datasets")
        d = root / "hfds"
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})}).save_to_disk(str(d))
        return {"path": str(d)}, texts
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "text-file", "text-dir", "hf-disk"]
)
def test_tokens_equal_direct_tokenization(tmp_path, tokenizer_dir, tok, kind):
    src, docs = make_source(kind, tmp_path, TEXTS)
    result = run(tokenizer_dir, tmp_path / "out", {"web": [src]}, val_docs=0)
    d = open_data_dir(tmp_path / "out")["web"]
    exp = expected(tok, docs)
    assert d.tokens("train").tolist() == [t for doc in exp for t in doc]
    assert docs_of(d, "train") == exp and d.n_docs("val") == 0
    assert result.domains[0].tokens == sum(map(len, exp)) and result.domains[0].status == "built"


def test_workers_output_is_byte_identical(tmp_path, tokenizer_dir):
    src = {"path": str(write_jsonl(tmp_path / "d.jsonl", TEXTS * 3))}
    other = {"path": str(write_jsonl(tmp_path / "e.jsonl", TEXTS[:7]))}
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        run(tokenizer_dir, out, {"a": [src, other], "b": [other]}, val_docs=5, workers=workers, batch_docs=4)
        digests.append(tree_digest(out))
    assert digests[0] == digests[1]
    assert {"a/train.bin", "a/val.bin", "a/val.docs.npy", "b/index.json", "manifest.json"} <= set(digests[0])


# ----------------------------------------------------------------------------------------------- validation split
def test_val_split_exact_disjoint_seeded(tmp_path, tokenizer_dir, tok):
    texts = [f"doc number {i} " * (1 + i % 3) for i in range(50)]
    src = {"path": str(write_jsonl(tmp_path / "d.jsonl", texts))}
    exp = expected(tok, texts)

    def split(out, **kw):
        run(tokenizer_dir, out, {"web": [src]}, **kw)
        d = open_data_dir(out)["web"]
        return docs_of(d, "train"), docs_of(d, "val")

    train, val = split(tmp_path / "o1", val_docs=7, seed=3)
    assert len(val) == 7 and len(train) == 43
    assert Counter(map(tuple, train + val)) == Counter(map(tuple, exp))  # disjoint and complete
    picked = set(val_indices(50, 7, 3, "web").tolist())
    assert val == [e for i, e in enumerate(exp) if i in picked]  # input order within each split
    assert train == [e for i, e in enumerate(exp) if i not in picked]

    assert split(tmp_path / "o2", val_docs=7, seed=3) == (train, val)
    assert split(tmp_path / "o3", val_docs=7, seed=4)[1] != val
    assert len(split(tmp_path / "o4", val_fraction=0.1)[1]) == 5
    assert len(split(tmp_path / "o5")[1]) == 1  # default: 1% but at least one document


def test_val_count_rules():
    assert val_count(1000, None, None) == 10
    assert val_count(50, None, None) == 1 and val_count(1, None, None) == 0
    assert val_count(25, None, 0.1) == 3  # 2.5 rounds half up
    assert val_count(10, None, 0.0) == 0
    assert val_count(2, None, 0.9) == 1  # a fraction never takes the last training document
    assert val_count(10, 4, None) == 4
    with pytest.raises(UserError, match="val_docs 10: domain 'x' has only 10 documents"):
        val_count(10, 10, None, "x")


def test_domains_draw_different_val_sets():
    assert val_indices(1000, 10, 0, "a").tolist() != val_indices(1000, 10, 0, "b").tolist()


# ----------------------------------------------------------------------------------------------- dtype
def test_dtype_for_vocab():
    assert dtype_for_vocab(65536) == "uint16" and dtype_for_vocab(65537) == "uint32"
    assert dtype_for_vocab(512, "uint32") == "uint32"
    with pytest.raises(UserError, match="uint16 cannot hold a vocabulary of 70000"):
        dtype_for_vocab(70000, "uint16")


@pytest.fixture(scope="module")
def big_tokenizer_dir(tmp_path_factory):
    """A 70,002-token word-level tokenizer: ids past 65535 without training a large BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70000)} | {"[UNK]": 70000, "<eos>": 70001}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = tmp_path_factory.mktemp("bigtok")
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]").save_pretrained(
        out
    )
    return out


def test_large_vocab_gets_uint32(tmp_path, big_tokenizer_dir):
    src = {"path": str(write_jsonl(tmp_path / "d.jsonl", ["w69999 w1 w65536", "w3 nope"]))}
    result = run(big_tokenizer_dir, tmp_path / "out", {"w": [src]}, val_docs=0)
    d = open_data_dir(tmp_path / "out")["w"]
    assert result.dtype == "uint32" and d.dtype == np.uint32
    assert d.tokens("train").tolist() == [69999, 1, 65536, 70001, 3, 70000, 70001]


# ----------------------------------------------------------------------------------------------- rebuilds
def test_second_run_does_no_work(tmp_path, tokenizer_dir):
    src = {"path": str(write_jsonl(tmp_path / "d.jsonl", TEXTS))}
    out = tmp_path / "out"
    first = run(tokenizer_dir, out, {"web": [src]})
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    second = run(tokenizer_dir, out, {"web": [src]}, workers=2, batch_docs=3)  # neither changes the output
    assert [d.status for d in first.domains] == ["built"] and second.up_to_date
    assert second.domains[0].status == "up to date" and second.domains[0].tokens == first.domains[0].tokens
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    assert "up to date" in second.summary() and str(out) in second.summary()


def test_adding_a_domain_keeps_the_others(tmp_path, tokenizer_dir):
    a = {"path": str(write_jsonl(tmp_path / "a.jsonl", TEXTS))}
    b = {"path": str(write_jsonl(tmp_path / "b.jsonl", TEXTS[:5]))}
    out = tmp_path / "out"
    run(tokenizer_dir, out, {"a": [a]})
    bin_a = (out / "a" / "train.bin").stat().st_mtime_ns
    result = run(tokenizer_dir, out, {"b": [b], "a": [a]})
    assert [(d.name, d.status) for d in result.domains] == [("b", "built"), ("a", "up to date")]
    assert read_manifest(out)["domains"] == ["b", "a"]
    assert (out / "a" / "train.bin").stat().st_mtime_ns == bin_a


def test_changed_input_refused_then_rebuilt_with_overwrite(tmp_path, tokenizer_dir, tok):
    path = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    keep = write_jsonl(tmp_path / "k.jsonl", TEXTS[:4])
    domains = {"web": [{"path": str(path)}], "keep": [{"path": str(keep)}]}
    out = tmp_path / "out"
    run(tokenizer_dir, out, domains, val_docs=0)
    before = tree_digest(out)
    write_jsonl(path, TEXTS + ["one more document"])
    with pytest.raises(
        UserError, match=r"out/web: domain 'web' exists with different inputs; use --overwrite"
    ):
        run(tokenizer_dir, out, domains, val_docs=0)
    with pytest.raises(UserError, match="different inputs"):  # a changed setting counts as a changed input
        run(tokenizer_dir, out, {"keep": domains["keep"]}, val_docs=1)
    assert tree_digest(out) == before
    result = run(tokenizer_dir, out, domains, val_docs=0, overwrite=True)
    assert [d.status for d in result.domains] == ["rebuilt", "up to date"]
    assert docs_of(open_data_dir(out)["web"], "train") == expected(tok, TEXTS + ["one more document"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_failure_in_a_later_domain_changes_nothing(tmp_path, tokenizer_dir):
    good = write_jsonl(tmp_path / "g.jsonl", TEXTS)
    bad = write_jsonl(tmp_path / "b.jsonl", TEXTS[:3])
    out = tmp_path / "out"
    run(tokenizer_dir, out, {"good": [{"path": str(good)}], "bad": [{"path": str(bad)}]})
    before = tree_digest(out)
    write_jsonl(good, TEXTS[:10])
    bad.write_text(bad.read_text() + "{broken\n")
    with pytest.raises(UserError, match=r"b\.jsonl:4: not valid JSON"):
        run(tokenizer_dir, out, {"good": [{"path": str(good)}], "bad": [{"path": str(bad)}]}, overwrite=True)
    assert tree_digest(out) == before


def test_out_dir_that_is_not_ours_is_refused(tmp_path, tokenizer_dir):
    src = {"path": str(write_jsonl(tmp_path / "d.jsonl", TEXTS))}
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not a warmstart data directory"):
        run(tokenizer_dir, out, {"web": [src]}, overwrite=True)
    assert tree_digest(out) == {"thesis.tex": hashlib.sha256(b"precious").hexdigest()}


def test_recipe_path_and_keyword_overrides(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    recipe = tmp_path / "prep.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "tokenizer": str(tokenizer_dir),
                "out": str(tmp_path / "o"),
                "domains": {"w": [{"path": str(src)}]},
            }
        )
    )
    result = prepare(recipe, progress=False, val_docs=3, workers=2)
    assert result.domains[0].val_docs == 3
    with pytest.raises(UserError, match="workers: Input should be greater than or equal to 1"):
        prepare(recipe, progress=False, workers=0)


# ----------------------------------------------------------------------------------------------- CLI errors
def cli(tmp_path, capfd, recipe: dict, *flags: str) -> tuple[int, str, str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    capfd.readouterr()
    rc = main(["prepare", str(path), "--quiet", *flags])
    out, err = capfd.readouterr()
    return rc, out, err


def recipe(tokenizer_dir, tmp_path, sources, **kw) -> dict:
    return {"tokenizer": str(tokenizer_dir), "out": str(tmp_path / "data"), "domains": {"web": sources}, **kw}


def assert_one_line_error(rc: int, err: str, *parts: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("warmstart: error: ")
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_cli_missing_file(tmp_path, tokenizer_dir, capfd):
    rc, _, err = cli(
        tmp_path, capfd, recipe(tokenizer_dir, tmp_path, [{"path": str(tmp_path / "gone.jsonl")}])
    )
    assert_one_line_error(rc, err, "gone.jsonl: no such file or directory")


def test_cli_bad_jsonl_line(tmp_path, tokenizer_dir, capfd):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"\n{"text": "c"}\n')
    rc, _, err = cli(tmp_path, capfd, recipe(tokenizer_dir, tmp_path, [{"path": str(p)}]))
    assert_one_line_error(rc, err, f"{p}:2:", "not valid JSON", "--skip-bad-records")


def test_cli_missing_text_field(tmp_path, tokenizer_dir, capfd):
    p = write_jsonl(tmp_path / "d.jsonl", ["a", "b"], field="body")
    rc, _, err = cli(tmp_path, capfd, recipe(tokenizer_dir, tmp_path, [{"path": str(p)}]))
    assert_one_line_error(rc, err, f"{p}:1:", "no 'text' key", "body", "text_field")


def test_cli_skip_bad_records_skips_and_counts(tmp_path, tokenizer_dir, tok, capfd):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{oops\n{"body": 1}\n{"text": "b"}\n')
    rc, out, err = cli(
        tmp_path, capfd, recipe(tokenizer_dir, tmp_path, [{"path": str(p)}]), "--skip-bad-records"
    )
    assert rc == 0, err
    d = open_data_dir(tmp_path / "data")["web"]
    assert d.index["bad_records"] == 2 and d.n_docs("train") + d.n_docs("val") == 2
    assert sorted(docs_of(d, "train") + docs_of(d, "val")) == sorted(expected(tok, ["a", "b"]))
    assert "web" in out and str(tmp_path / "data") in out


def test_cli_empty_domain(tmp_path, tokenizer_dir, capfd):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    rc, _, err = cli(tmp_path, capfd, recipe(tokenizer_dir, tmp_path, [{"path": str(p)}]))
    assert_one_line_error(rc, err, "domain 'web'", "no documents", "empty.jsonl")
    assert not (tmp_path / "data").exists()
    p.write_text('{"oops": 1}\n')
    rc, _, err = cli(
        tmp_path, capfd, recipe(tokenizer_dir, tmp_path, [{"path": str(p)}]), "--skip-bad-records"
    )
    assert_one_line_error(rc, err, "domain 'web'", "all 1 records were bad")


def test_cli_unloadable_tokenizer(tmp_path, capfd):
    bad = tmp_path / "tok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not a tokenizer")
    (bad / "tokenizer_config.json").write_text("{}")
    p = write_jsonl(tmp_path / "d.jsonl", ["a"])
    rc, _, err = cli(tmp_path, capfd, recipe(bad, tmp_path, [{"path": str(p)}]))
    assert_one_line_error(rc, err, f"{bad}: cannot load tokenizer")


def test_cli_vocab_too_large_for_dtype(tmp_path, big_tokenizer_dir, capfd):
    p = write_jsonl(tmp_path / "d.jsonl", ["w1 w2"])
    rc, _, err = cli(tmp_path, capfd, recipe(big_tokenizer_dir, tmp_path, [{"path": str(p)}], dtype="uint16"))
    assert_one_line_error(
        rc, err, str(big_tokenizer_dir), "uint16 cannot hold a vocabulary of 70002", "uint32"
    )


def test_cli_out_dir_with_different_inputs(tmp_path, tokenizer_dir, capfd):
    p = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    r = recipe(tokenizer_dir, tmp_path, [{"path": str(p)}])
    assert cli(tmp_path, capfd, r)[0] == 0
    write_jsonl(p, TEXTS[:-1])
    rc, _, err = cli(tmp_path, capfd, r)
    assert_one_line_error(
        rc, err, str(tmp_path / "data" / "web"), "domain 'web'", "different inputs", "--overwrite"
    )
    rc, out, err = cli(tmp_path, capfd, r, "--overwrite")
    assert rc == 0 and "rebuilt" in out, err


def test_damaged_output_is_repaired_and_missing_manifest_recovered(tmp_path, tokenizer_dir):
    src = {"path": str(write_jsonl(tmp_path / "d.jsonl", TEXTS))}
    out = tmp_path / "out"
    run(tokenizer_dir, out, {"web": [src]})
    good = tree_digest(out)
    with open(out / "web" / "train.bin", "r+b") as f:  # e.g. a disk that filled up under an old version
        f.truncate(10)
    (out / "manifest.json").unlink()  # as if stopped between swapping the domain in and writing the manifest
    result = run(tokenizer_dir, out, {"web": [src]})
    assert result.domains[0].status == "repaired"
    assert tree_digest(out) == good


def test_workers_read_ahead_is_bounded(tokenizer_dir, tok):
    from warmstart.data.encode import INFLIGHT_PER_WORKER, _Encoder

    pulled = 0

    def chunks():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield [f"chunk {i}"]

    from warmstart.data.doc_format import resolve_format

    with _Encoder(tok, resolve_format(tok), np.dtype("uint16"), workers=2) as enc:
        results = enc.map(chunks())
        first = next(results)
        assert pulled <= INFLIGHT_PER_WORKER * 2 + 1
        assert first[1].tolist() == expected(tok, ["chunk 0"])[0]
        results.close()
