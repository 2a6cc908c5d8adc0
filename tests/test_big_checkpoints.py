"""Checkpoints read and written a tensor (or a shard of one) at a time: final/ in Hugging Face's sharded safetensors
layout, a model started on the meta device and filled from a checkpoint's files, the files' reader itself.

Under torchrun (FSDP, two "nodes") the same paths are tested in test_distributed.py."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from warmstart.errors import UserError
from warmstart.models.sharded_load import MetaStart
from warmstart.models.weight_files import INDEX, SINGLE, WeightFiles
from warmstart.runtime.distributed import Dist
from warmstart.train.save_final import save_final

SMALL = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
         "num_hidden_layers": 4, "vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _model(tie: bool = True, seed: int = 0):
    config = AutoConfig.for_model("llama", tie_word_embeddings=tie, **SMALL)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms start at exactly 1: perturb every weight so nothing passes by accident
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _ids():
    return torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tie", [True, False])
def test_final_in_bounded_shards_is_what_save_pretrained_writes(tmp_path, tokenizer_dir, tie):
    """final/ in files of at most 40 KB: an index and several shards, the same tensors (a tied head stored once,
    as save_pretrained stores it), config and generation config as save_pretrained, and the same logits."""
    from transformers import AutoTokenizer

    model, tok = _model(tie), AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model.save_pretrained(str(tmp_path / "hf"))
    out = tmp_path / "final"
    out.mkdir()
    save_final(model, tok, out, Dist(), 40_000 / (1 << 20))
    index = json.loads((out / INDEX).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (out / SINGLE).exists()
    assert all((out / f).stat().st_size <= 40_000 + 2_000 for f in files if len(load_file(str(out / f))) > 1)
    got, want = _tensors(out), _tensors(tmp_path / "hf")
    assert got.keys() == want.keys() == set(index["weight_map"])
    assert ("lm_head.weight" in got) is not tie
    for k in got:
        assert torch.equal(got[k], want[k]), k
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((tmp_path / "hf" / name).read_text())
    assert (out / "tokenizer.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)


def test_final_that_fits_one_file_is_one_model_safetensors(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    out = tmp_path / "final"
    out.mkdir()
    save_final(_model(), AutoTokenizer.from_pretrained(str(tokenizer_dir)), out, Dist(), 1024)
    assert (out / SINGLE).is_file() and not (out / INDEX).exists()


def _sharded_bf16_checkpoint(tmp_path, tie: bool = True):
    model = _model(tie).to(torch.bfloat16)
    src = tmp_path / "ckpt"
    model.save_pretrained(str(src), max_shard_size="20KB")
    assert (src / INDEX).is_file()
    return src


@pytest.mark.parametrize("tie", [True, False])
def test_meta_start_fills_every_tensor_as_from_pretrained_does(tmp_path, tie):
    """A bf16 checkpoint in several shard files, read into a float32 model built on the meta device: every
    parameter and buffer (the rotary inv_freq, which no checkpoint stores) equals from_pretrained's, the head
    stays tied to the embedding, and the logits are the same."""
    src = _sharded_bf16_checkpoint(tmp_path, tie)
    config = AutoConfig.from_pretrained(str(src))
    start = MetaStart.plan(AutoModelForCausalLM, config, src, torch.float32)
    assert start is not None and next(start.model.parameters()).is_meta
    start.materialise(start.model, torch.device("cpu"))
    model = start.model.eval()
    want = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    for (k, a), (k2, b) in zip(model.state_dict().items(), want.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype == torch.float32 and torch.equal(a, b), k
    for (k, a), (_, b) in zip(model.named_buffers(), want.named_buffers(), strict=True):
        assert torch.equal(a, b), k
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tie
    with torch.no_grad():
        assert torch.equal(model(input_ids=_ids()).logits, want(input_ids=_ids()).logits)


def test_meta_start_falls_back_where_the_files_do_not_name_every_tensor(tmp_path):
    """A checkpoint whose tensors are not all in its safetensors files under the model's names (here: a tensor's
    shape differs) is not started on the meta device: the caller loads it the whole way, as before."""
    src = tmp_path / "ckpt"
    _model(False).save_pretrained(str(src))
    config = AutoConfig.from_pretrained(str(src))
    config.intermediate_size = 96
    assert MetaStart.plan(AutoModelForCausalLM, config, src, torch.float32) is None
    shutil.rmtree(src)
    assert MetaStart.plan(AutoModelForCausalLM, AutoConfig.for_model("llama", **SMALL), tmp_path, torch.float32) is None


def test_weight_files_read_rows_and_name_a_missing_shard(tmp_path):
    src = _sharded_bf16_checkpoint(tmp_path, tie=False)
    files = WeightFiles.find(src)
    whole = _tensors(src)["lm_head.weight"]
    assert torch.equal(files.get_rows("lm_head.weight", 100, 260), whole[100:260])
    assert files.get("lm_head.weight", torch.float32).dtype == torch.float32
    victim = files.where["model.layers.2.mlp.up_proj.weight"]
    before = hashlib.sha256(victim.read_bytes()).hexdigest()
    victim.rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=rf"{victim.name} is missing \({INDEX} names it\); copy the checkpoint"):
        WeightFiles.find(src).get("model.layers.2.mlp.up_proj.weight")
    assert hashlib.sha256((tmp_path / "elsewhere").read_bytes()).hexdigest() == before


@pytest.mark.parametrize("header", [b"garbage\n", (3).to_bytes(8, "little") + b"[1]"])
def test_a_safetensors_file_whose_header_does_not_read_is_one_line(tmp_path, header):
    """A header length the file cannot hold (garbage read as 7e18 bytes) or a header that is not an object: the
    one-line refusal, not a MemoryError or a TypeError."""
    _model().save_pretrained(str(tmp_path / "ckpt"))
    path = tmp_path / "ckpt" / SINGLE
    path.write_bytes(header)
    with pytest.raises(UserError, match=r"not a safetensors file \(its header does not read\); copy the checkpoint"):
        WeightFiles.find(tmp_path / "ckpt")
