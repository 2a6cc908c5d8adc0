"""Data-parallel training with real torchrun processes (gloo on CPU): DDP and FSDP2 equal the single-process run,
and a checkpoint of any layout resumes on any number of processes, in either layout, to the same result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from train_helpers import tiny_recipe_tree
from transformers import AutoModelForCausalLM

from warmstart.runtime.metrics import read_metrics
from warmstart.train import checkpoint as ckpt

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
pytestmark = pytest.mark.skipif(not os.path.exists(TORCHRUN) and shutil.which("torchrun") is None,
                                reason="torchrun not installed")
STEPS, CUT = 6, 3  # checkpoints at 3 and 6; a resume from 3 re-runs steps 4-6


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def _train(recipe: Path, procs: int, *extra: str) -> None:
    if procs == 1:
        _run([sys.executable, "-m", "warmstart", "train", str(recipe), *extra])
    else:
        _run([TORCHRUN, "--standalone", "--nproc-per-node", str(procs), "-m", "warmstart", "train", str(recipe),
              *extra])


def _recipe(tmp: Path, tree: dict, name: str, parallel: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**tree, "name": name, "train": {**tree["train"], "parallel": parallel}}))
    return path


def _same_numbers(a: list[dict], b: list[dict]) -> None:
    """Same events at the same steps, losses and gradient norms within float tolerance."""
    assert [(r["event"], r["step"]) for r in a] == [(r["event"], r["step"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key, va in ra.items():
            if key.startswith(("train/loss", "val/", "grad_norm")) and va is not None:
                assert rb[key] == pytest.approx(va, rel=2e-4, abs=1e-5), (ra["step"], key, va, rb[key])


def _same_checkpoint_and_final(run: Path) -> None:
    """The last checkpoint (sharded or not), loaded into one plain model, is final/ bit for bit."""
    model = AutoModelForCausalLM.from_pretrained(str(run / "final"))
    want = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.data.zero_()
    ckpt.load_into(ckpt.step_dir(run / "checkpoints", STEPS), model, None, 0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def _close_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.fixture(scope="module")
def runs(data_dir, tokenizer_dir, tmp_path_factory):
    """Uninterrupted runs of one recipe: one process, 2 DDP processes, 2 FSDP processes.

    16 sequences per step: one process accumulates 4 micro-batches of 4, two processes 2 each. 5 validation
    sequences per domain in batches of 2: under two processes one rank has a batch fewer (a sharded model must
    still run it). Gradients are clipped at 0.5, below every step's norm (0.76-0.88), so clipping acts on every
    step (sharded gradients included): without it losses differ by ~3e-3, 10x the tolerance below."""
    tmp = tmp_path_factory.mktemp("dist")
    tree = tiny_recipe_tree(
        data_dir, tokenizer_dir, tmp / "runs", "x",
        train={"steps": STEPS, "batch_tokens": 512, "micro_batch_size": 4, "log_every": 2,
               "checkpoint_every": CUT, "keep_checkpoints": 2},
        eval={"every": CUT, "max_tokens": 160, "batch_size": 2, "windows": "packed"}, optim={"grad_clip": 0.5},
    )
    _train(_recipe(tmp, tree, "single", "ddp"), 1)
    _train(_recipe(tmp, tree, "ddp", "ddp"), 2)
    _train(_recipe(tmp, tree, "fsdp", "fsdp"), 2)
    return tmp, tree


def test_two_process_ddp_and_fsdp_match_single_process(runs):
    tmp, _ = runs
    single, ddp, fsdp = (tmp / "runs" / n for n in ("single", "ddp", "fsdp"))
    a = read_metrics(single)
    assert len([r for r in a if r["event"] == "train"]) == STEPS // 2
    for other in (ddp, fsdp):
        _same_numbers(a, read_metrics(other))
        _close_weights(single, other)
        # rank 0 alone wrote the run's final/: one plain HF checkpoint, the same files as one process writes
        assert sorted(p.name for p in (other / "final").iterdir()) == sorted(p.name for p in (single / "final").iterdir())
    _same_checkpoint_and_final(fsdp)
    model = AutoModelForCausalLM.from_pretrained(str(fsdp / "final"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    # FSDP's checkpoint holds each process's half of a block's weight; DDP's holds it whole
    key = "model.model.layers.0.mlp.up_proj.weight"
    for run, rows in ((fsdp, [(0, 86), (86, 86)]), (ddp, [(0, 172)])):
        meta = FileSystemReader(str(ckpt.step_dir(run / "checkpoints", CUT))).read_metadata()
        assert [(c.offsets[0], c.sizes[0]) for c in meta.state_dict_metadata[key].chunks] == rows


def _resume(tmp: Path, tree: dict, source: str, name: str, procs: int, parallel: str) -> Path:
    """A copy of run `source` as it was at step CUT (its checkpoint and metrics), resumed under a new layout."""
    src, dst = tmp / "runs" / source, tmp / "runs" / name
    cut = ckpt.step_dir(src / "checkpoints", CUT)
    shutil.copytree(cut, ckpt.step_dir(dst / "checkpoints", CUT))
    shutil.copy(src / "metrics.jsonl", dst / "metrics.jsonl")
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    (dst / "config.yaml").write_text(yaml.safe_dump({**cfg, "name": name}))
    _train(_recipe(tmp, tree, name, parallel), procs, "--resume")
    return dst


def test_resume_on_other_process_counts_and_layouts(runs):
    """2 FSDP -> 1, 1 -> 2 DDP, 2 DDP -> 2 FSDP: each continues to the uninterrupted result, including the first
    train/loss logged after the resume (step 4: its window holds step 3, from before the checkpoint)."""
    tmp, tree = runs
    single = tmp / "runs" / "single"
    reference = read_metrics(single)
    for source, name, procs, parallel in [("fsdp", "fsdp-to-1", 1, "ddp"), ("single", "1-to-ddp", 2, "ddp"),
                                          ("ddp", "ddp-to-fsdp", 2, "fsdp")]:
        dst = _resume(tmp, tree, source, name, procs, parallel)
        got = read_metrics(dst)
        # the events before the checkpoint are the source run's own lines, kept byte for byte
        assert [r for r in got if r["step"] <= CUT] == [r for r in read_metrics(tmp / "runs" / source)
                                                        if r["step"] <= CUT], name
        _same_numbers(reference, got)
        first = next(r for r in got if r["event"] == "train" and r["step"] > CUT)
        want = next(r for r in reference if r["event"] == "train" and r["step"] > CUT)
        assert first["step"] == CUT + 1 and first["train/loss"] == pytest.approx(want["train/loss"], rel=2e-4)
        _close_weights(single, dst)
        _same_checkpoint_and_final(dst)
        assert ckpt.load_state(ckpt.step_dir(dst / "checkpoints", STEPS))["world"] == procs


def test_two_process_masked_lm_matches_single_process(data_dir, tokenizer_dir, tmp_path):
    """Masked LM: each process predicts a different number of tokens; the step is still the single-process one
    (the loss is divided by the predicted tokens of the whole global batch)."""
    tree = tiny_recipe_tree(
        data_dir, tokenizer_dir, tmp_path / "runs", "x", model={"preset": "bert-tiny", "objective": "masked"},
        train={"steps": 3, "batch_tokens": 512, "micro_batch_size": 4, "log_every": 1}, eval={"every": 3},
    )
    _train(_recipe(tmp_path, tree, "single", "ddp"), 1)
    _train(_recipe(tmp_path, tree, "ddp", "ddp"), 2)
    a, b = read_metrics(tmp_path / "runs" / "single"), read_metrics(tmp_path / "runs" / "ddp")
    la, lb = ([r["train/loss"] for r in m if r["event"] == "train"] for m in (a, b))
    assert len(la) == 3 and lb == pytest.approx(la, rel=1e-5)
    wa = load_file(str(tmp_path / "runs" / "single" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "runs" / "ddp" / "final" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=2e-6), k


def test_bad_input_under_torchrun_is_one_line_and_torchruns_root_cause(tmp_path):
    """Every worker meets the same bad recipe: rank 0 prints the one line, and torchrun's own failure report names
    it as the root cause (its error file) instead of pointing to its docs."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "out_dir": str(tmp_path / "runs"),
                                      "data": {"dir": str(tmp_path / "nodata"), "seq_len": 16},
                                      "model": {"preset": "llama-tiny", "tokenizer": "t"},
                                      "train": {"steps": 2, "batch_tokens": 64}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "warmstart", "train", str(recipe)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("warmstart: error:")]
    assert len(lines) == 1 and "nodata" in lines[0], res.stderr[-3000:]
    assert f"traceback : {lines[0]}" in res.stderr  # torchrun's Root Cause section
    assert "To enable traceback see" not in res.stderr
