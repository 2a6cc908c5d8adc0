"""Inheritune v1 surgery: the inherited model computes exactly what the reference computes through those blocks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from warmstart.errors import UserError
from warmstart.models.surgery import find_blocks, inherit, parse_blocks

K = 4
SMALL = {"hidden": 32, "heads": 4, "ffn": 64, "layers": K}
FAMILIES = {
    # name: (model_type, config kwargs)
    "gpt2": (
        "gpt2",
        {"n_embd": 32, "n_head": 4, "n_layer": K, "n_positions": 64, "tie_word_embeddings": True},
    ),
    "gpt_neox": (
        "gpt_neox",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": K,
            "tie_word_embeddings": False,
        },
    ),
    "llama-tied-gqa": (
        "llama",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "num_hidden_layers": K,
            "tie_word_embeddings": True,
        },
    ),
    "llama-untied": (
        "llama",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": K,
            "tie_word_embeddings": False,
        },
    ),
    "mistral": (
        "mistral",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "num_hidden_layers": K,
            "sliding_window": None,
        },
    ),
    # alternating sliding-window / full attention: the per-layer `layer_types` list must follow the blocks
    "qwen2-sliding": (
        "qwen2",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "num_hidden_layers": K,
            "use_sliding_window": True,
            "sliding_window": 3,
            "max_window_layers": 0,
            "layer_types": ["full_attention", "sliding_attention"] * 2,
            "tie_word_embeddings": False,
        },
    ),
    "opt": (
        "opt",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "ffn_dim": 64,
            "num_hidden_layers": K,
            "word_embed_proj_dim": 32,
            "max_position_embeddings": 64,
        },
    ),
    "bert-mlm": (
        "bert",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": K,
            "max_position_embeddings": 64,
        },
    ),
}
NO_DROPOUT = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout",
    "attention_dropout",
    "dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def _final_head(model, family: str, h: torch.Tensor) -> torch.Tensor:
    """REF's own final norm and head applied to a hidden state (written out per family, independently)."""
    if family == "gpt2":
        return model.lm_head(model.transformer.ln_f(h))
    if family == "gpt_neox":
        return model.get_output_embeddings()(model.gpt_neox.final_layer_norm(h))
    if family == "opt":
        dec = model.model.decoder
        h = dec.final_layer_norm(h) if dec.final_layer_norm is not None else h
        h = dec.project_out(h) if dec.project_out is not None else h
        return model.lm_head(h)
    if family == "bert":
        return model.cls(h)
    return model.lm_head(model.model.norm(h))


@pytest.fixture(scope="module")
def refs(tmp_path_factory, tokenizer_dir):
    """One saved tiny reference (k=4 blocks, perturbed weights, real tokenizer) per family, built once."""
    root = tmp_path_factory.mktemp("refs")
    return {name: _make_ref(root, name, tokenizer_dir) for name in FAMILIES}


def _make_ref(root, name: str, tokenizer_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    family, kwargs = FAMILIES[name]
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    config = AutoConfig.for_model(family, vocab_size=512, **ids, **kwargs, **{k: 0.0 for k in NO_DROPOUT})
    torch.manual_seed(0)
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms start at exactly 1/0: perturb every weight so nothing can pass by accident
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = root / f"ref-{name}"
    model.save_pretrained(str(ref))
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, ref / f.name)
    return ref, auto, family


def _load(auto, path):
    model = auto.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_inherited_logits_equal_reference_through_first_n_blocks(tmp_path, refs, name):
    ref_dir, auto, family = refs[name]
    ref = _load(auto, ref_dir)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = ref(input_ids=ids, output_hidden_states=True).hidden_states
    for n in (1, K - 1):
        res = inherit(ref_dir, tmp_path / f"{name}-L{n}", layers=n)
        assert res.blocks == list(range(n)) and res.ref_layers == K
        small = _load(auto, res.out)
        assert small.config.num_hidden_layers == n
        assert small.config.tie_word_embeddings == ref.config.tie_word_embeddings
        with torch.no_grad():
            got = small(input_ids=ids).logits
            want = _final_head(ref, family, hidden[n])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the tokenizer is copied byte for byte
        assert (res.out / "tokenizer.json").read_bytes() == (ref_dir / "tokenizer.json").read_bytes()


def _expected_by_hand(ref, blocks: list[int]):
    """A LLaMA-style model assembled module by module from REF: embeddings, blocks[i], norm, head."""
    from transformers import AutoModelForCausalLM

    cfg = ref.config.__class__.from_dict(ref.config.to_dict())
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [ref.config.layer_types[i] for i in blocks]
    cfg.num_hidden_layers = len(blocks)
    exp = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    exp.model.embed_tokens.load_state_dict(ref.model.embed_tokens.state_dict())
    for j, b in enumerate(blocks):
        exp.model.layers[j].load_state_dict(ref.model.layers[b].state_dict())
    exp.model.norm.load_state_dict(ref.model.norm.state_dict())
    exp.lm_head.load_state_dict(ref.lm_head.state_dict())
    return exp


@pytest.mark.parametrize(
    "name,spec,blocks", [("llama-untied", "0,2-3", [0, 2, 3]), ("qwen2-sliding", "3,0", [3, 0])]
)
def test_non_prefix_blocks_match_a_hand_built_model(tmp_path, refs, name, spec, blocks):
    ref_dir, auto, _ = refs[name]
    ref = _load(auto, ref_dir)
    res = inherit(ref_dir, tmp_path / "out", blocks=spec)
    assert res.blocks == blocks
    small = _load(auto, res.out)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = small(input_ids=ids).logits
        want = _expected_by_hand(ref, blocks)(input_ids=ids).logits
        prefix = _expected_by_hand(ref, list(range(len(blocks))))(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, prefix, atol=1e-3)  # the selection really differs from the first blocks
    if name == "qwen2-sliding":
        cfg = json.loads((res.out / "config.json").read_text())
        assert cfg["layer_types"] == ["sliding_attention", "full_attention"]
        # a model given the unsliced pattern's first entries would attend differently: the slice matters
        assert small.model.layers[0].self_attn.sliding_window == 3
        assert small.model.layers[1].self_attn.sliding_window is None


def test_output_loads_in_a_fresh_process_without_weight_warnings(tmp_path, refs):
    outs = []
    for name in FAMILIES:
        ref_dir, auto, _ = refs[name]
        blocks = "1,3" if name.startswith(("llama", "qwen2")) else None
        res = inherit(ref_dir, tmp_path / f"out-{name}", layers=None if blocks else 2, blocks=blocks)
        outs.append((auto.__name__, str(res.out)))
    script = textwrap.dedent(
        """
        import json, logging, sys
        import transformers
        from transformers.utils import logging as hf_logging
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        hf_logging.set_verbosity_warning()
        hf_logging.get_logger().addHandler(Keep())
        report = []
        for cls, path in json.loads(sys.argv[1]):
            model, info = getattr(transformers, cls).from_pretrained(path, output_loading_info=True)
            report.append({k: list(v) for k, v in info.items() if k != "error_msgs"})
        print(json.dumps({"records": records, "info": report}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(outs)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["records"] == []
    for info in result["info"]:
        assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert "missing" not in proc.stderr.lower() and "unexpected" not in proc.stderr.lower()


@pytest.mark.parametrize(
    "spec,message",
    [
        ("0-5,8", "block 4 is out of range"),
        ("0,0", "block 0 is listed twice"),
        ("", "empty entry"),
        ("1,,2", "empty entry"),
        ("3-1", "runs backwards"),
        ("a", "'a' is not an index"),
        ("0-3", "chooses 4 of 4 blocks"),
    ],
)
def test_bad_block_lists_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message) as e:
        parse_blocks(spec, K)
    assert "\n" not in str(e.value)


def test_parse_blocks_keeps_order():
    assert parse_blocks("0-2,5", 8) == [0, 1, 2, 5]
    assert parse_blocks(" 6, 1-2 ", 8) == [6, 1, 2]


def test_layers_outside_range_and_missing_blocks_are_errors(tmp_path, refs):
    ref_dir, auto, _ = refs["llama-tied-gqa"]
    for n in (0, K):
        with pytest.raises(UserError, match=rf"--layers: {n} is outside 1..{K - 1}"):
            inherit(ref_dir, tmp_path / "x", layers=n)
    with pytest.raises(UserError, match="--from: .*no such directory"):
        inherit(tmp_path / "nope", tmp_path / "x", layers=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("keep")
    with pytest.raises(UserError, match="--out: .* not empty"):
        inherit(ref_dir, tmp_path / "full", layers=1)
    assert (tmp_path / "full" / "f").read_text() == "keep"
    model = _load(auto, ref_dir)
    with pytest.raises(UserError, match="LlamaForCausalLM: no list of 7 blocks"):
        find_blocks(model, 7)


def test_cli_inherit_and_its_errors(tmp_path, refs, capsys):
    from warmstart.cli import main

    ref_dir, _, _ = refs["gpt2"]
    assert main(["inherit", "--from", str(ref_dir), "--blocks", "0-5,8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "block 4 is out of range" in err
    assert not (tmp_path / "o").exists()
    assert main(["inherit", "--from", str(ref_dir), "--layers", "2", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["n_layer"] == 2


# ----------------------------------------------------------------------------------------------- mixture of experts
MOE = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
       "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "num_experts": 4,
       "num_experts_per_tok": 2, "num_hidden_layers": K, "tie_word_embeddings": False}


def _moe_ref(root, tokenizer_dir, **kw):
    """A tiny Qwen2-MoE whose MLP kind depends on the block index: sparse iff (i + 1) % step == 0, i not dense."""
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0, **MOE, **kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = root / "moe-ref"
    model.save_pretrained(str(ref))
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, ref / f.name)
    return ref, model


def _is_sparse(layer) -> bool:
    return hasattr(layer.mlp, "experts")


@pytest.mark.parametrize(
    ("kw", "spec", "blocks"),
    [({"decoder_sparse_step": 2}, "0,2", [0, 2]),  # both dense: a stride of 2 would make new block 1 sparse
     ({"decoder_sparse_step": 2}, "1,2,3", [1, 2, 3]),  # sparse, dense, sparse
     ({"decoder_sparse_step": 1, "mlp_only_layers": [1]}, "3,1", [3, 1])],
)
def test_moe_blocks_keep_their_mlp_kind_and_every_weight(tmp_path, tokenizer_dir, kw, spec, blocks):
    from transformers import AutoModelForCausalLM

    ref_dir, ref = _moe_ref(tmp_path, tokenizer_dir, **kw)
    kinds = [_is_sparse(ref.model.layers[i]) for i in blocks]
    assert len(set(kinds)) > 1 or kinds == [False, False]  # the cases do exercise the index rule
    res = inherit(ref_dir, tmp_path / "out", blocks=spec)
    cfg = json.loads((res.out / "config.json").read_text())
    assert cfg["decoder_sparse_step"] == 1
    assert cfg["mlp_only_layers"] == [p for p, kind in enumerate(kinds) if not kind]
    small, info = AutoModelForCausalLM.from_pretrained(str(res.out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert [_is_sparse(layer) for layer in small.model.layers] == kinds
    want = ref.state_dict()
    for pos, i in enumerate(blocks):
        mine = small.model.layers[pos].state_dict()
        theirs = ref.model.layers[i].state_dict()
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert torch.equal(mine[k], theirs[k]), (pos, k)
    assert torch.equal(small.model.embed_tokens.weight, want["model.embed_tokens.weight"])
    assert torch.equal(small.lm_head.weight, want["lm_head.weight"])


def test_inherit_refuses_what_would_not_reload_exactly(tmp_path, tokenizer_dir):
    """The general rule, shown on the index-dependent setting left unmapped: the written model is reloaded and a
    block that would come back with another MLP (re-initialised weights) is refused, nothing written."""
    from transformers import AutoModelForCausalLM

    from warmstart.models.surgery import _slice_config, verify_written

    ref_dir, _ = _moe_ref(tmp_path, tokenizer_dir, decoder_sparse_step=2)
    model = AutoModelForCausalLM.from_pretrained(str(ref_dir))
    parent, attr, old = find_blocks(model, K)
    setattr(parent, attr, torch.nn.ModuleList([old[0], old[2]]))
    _slice_config(model.config, K, [0, 2])  # the layer count follows, decoder_sparse_step (2) does not
    out = tmp_path / "raw"
    model.save_pretrained(str(out))
    with pytest.raises(UserError, match=r"blocks \[0, 2\] would reload with weights (missing|unexpected)"):
        verify_written(out, model, AutoModelForCausalLM, [0, 2])


def _whole_load_cut(ref_dir, auto, blocks: list[int], out):
    """What inherit wrote before it read tensor by tensor: the whole reference loaded, cut, saved."""
    from warmstart.models.surgery import cut

    model = auto.from_pretrained(str(ref_dir), dtype="auto")
    cut(model, K, blocks)
    model.save_pretrained(str(out))
    return out


def _tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same_files(got, want) -> None:
    a, b = _tensors(got), _tensors(want)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for name in ("config.json", "generation_config.json"):
        assert (got / name).is_file() == (want / name).is_file(), name
        if (want / name).is_file():
            assert json.loads((got / name).read_text()) == json.loads((want / name).read_text()), name


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cut_read_tensor_by_tensor_equals_the_whole_load(tmp_path, refs, name):
    """Every family reads the kept tensors from the safetensors file (no fallback to the whole load), and writes
    the same tensors, dtypes and config as loading the whole reference and cutting it did."""
    from transformers import AutoConfig

    from warmstart.models.surgery import read_cut

    ref_dir, auto, _ = refs[name]
    assert read_cut(ref_dir, AutoConfig.from_pretrained(str(ref_dir)), auto, K, [3, 1]) is not None
    res = inherit(ref_dir, tmp_path / "new", blocks="3,1")
    _same_files(res.out, _whole_load_cut(ref_dir, auto, [3, 1], tmp_path / "old"))


def test_cut_of_a_sharded_bf16_reference_reads_only_the_kept_blocks(tmp_path, tokenizer_dir):
    """A bf16 reference in many safetensors shards: the cut keeps bf16, ties its head to its embedding as the
    reference does, and never opens a shard holding only dropped blocks (deleted here: loading the whole
    reference would fail on them)."""
    from transformers import AutoModelForCausalLM

    ref_dir, auto, _ = _make_ref(tmp_path, "llama-tied-gqa", tokenizer_dir)
    model = auto.from_pretrained(str(ref_dir), dtype=torch.bfloat16)
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="4KB")  # about a tensor per file
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, sharded / f.name)
    want = _whole_load_cut(sharded, auto, [0, 2], tmp_path / "old")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    files: dict[str, set[str]] = {}
    for key, file in index.items():
        files.setdefault(file, set()).add(key)
    dropped = [f for f, keys in files.items() if all(k.startswith(("model.layers.1.", "model.layers.3.")) for k in keys)]
    assert dropped  # the shard size puts some dropped block's tensors in files of their own
    for f in dropped:
        (sharded / f).unlink()
    res = inherit(sharded, tmp_path / "new", blocks="0,2")
    _same_files(res.out, want)
    small = AutoModelForCausalLM.from_pretrained(str(res.out), dtype="auto")
    assert small.model.embed_tokens.weight.dtype == torch.bfloat16
    assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()
    assert "lm_head.weight" not in _tensors(res.out)  # stored once, as the reference stores it
