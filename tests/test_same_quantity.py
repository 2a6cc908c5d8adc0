"""Only the same quantity is put side by side: a grow reference's loss and its rounds', a teacher and its
student's tokens, a run's curve across a resume that changed its evaluation, a gap measured across such a change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_recipe

from warmstart.config import GrowRecipe, validate
from warmstart.errors import UserError
from warmstart.recipes.inheritune import reference_loss
from warmstart.train.loop import train


@pytest.fixture(scope="module")
def packed_reference(tmp_path_factory, data_dir, tokenizer_dir) -> Path:
    """A finished run whose evaluations scored packed windows."""
    out = tmp_path_factory.mktemp("ref")
    recipe = tiny_recipe(data_dir, tokenizer_dir, out, "reference", model={"sizes": {"layers": 2}},
                         train={"steps": 2}, eval={"every": 2, "max_tokens": 64, "windows": "packed"})
    return train(recipe).run_dir


def _grow(data_dir, ref: Path, out: Path, **eval_keys) -> GrowRecipe:
    return validate(GrowRecipe, {"name": "g", "out_dir": str(out), "reference": {"from": str(ref)},
                                 "data": {"dir": str(data_dir), "seq_len": 32},
                                 "train": {"steps": 2, "batch_tokens": 256},
                                 "eval": {"max_tokens": 64, **eval_keys}})


def test_grow_refuses_a_reference_loss_taken_in_other_windows(packed_reference, data_dir, tmp_path):
    with pytest.raises(UserError, match=r"^reference\.from: .* was evaluated with a different eval\.windows "
                       r"\('packed' vs 'documents' here\), not the same quantity as the rounds' loss; set "
                       r"reference\.evaluate: true"):
        reference_loss(_grow(data_dir, packed_reference, tmp_path), packed_reference / "final")
    # the same windows, read the same way: the recorded loss is used
    loss, source = reference_loss(_grow(data_dir, packed_reference, tmp_path, windows="packed"),
                                  packed_reference / "final")
    assert source == "summary"
    # packed windows read another way (data.packing) are another quantity too
    cfg = _grow(data_dir, packed_reference, tmp_path, windows="packed")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": "stream"})})
    with pytest.raises(UserError, match=r"different data\.packing \('documents' vs 'stream' here\)"):
        reference_loss(cfg, packed_reference / "final")
    # the average over other domains is another quantity
    with pytest.raises(UserError, match=r"different eval domains \('code, prose' vs 'code' here\)"):
        reference_loss(_grow(data_dir, packed_reference, tmp_path, windows="packed", domains=["code"]),
                       packed_reference / "final")
    assert not (tmp_path / "g").exists()


def test_a_teacher_with_another_tokenizer_of_the_same_size_is_refused(data_dir, tokenizer_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.data.tokenizer_train import train_bpe

    other = train_bpe([f"entirely different words number {i} of another corpus" for i in range(300)],
                      vocab_size=512, out=tmp_path / "other-tok")
    tok = load_tokenizer(str(tmp_path / "other-tok"))
    assert len(tok) == len(load_tokenizer(str(tokenizer_dir))) == 512
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
                     ).save_pretrained(str(teacher))
    tok.save_pretrained(str(teacher))
    del other
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path / "runs", "student", train={"steps": 2},
                         distill={"teacher": str(teacher)})
    with pytest.raises(UserError, match=r"^distill\.teacher: its tokenizer \(vocab hash [0-9a-f]{12}, 512 tokens\) "
                       r"is not the student's \(vocab hash [0-9a-f]{12}, 512 tokens\)"):
        train(recipe)
    assert not (tmp_path / "runs" / "student").exists()


def test_a_resume_that_changes_the_evaluation_is_named_in_metrics_report_and_gap(data_dir, tokenizer_dir, tmp_path,
                                                                                   capsys):
    from warmstart.cli import main

    common = {"train": {"checkpoint_every": 2}, "eval": {"every": 2, "max_tokens": 256}}
    first = tiny_recipe(data_dir, tokenizer_dir, tmp_path, "run", **{**common, "train": {"steps": 2,
                                                                                        "checkpoint_every": 2}})
    run_dir = train(first).run_dir
    capsys.readouterr()
    more = tiny_recipe(data_dir, tokenizer_dir, tmp_path, "run", train={"steps": 4, "checkpoint_every": 2},
                       eval={"every": 2, "max_tokens": 128})
    train(more, resume=True, allow_config_change=True)
    err = capsys.readouterr().err
    assert "EVALUATION CHANGED after step 2 (eval.max_tokens 256 -> 128): validation losses from here on are " \
           "not the same quantity as before" in err
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "eval_change"] == [
        {"event": "eval_change", "step": 2, "tokens": 512, "changed": "eval.max_tokens 256 -> 128"}]
    # report: named loudly, at the top
    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "warning: NOT THE SAME QUANTITY WITHIN A RUN: the evaluation changed mid-run" in out
    assert "run: after step 2 (eval.max_tokens 256 -> 128)" in out
    # gap: a start before the change and points after it are refused, gap.json not written; after it, measured
    gap_json = run_dir / "gap.json"
    assert main(["gap", str(run_dir)]) == 2
    assert "its evaluation changed after step 2 (eval.max_tokens 256 -> 128), after the start (step 0): the " \
           "losses before and after are not the same quantity; give --baseline-step 3" in capsys.readouterr().err
    assert not gap_json.exists()
    assert main(["gap", str(run_dir), "--baseline-step", "3"]) == 0 and gap_json.is_file()
