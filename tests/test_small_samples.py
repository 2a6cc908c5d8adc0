"""A statistic from too few samples decides nothing: the format probe, the block search's race and the
stability-gap numbers say when their sample is too small, keep their default, and say so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from warmstart.cli import main
from warmstart.data.tokenizer import load_tokenizer


def _model(tok_dir: Path, out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(str(tok_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a peaked next-token distribution: candidates' losses differ clearly
        model.lm_head.weight.normal_(0, 2.0)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("docs", [1, 2])
def test_format_probe_on_one_or_two_documents_decides_nothing_and_says_so(docs, tokenizer_dir, tmp_path, capsys):
    ckpt = _model(tokenizer_dir, tmp_path / "ckpt")
    texts = tmp_path / "t.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Document {i}: the quick brown fox jumps."}) + "\n"
                             for i in range(6)))
    recipe = tmp_path / "prepare.yaml"
    recipe.write_text(yaml.safe_dump({"tokenizer": str(ckpt), "out": str(tmp_path / "o"),
                                      "domains": {"web": [{"path": str(texts)}]}, "bos": True, "doc_end": "none"}))
    assert main(["format", "probe", str(ckpt), "--text", str(texts), "--docs", str(docs), "--tokens", "8",
                 "--write-recipe", str(recipe), "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    noun = "1 document is" if docs == 1 else "2 documents are"
    assert f"{noun} too few to tell the candidates apart (a standard error needs at least 10); keeping the default" \
        in out
    if docs == 1:
        assert " n/a " in out  # no spread over one document: no standard error, said as such
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["winner"]["default"] is True
    assert all(r["se"] is None for r in res["rows"]) if docs == 1 else True
    tree = yaml.safe_load(recipe.read_text())
    assert tree["bos"] == "auto" and tree["doc_end"] == "auto"


def test_race_makes_no_test_on_fewer_than_four_windows():
    """Two windows with equal differences have no spread: the old test dropped any candidate worse on both."""
    from warmstart.eval.block_choice import MIN_WINDOWS, race

    n = 16
    counts = np.full(n, 10)
    base = 5.0 + 0.3 * np.sin(np.arange(n))
    table = {"a": base, "b": base + 0.01}  # 0.01 nats worse in every window: no spread at all
    calls: list = []

    def window_losses(name, a, b):
        calls.append((name, a, b))
        return table[name][a:b] * counts[a:b], counts[a:b]

    got = race(list(table), n, window_losses, first_windows=2, alpha=0.01)
    assert MIN_WINDOWS == 4 and got.rounds[0] == {"windows": 2, "leader": "a", "dropped": []}
    assert got.rounds[1]["windows"] == 4 and got.rounds[1]["dropped"] == ["b"]


def test_auto_on_a_sample_of_too_few_windows_keeps_first_and_says_so(data_dir, tokenizer_dir, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ref = tmp_path / "ref"
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(str(ref))
    load_tokenizer(str(tokenizer_dir)).save_pretrained(str(ref))
    assert main(["inherit", "--from", str(ref), "--layers", "2", "--rule", "auto", "--sample", str(data_dir),
                 "--sample-tokens", "16", "--seq-len", "16", "--out", str(tmp_path / "cut")]) == 0
    out = capsys.readouterr().out
    choice = json.loads((tmp_path / "cut/inherited.json").read_text())["choice"]
    assert choice["chosen"] == "first" and json.loads((tmp_path / "cut/inherited.json").read_text())["blocks"] == [0, 1]
    assert choice["note"].startswith("the sample has 2 windows: too few to choose between the cuts (at least 4); "
                                     "kept first (the default cut)")
    assert "too few to choose between the cuts" in out


def test_a_gap_from_one_evaluation_claims_no_dip_and_no_recovery():
    from warmstart.eval.gap import gap_metrics, gap_table

    g = gap_metrics([(0, 0, 3.0), (4, 1024, 3.5)], baseline_step=4)
    assert g["points"] == 1 and g["recovered"] is None and g["recover_step"] is None
    assert g["note"] == "one evaluation at or after step 4: too few to measure a dip or a recovery (at least 2)"
    row = gap_table({"run": {"val/code/loss": g}})["rows"][0]
    assert row[7] == "too few evaluations"
    two = gap_metrics([(0, 0, 3.0), (4, 1024, 3.5)])  # two points: a dip, measured, not recovered
    assert two["depth"] == 0.5 and two["recovered"] is False and "note" not in two
