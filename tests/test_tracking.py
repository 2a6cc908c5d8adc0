"""Optional trackers: TensorBoard event files (and W&B offline runs) hold the same numbers as metrics.jsonl."""

from __future__ import annotations

import pytest
from train_helpers import tiny_recipe

from warmstart.errors import UserError
from warmstart.runtime.metrics import MetricsLog, read_metrics
from warmstart.train.loop import train


def test_tensorboard_scalars_equal_metrics_jsonl(data_dir, tokenizer_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(
        tiny_recipe(data_dir, tokenizer_dir, tmp_path, "tb", train={"trackers": ["tensorboard"]})
    ).run_dir
    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    events = read_metrics(run)
    for key in ("val/code/loss", "val/prose/loss", "train/loss", "lr"):
        want = [(m["step"], m[key]) for m in events if key in m]
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # stored as float32


def test_trackers_off_by_default(data_dir, tokenizer_dir, tmp_path):
    from warmstart.config import to_yaml

    recipe = tiny_recipe(data_dir, tokenizer_dir, tmp_path, "plain")
    assert recipe.train.trackers == []
    (tmp_path / "config.yaml").write_text(to_yaml(recipe))  # what train() writes before its first event
    MetricsLog(tmp_path / "metrics.jsonl").write({"event": "eval", "step": 0, "val/a/loss": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metrics.jsonl"]


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(tmp_path / "metrics.jsonl", trackers=["wandb"])
    log.write({"event": "eval", "step": 0, "tokens": 0, "val/a/loss": 2.5})
    log.write({"event": "eval", "step": 2, "tokens": 64, "val/a/loss": 2.0})
    log.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert [m["val/a/loss"] for m in read_metrics(tmp_path)] == [2.5, 2.0]


def test_unknown_tracker_is_rejected(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", trackers=["mlflowz"])
    with pytest.raises(UserError, match="unknown tracker 'mlflowz'"):
        log.write({"event": "eval", "step": 0})
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before anything was written
