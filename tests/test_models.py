"""Model building: presets of every family, FLOPs per token, AdamW parameter groups."""

from __future__ import annotations

import pytest
import torch

from warmstart.config import ModelConfig, OptimConfig
from warmstart.errors import UserError
from warmstart.models.build import build_config, build_model, flops_per_token, matmul_params
from warmstart.models.presets import PRESETS
from warmstart.train.optim import param_groups


def test_flops_per_token_closed_form(tokenizer_dir):
    m = build_model(ModelConfig(preset="gpt2-tiny", tokenizer=str(tokenizer_dir)), None, seed=0).model
    c = m.config
    d, L, V, P = c.n_embd, c.n_layer, c.vocab_size, c.n_positions
    per_block = 4 * d * d + 4 * d + 2 * d * c.n_inner + c.n_inner + d + 4 * d  # attn, mlp, 2 layernorms
    n = L * per_block + 2 * d + V * d  # blocks + final norm + tied head (counted as a matmul)
    assert sum(p.numel() for p in m.parameters()) == L * per_block + 2 * d + V * d + P * d
    assert matmul_params(m) == n
    assert flops_per_token(m, 128) == 6 * n + 12 * L * d * 128


def test_untied_head_counts_once(tokenizer_dir):
    m = build_model(ModelConfig(preset="neox-tiny", tokenizer=str(tokenizer_dir)), None, seed=0).model
    assert not m.config.tie_word_embeddings
    total = sum(p.numel() for p in m.parameters())
    assert matmul_params(m) == total - m.get_input_embeddings().weight.numel()


@pytest.mark.parametrize("preset", sorted(k for k in PRESETS if k.endswith("-tiny")))
def test_presets_build_with_tokenizer_vocab_and_seeded_init(preset, tokenizer_dir):
    cfg = ModelConfig(preset=preset, tokenizer=str(tokenizer_dir))
    a = build_model(cfg, None, seed=1).model
    b = build_model(cfg, None, seed=1).model
    assert a.config.vocab_size == 512
    assert a.config.eos_token_id == 0
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na


def test_sizes_and_errors(tokenizer_dir):
    c = build_config(ModelConfig(family="llama", sizes={"layers": 3, "hidden": 32, "heads": 2}), vocab_size=100)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size) == (3, 32, 2, 100)
    with pytest.raises(UserError, match="model.preset: unknown preset 'nope'"):
        build_config(ModelConfig(preset="nope"), vocab_size=10)
    with pytest.raises(UserError, match="model.family: unknown family"):
        build_config(ModelConfig(family="rnn"), vocab_size=10)
    with pytest.raises(UserError, match="model.tokenizer"):
        build_model(ModelConfig(preset="llama-tiny"), None, seed=0)


def test_weight_decay_groups(tokenizer_dir):
    m = build_model(ModelConfig(preset="gpt2-tiny", tokenizer=str(tokenizer_dir)), None, seed=0).model
    decay, no_decay = param_groups(m, OptimConfig(weight_decay=0.1))
    names = {id(p): n for n, p in m.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} >= {"transformer.wte.weight", "transformer.wpe.weight"}
    assert all(p.ndim == 2 for p in decay["params"])
    assert not any("ln" in names[id(p)] or names[id(p)].endswith("bias") for p in decay["params"])
    all_decay = param_groups(m, OptimConfig(decay_embeddings=True, decay_norms_and_biases=True))
    assert len(all_decay[1]["params"]) == 0


def test_config_file_values_win_over_family_defaults(tmp_path):
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 2,
                                "num_hidden_layers": 2, "intermediate_size": 64, "tie_word_embeddings": False,
                                "vocab_size": 640}))
    c = build_config(ModelConfig(config=str(path), sizes={"layers": 1}), vocab_size=512)
    assert c.tie_word_embeddings is False  # the file says untied; the llama preset default (tied) must not win
    assert c.vocab_size == 640  # a padded embedding table is kept
    assert c.num_hidden_layers == 1
