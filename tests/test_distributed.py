"""Data-parallel training with real torchrun processes (gloo on CPU) equals the single-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml
from train_helpers import tiny_recipe_tree

from warmstart.train.metrics import read_metrics


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_two_process_ddp_matches_single_process(data_dir, tokenizer_dir, tmp_path):
    tree = tiny_recipe_tree(
        data_dir, tokenizer_dir, tmp_path / "runs", "single",
        train={"steps": 6, "batch_tokens": 512, "micro_batch_size": 4, "log_every": 1, "checkpoint_every": 3},
        eval={"every": 3},
    )
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(tree))
    ddp = tmp_path / "ddp.yaml"
    ddp.write_text(yaml.safe_dump({**tree, "name": "ddp"}))
    _run([sys.executable, "-m", "warmstart", "train", str(single)])
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    _run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "warmstart", "train", str(ddp)])

    a, b = read_metrics(tmp_path / "runs" / "single"), read_metrics(tmp_path / "runs" / "ddp")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert len([r for r in b if r["event"] == "train"]) == 6
    for ra, rb in zip(a, b, strict=True):
        for key, va in ra.items():
            if key.startswith(("train/loss", "val/")) and va is not None:
                assert rb[key] == pytest.approx(va, rel=2e-4, abs=1e-5), (ra["step"], key)
    # rank 0 alone wrote the run: one metrics file, one final checkpoint
    assert (tmp_path / "runs" / "ddp" / "final" / "model.safetensors").exists()
