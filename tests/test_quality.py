"""Quality ranking by per-document perplexity under a real HF model, and the selected subset as a new domain."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from warmstart.config import ModelConfig
from warmstart.data.quality import read_ranking, select_top_tokens
from warmstart.data.shards import open_data_dir
from warmstart.errors import UserError
from warmstart.recipes.quality import score_domain


@pytest.fixture(scope="module")
def ref_model(tmp_path_factory, tokenizer_dir):
    """A real HF causal LM (llama-tiny, seeded init) saved as a plain checkpoint; it shares the data's tokenizer."""
    from warmstart.models.build import build_model, save_hf

    out = tmp_path_factory.mktemp("ref") / "model"
    loaded = build_model(ModelConfig(preset="llama-tiny", tokenizer=str(tokenizer_dir)), None, seed=0)
    save_hf(loaded.model, loaded.tokenizer, out)
    return out


@pytest.fixture(scope="module")
def copied_data(tmp_path_factory, data_dir):
    import shutil

    out = tmp_path_factory.mktemp("qdata") / "shards"
    shutil.copytree(data_dir, out)
    return out


def direct_doc_losses(model_dir, domain, context, max_doc_tokens=None):
    """Mean NLL per document, one window at a time, no batching or padding: the documented definition."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    eos = domain.tokenizer["eos_id"]
    out = []
    with torch.no_grad():
        for doc in domain.documents("train"):
            seq = torch.tensor([eos, *np.asarray(doc).tolist()])
            if max_doc_tokens is not None:
                seq = seq[: max_doc_tokens + 1]
            total, count = 0.0, 0
            for j in range(0, len(seq) - 1, context - 1):
                piece = seq[j : j + context]
                logits = model(input_ids=piece[None]).logits[0]
                total += F.cross_entropy(logits[:-1], piece[1:], reduction="sum").item()
                count += len(piece) - 1
            out.append(total / count)
    return np.array(out)


def test_short_documents_score_equals_their_perplexity(ref_model, copied_data, tmp_path):
    """Each document cut to 40 tokens fits one window: the score is the plain mean NLL of [EOS] + doc[:40]."""
    meta = score_domain(
        str(ref_model),
        copied_data,
        "prose",
        tmp_path / "r",
        batch_size=7,
        chunk_docs=32,
        context=64,
        max_doc_tokens=40,
        progress=False,
    )
    _, scores, ranking = read_ranking(tmp_path / "r")
    expected = direct_doc_losses(
        ref_model, open_data_dir(copied_data)["prose"], context=64, max_doc_tokens=40
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert ranking.tolist() == np.argsort(expected, kind="stable").tolist()
    assert meta["complete"] and meta["docs"] == len(expected)


def test_long_documents_in_windows_and_resume(ref_model, copied_data, tmp_path):
    out = tmp_path / "r"
    dom = open_data_dir(copied_data)["prose"]
    lengths = [len(d) for d in dom.documents("train")]
    assert min(lengths) > 16 and max(lengths) > 60  # every document spans several 16-token windows
    kw = dict(batch_size=5, chunk_docs=40, context=16, max_doc_tokens=60, progress=False)
    score_domain(str(ref_model), copied_data, "prose", out, **kw)
    _, scores, ranking = read_ranking(out)
    np.testing.assert_allclose(scores, direct_doc_losses(ref_model, dom, 16, max_doc_tokens=60), rtol=1e-5)

    # interrupted after the first chunk: the rerun keeps it (same file, same mtime) and computes the others
    chunks = sorted((out / "chunks").iterdir())
    assert len(chunks) == -(-dom.n_docs("train") // 40)
    kept = os.stat(chunks[0]).st_mtime_ns
    for c in chunks[1:]:
        c.unlink()
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    (out / "ranking.npy").unlink()
    with pytest.raises(UserError, match="incomplete"):
        read_ranking(out)
    score_domain(str(ref_model), copied_data, "prose", out, **kw)
    assert os.stat(chunks[0]).st_mtime_ns == kept
    _, scores2, ranking2 = read_ranking(out)
    assert np.array_equal(scores2, scores) and np.array_equal(ranking2, ranking)
    with pytest.raises(UserError, match="other settings"):
        score_domain(str(ref_model), copied_data, "prose", out, context=32, progress=False)


def test_select_writes_the_best_documents_as_a_domain(ref_model, copied_data, tmp_path):
    score_domain(
        str(ref_model),
        copied_data,
        "code",
        tmp_path / "r",
        batch_size=8,
        chunk_docs=64,
        context=64,
        max_doc_tokens=30,
        progress=False,
    )
    _, scores, ranking = read_ranking(tmp_path / "r")
    src = open_data_dir(copied_data)["code"]
    docs = [np.asarray(d) for d in src.documents("train")]
    k = 3 * len(docs[ranking[0]]) + len(docs[ranking[1]]) + len(docs[ranking[2]])
    info = select_top_tokens(copied_data, tmp_path / "r", k, "code_hq")
    # expected by hand: best-ranked documents while the running total stays <= k
    chosen, total = [], 0
    for i in ranking:
        if total + len(docs[i]) > k:
            break
        chosen.append(int(i))
        total += len(docs[i])
    assert len(chosen) >= 3
    domains = open_data_dir(copied_data)
    assert (
        "code_hq" in domains
        and json.loads((copied_data / "manifest.json").read_text())["domains"][-1] == "code_hq"
    )
    new = domains["code_hq"]
    new.verify()
    assert info["docs"] == len(chosen) and info["tokens"] == total == new.n_tokens("train")
    expected = np.concatenate([docs[i] for i in sorted(chosen)])
    assert np.array_equal(np.asarray(new.tokens("train")), expected)
    assert [len(d) for d in new.documents("train")] == [len(docs[i]) for i in sorted(chosen)]
    assert np.array_equal(np.asarray(new.tokens("val")), np.asarray(src.tokens("val")))
    assert new.tokenizer == src.tokenizer and new.dtype == src.dtype

    # idempotent; a different cut needs --overwrite
    assert select_top_tokens(copied_data, tmp_path / "r", k, "code_hq")["status"] == "up to date"
    with pytest.raises(UserError, match="overwrite"):
        select_top_tokens(copied_data, tmp_path / "r", k + 1000, "code_hq")
    with pytest.raises(UserError, match="raise it"):
        select_top_tokens(copied_data, tmp_path / "r", 1, "tiny")
    with pytest.raises(UserError, match="ranked domain itself"):
        select_top_tokens(copied_data, tmp_path / "r", k, "code")


def test_the_selected_domain_trains(ref_model, copied_data, tmp_path):
    """The new domain is a normal prepared domain: a training run reads it."""
    from train_helpers import tiny_recipe

    from warmstart.train.loop import train

    if "code_hq" not in open_data_dir(copied_data):
        score_domain(
            str(ref_model), copied_data, "code", tmp_path / "r", context=64, max_doc_tokens=30, progress=False
        )
        select_top_tokens(copied_data, tmp_path / "r", 4000, "code_hq")
    recipe = tiny_recipe(
        copied_data,
        open_data_dir(copied_data)["code"].tokenizer["name"],
        tmp_path,
        data={"weights": {"code_hq": 1.0}},
        train={"steps": 2},
        eval={"every": 2},
    )
    result = train(recipe)
    assert "val/code_hq/loss" in result.last_eval


def test_re_prepare_keeps_a_selected_domain_until_its_source_changes(ref_model, tokenizer_dir, tmp_path):
    from conftest import _stdlib_texts

    from warmstart.data import prepare

    src = tmp_path / "code.jsonl"
    texts = _stdlib_texts()["code"][:20]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    recipe = {"tokenizer": str(tokenizer_dir), "out": str(tmp_path / "shards"), "val_docs": 2,
              "domains": {"code": [{"path": str(src)}]}}
    prepare(recipe, progress=False)
    score_domain(str(ref_model), tmp_path / "shards", "code", tmp_path / "r", context=64, max_doc_tokens=30,
                 progress=False)
    select_top_tokens(tmp_path / "shards", tmp_path / "r", 200_000, "code_hq")

    again = prepare(recipe, progress=False)  # unchanged inputs: nothing rebuilt, code_hq still listed
    assert again.up_to_date and again.kept == ["code_hq"] and not again.stale
    assert list(open_data_dir(tmp_path / "shards")) == ["code", "code_hq"]

    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:-1]))  # the source domain changes
    rebuilt = prepare(recipe, progress=False, overwrite=True)
    assert rebuilt.stale == ["code_hq"] and "selected from a domain since rebuilt: code_hq" in rebuilt.summary()
    assert list(open_data_dir(tmp_path / "shards")) == ["code"]
    assert (tmp_path / "shards" / "code_hq" / "index.json").is_file()  # dropped from the manifest, not deleted
