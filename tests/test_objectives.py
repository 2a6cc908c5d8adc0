"""Masked-LM (BERT-style) objective: masking statistics, determinism, and training through the one loop."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import tiny_recipe
from transformers import AutoModelForMaskedLM

from warmstart.data.tokenizer import load_tokenizer
from warmstart.runtime.metrics import read_metrics
from warmstart.train.loop import train
from warmstart.train.objectives import IGNORE, Objective


def test_masking_rates_and_slices(tokenizer_dir):
    tok = load_tokenizer(str(tokenizer_dir))
    obj = Objective("masked", tok, seed=3, mask_prob=0.15)
    x = torch.randint(3, len(tok), (64, 129))
    x[:, ::17] = tok.eos_token_id  # special tokens are never masked
    noise = obj.noise((7,), (64, 128))
    inputs, labels = obj.split(x, noise)
    chosen = labels != IGNORE
    assert not chosen[x[:, :-1] == tok.eos_token_id].any()
    assert abs(chosen.float().mean().item() - 0.15 * 16 / 17) < 0.01
    assert torch.equal(labels[chosen], x[:, :-1][chosen])
    masked = (inputs == tok.mask_token_id) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert torch.equal(inputs[~chosen], x[:, :-1][~chosen])  # unchosen positions are untouched
    # the same (seed, step) gives the same noise; a slice of rows equals the rows of the whole batch
    part_in, part_lab = obj.split(x[8:16], obj.noise((7,), (64, 128)), slice(8, 16))
    assert torch.equal(part_in, inputs[8:16]) and torch.equal(part_lab, labels[8:16])
    other, _ = obj.split(x, obj.noise((8,), (64, 128)))
    assert not torch.equal(other, inputs)


def test_random_replacements_are_tokens_even_with_a_padded_embedding(data_dir, tokenizer_dir, tmp_path):
    """An embedding table padded past the tokenizer (576 rows for 512 tokens) must not widen the random draws:
    10.9% of the "random token" replacements were ids that are no token. The objective is built from the
    tokenizer alone, so the rows cannot leak in; a padded masked LM trains through the one loop."""
    import json

    tok = load_tokenizer(str(tokenizer_dir))
    assert len(tok) == 512
    obj = Objective("masked", tok, seed=0, mask_prob=1.0)
    x = torch.randint(3, len(tok), (256, 129))
    inputs, labels = obj.split(x, obj.noise((1,), (256, 128)))
    _, how, rand = obj.noise((1,), (256, 128))
    replaced = (labels != IGNORE) & (how >= 0.8) & (how < 0.9)
    assert replaced.sum().item() > 3000  # ~10% of 256 x 128 (specials excluded)
    assert torch.equal(inputs[replaced], rand[replaced])
    assert int(inputs[replaced].max()) == len(tok) - 1 and int(inputs.max()) < len(tok)

    config = tmp_path / "bert.json"
    config.write_text(json.dumps({"model_type": "bert", "vocab_size": 576, "hidden_size": 32,
                                  "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}))
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, overrides=["model.preset=null"],
                         model={"config": str(config), "objective": "masked"}, train={"steps": 2},
                         eval={"every": 2})
    result = train(recipe)
    model = AutoModelForMaskedLM.from_pretrained(str(result.final_dir))
    assert model.get_input_embeddings().weight.shape[0] == 576


def test_masked_lm_trains_and_reloads(data_dir, tokenizer_dir, tmp_path):
    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, model={"preset": "bert-tiny", "objective": "masked"},
                         train={"steps": 16}, eval={"every": 16})
    result = train(recipe)
    evals = [r for r in read_metrics(result.run_dir) if r["event"] == "eval"]
    vocab = len(load_tokenizer(str(tokenizer_dir)))
    assert evals[0]["val/code/loss"] == pytest.approx(math.log(vocab), abs=0.5)  # untrained: uniform guess
    assert evals[-1]["val/code/loss"] < evals[0]["val/code/loss"] - 0.2
    model = AutoModelForMaskedLM.from_pretrained(str(result.final_dir))
    assert model.config.model_type == "bert"


def test_masked_objective_needs_an_encoder(data_dir, tokenizer_dir, tmp_path):
    from warmstart.errors import UserError

    with pytest.raises(UserError, match="model.objective: llama has no masked LM class"):
        train(tiny_recipe(data_dir, tokenizer_dir, tmp_path, model={"objective": "masked"}))


def _final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_masked_lm_step_is_independent_of_micro_batch_size(data_dir, tokenizer_dir, tmp_path):
    """The loss is normalised by the predicted tokens of the whole global batch, not per micro-batch."""
    runs = {}
    for micro in (16, 2):
        runs[micro] = train(tiny_recipe(
            data_dir, tokenizer_dir, tmp_path, f"m{micro}", model={"preset": "bert-tiny", "objective": "masked"},
            train={"steps": 3, "batch_tokens": 512, "micro_batch_size": micro, "log_every": 1}, eval={"every": 3},
        ))
    la, lb = ([r["train/loss"] for r in read_metrics(runs[m].run_dir) if r["event"] == "train"] for m in (16, 2))
    assert lb == pytest.approx(la, rel=1e-5)
    wa, wb = _final_weights(runs[16].run_dir), _final_weights(runs[2].run_dir)
    # Summing in another order changes a gradient by float32 rounding, which AdamW's normalised step (lr 3e-3)
    # turns into at most ~1e-3 of a step for all but elements whose gradient cancels to near zero (there the
    # rounding is large relative to the gradient: one element of 16,384 moved 2.6e-6 on an Intel Xeon). A
    # loss normalised per micro-batch would move nearly every element by far more.
    for k in wa:
        off = ((wa[k] - wb[k]).abs() > 2e-6).float().mean().item()
        assert off <= 1e-3, (k, off)
