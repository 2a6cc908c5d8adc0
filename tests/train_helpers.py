"""Tiny training recipes shared by the training-engine tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from warmstart.config import Recipe, apply_overrides, validate
from warmstart.runtime.metrics import TIMING_KEYS


def tiny_recipe_tree(data_dir: Path, tokenizer_dir: Path, out_dir: Path, name: str = "run", **sections) -> dict:
    tree = {
        "name": name,
        "out_dir": str(out_dir),
        "seed": 0,
        "data": {"dir": str(data_dir), "weights": {"code": 0.5, "prose": 0.5}, "seq_len": 32},
        "model": {"preset": "llama-tiny", "tokenizer": str(tokenizer_dir)},
        "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 8, "batch_tokens": 256, "micro_batch_size": 4, "log_every": 2, "progress": False},
        "eval": {"every": 4, "max_tokens": 256, "batch_size": 8},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


def tiny_recipe(data_dir, tokenizer_dir, out_dir, name="run", overrides=None, **sections) -> Recipe:
    tree = apply_overrides(tiny_recipe_tree(data_dir, tokenizer_dir, out_dir, name, **sections), overrides)
    return validate(Recipe, tree)


def metrics_without_timing(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-for-bit equal safetensors files' tensors."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
