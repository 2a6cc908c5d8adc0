"""`warmstart checkpoint from-gguf`: a GGUF file written here (a tiny LLaMA and the test BPE, in llama.cpp's layout)
becomes a checkpoint directory with the same logits and the same tokenizer; bad sources are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.cli import main
from warmstart.errors import UserError

gguf = pytest.importorskip("gguf")  # in the dev extra; `pip install gguf accelerate` for the command
HEADS, KV_HEADS, LAYERS = 4, 2, 2


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved per head), which transformers undoes on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, tokenizer_dir: Path) -> None:
    """`model` (a LlamaForCausalLM) and the byte-level BPE in `tokenizer_dir` as llama.cpp writes them (float32)."""
    tj = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = {**tj["model"]["vocab"], **{a["content"]: a["id"] for a in tj["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["id"] for a in tj["added_tokens"]}
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    w.add_eos_token_id(vocab["<|endoftext|>"])
    w.add_bos_token_id(vocab["<|endoftext|>"])
    leaves = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(cfg.num_hidden_layers):
        names.update({f"model.layers.{i}.{a}.weight": f"blk.{i}.{b}.weight" for a, b in leaves.items()})
    sd = model.state_dict()
    for hf_name, name in names.items():
        t = sd[hf_name].numpy()
        if name.endswith("attn_q.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tokenizer_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("gguf")
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5)  # not the init's ones and zeros: a wrong permutation or norm shows in the logits
    write_gguf(root / "tiny.gguf", model, tokenizer_dir)
    return root / "tiny.gguf", model


def test_from_gguf_gives_the_same_model_and_tokenizer(tiny_gguf, tokenizer_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, model = tiny_gguf
    out = tmp_path / "ckpt"
    assert main(["checkpoint", "from-gguf", str(path), str(out)]) == 0
    said = capsys.readouterr()
    assert "dequantised float32 weights" in said.out
    assert "\r" not in said.err and "Converting" not in said.err  # no reader bar redraws in a log
    assert json.loads((out / "from_gguf.json").read_text())["gguf"] == "tiny.gguf"
    assert not list(tmp_path.glob(".*tmp*"))
    loaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    text = "def f(x):\n    return x + 1  # héllo<|endoftext|>"
    ids = AutoTokenizer.from_pretrained(str(tokenizer_dir))(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(str(out))(text)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=1e-5)
    # the same command again is a no-op; another existing directory is refused
    assert main(["checkpoint", "from-gguf", str(path), str(out)]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    assert main(["checkpoint", "from-gguf", str(path), str(tmp_path / "other")]) == 2
    assert "is not a conversion of tiny.gguf" in capsys.readouterr().err


def test_from_gguf_bad_sources_are_one_line(tmp_path, monkeypatch):
    from warmstart.models import gguf as conv

    with pytest.raises(UserError, match=r"^from-gguf: nope\.gguf: not found \(give a \.gguf file or a packaged "
                                        r"name: smollm2\)$"):
        conv.from_gguf("nope.gguf", tmp_path / "o")
    monkeypatch.setitem(conv.PACKAGED, "gone", ("warmstart_no_such_pkg", "x.gguf", "pip install no-such-pkg"))
    with pytest.raises(UserError, match=r"^from-gguf: gone needs the PyPI package warmstart-no-such-pkg: "
                                        r"pip install no-such-pkg$"):
        conv.from_gguf("gone", tmp_path / "o")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(UserError, match=r"^from-gguf: .*bad\.gguf is not a GGUF file \(it does not start with "
                                        r"'GGUF'; 15 bytes\)$"):
        conv.from_gguf(str(bad), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_from_gguf_cut_short_is_one_line(tiny_gguf, tmp_path):
    """An interrupted copy: cut inside the header, the tensor table and the tensor data, each refused in one line
    naming the size (no struct or reshape message from inside the reader), nothing written."""
    from warmstart.models import gguf as conv

    whole = tiny_gguf[0].read_bytes()
    for size in (10, 200, len(whole) - 100):
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(whole[:size])
        with pytest.raises(UserError, match=rf"^from-gguf: .*cut{size}\.gguf is cut short or damaged "
                                            rf"\({size:,} bytes(, its tensors need {len(whole):,})?\); copy it "
                                            r"again, or reinstall the package it came from$"):
            conv.from_gguf(str(cut), tmp_path / "o")
        assert not (tmp_path / "o").exists()
