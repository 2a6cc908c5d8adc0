"""Token ids beyond the model's embedding rows: a tokenizer with special tokens added past the embedding table
(BOS 512 and EOS 513 on a 512-row model) is refused in one line by every command that runs the model on ids,
before any forward pass (which would die with `IndexError: index out of range in self`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from warmstart.cli import main
from warmstart.data.tokenizer import load_tokenizer

ROWS = 512


def _overgrown_tokenizer(tokenizer_dir: Path, out: Path) -> Path:
    """The 512-token test BPE with a BOS (id 512) and an EOS (id 513) added past its 512 rows, BOS added first."""
    from tokenizers import processors

    tok = load_tokenizer(str(tokenizer_dir))
    assert len(tok) == ROWS
    tok.add_special_tokens({"bos_token": "<bos>", "eos_token": "<eos>"})
    assert tok.convert_tokens_to_ids(["<bos>", "<eos>"]) == [512, 513]
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 512)])
    tok.save_pretrained(str(out))
    return out


def _model(tok_dir: Path, out: Path, rows: int = ROWS, layers: int = 2) -> Path:
    """A tiny llama with `rows` embedding rows, saved with the tokenizer of `tok_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    load_tokenizer(str(tok_dir)).save_pretrained(str(out))
    return out


def _one_line_exit_2(capsys, argv: list[str], *want: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "warmstart: error:" in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    err = lines[0]
    for w in want:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def overgrown(tmp_path_factory, tokenizer_dir) -> Path:
    root = tmp_path_factory.mktemp("overgrown")
    return _model(_overgrown_tokenizer(tokenizer_dir, root / "tok"), root / "ckpt")


def test_format_probe_refuses_ids_past_the_embedding(overgrown, tmp_path, capsys):
    texts = tmp_path / "t.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Document number {i} says something."}) + "\n" for i in range(4)))
    recipe = tmp_path / "prepare.yaml"
    recipe.write_text("tokenizer: x\nout: y\ndomains: {web: [{path: t.jsonl}]}\n")
    before = recipe.read_bytes()
    _one_line_exit_2(capsys, ["format", "probe", str(overgrown), "--text", str(texts), "--docs", "2",
                              "--write-recipe", str(recipe)],
                     "format probe: token id 51", "beyond the model's vocabulary (512 embedding rows)",
                     "the tokenizer's '<")
    assert recipe.read_bytes() == before


@pytest.fixture(scope="module")
def overgrown_data(tmp_path_factory, overgrown) -> Path:
    """Shards prepared with the overgrown tokenizer: every document starts with BOS 512 and ends with EOS 513."""
    from warmstart.data import prepare

    root = tmp_path_factory.mktemp("overgrown-data")
    src = root / "web.jsonl"
    src.write_text("".join(json.dumps({"text": f"Document {i}: the quick brown fox. " * 4}) + "\n" for i in range(30)))
    prepare({"tokenizer": str(overgrown), "out": str(root / "shards"), "domains": {"web": [{"path": str(src)}]},
             "val_docs": 4}, progress=False)
    index = json.loads((root / "shards/web/index.json").read_text())
    assert index["splits"]["val"]["max_token_id"] == 513
    return root / "shards"


def test_every_command_on_ids_refuses_them_first(overgrown, overgrown_data, tmp_path, capsys):
    """eval and inherit's sample were already checked (data's max_token_id); quality score and grow's reference
    evaluation ran the model straight into an IndexError."""
    wide = _model(overgrown, tmp_path / "wide", rows=ROWS, layers=4)
    _one_line_exit_2(capsys, ["eval", str(overgrown), "--data", str(overgrown_data), "--out", str(tmp_path / "ev")],
                     "--data: token id 513 is beyond the model's vocabulary (512 embedding rows)")
    _one_line_exit_2(capsys, ["quality", "score", "--model", str(overgrown), "--data", str(overgrown_data),
                              "--domain", "web", "--out", str(tmp_path / "rank")],
                     "token id 513 is beyond the model's vocabulary (512 embedding rows)")
    _one_line_exit_2(capsys, ["inherit", "--from", str(wide), "--layers", "2", "--rule", "angular", "--seq-len", "16", "--sample",
                              str(overgrown_data), "--out", str(tmp_path / "cut")],
                     "--sample: token id 513 is beyond the model's vocabulary")
    recipe = tmp_path / "grow.yaml"
    recipe.write_text(json.dumps({
        "name": "g", "out_dir": str(tmp_path / "runs"), "reference": {"from": str(wide), "evaluate": True},
        "data": {"dir": str(overgrown_data), "weights": {"web": 1.0}, "seq_len": 16},
        "train": {"steps": 2, "batch_tokens": 64, "micro_batch_size": 4}, "eval": {"max_tokens": 64}}))
    _one_line_exit_2(capsys, ["grow", str(recipe)], "data.dir: ", "against reference.from",
                     "token id 513 is beyond the model's vocabulary (512 embedding rows)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grow.yaml", "wide"]
