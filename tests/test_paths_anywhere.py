"""What a run or data directory records resolves wherever the user stands: a run trained with relative paths
from one directory is read by later commands started from another."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from train_helpers import tiny_recipe

from warmstart.config import GrowRecipe, validate
from warmstart.recipes.inheritune import reference_loss
from warmstart.report.data import load_run
from warmstart.report.saved import eval_differences
from warmstart.train.loop import train


def _run_from(where: Path, data_dir: Path, tokenizer_dir: Path, name: str, monkeypatch, **sections) -> Path:
    """A tiny run trained from `where`, its recipe naming the data, tokenizer and out_dir relative to it."""
    where.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(where)
    recipe = tiny_recipe(Path(os.path.relpath(data_dir, where)), Path(os.path.relpath(tokenizer_dir, where)),
                         Path("runs"), name, train={"steps": 2}, eval={"every": 2, "max_tokens": 64}, **sections)
    train(recipe)
    return where / "runs" / name


def test_a_run_recorded_from_one_directory_is_read_from_another(data_dir, tokenizer_dir, tmp_path, monkeypatch):
    a = _run_from(tmp_path / "a", data_dir, tokenizer_dir, "base", monkeypatch)
    b = _run_from(tmp_path / "a", data_dir, tokenizer_dir, "other", monkeypatch)
    cfg = yaml.safe_load((a / "config.yaml").read_text())
    assert cfg["data"]["dir"] == str(data_dir) and cfg["model"]["tokenizer"] == str(tokenizer_dir)
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # report: the eval data and tokenizer of both runs are found and compared, not left unchecked
    problems, unchecked = eval_differences(load_run(b, "other"), load_run(a, "base"), "val/avg/loss")
    assert problems == [] and unchecked == []
    # grow: the reference run's data is this recipe's data, seen from here
    tree = {"name": "g", "out_dir": str(tmp_path / "g"), "reference": {"from": str(a)},
            "data": {"dir": str(data_dir), "seq_len": 32}, "train": {"steps": 2, "batch_tokens": 256},
            "eval": {"max_tokens": 64}}
    loss, source = reference_loss(validate(GrowRecipe, tree), a / "final")
    assert source == "summary" and loss == json.loads((a / "summary.json").read_text())["final_eval"]["val/avg/loss"]
