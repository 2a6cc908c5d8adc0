"""Optional experiment trackers fed from the metrics events: TensorBoard and Weights & Biases (offline).

Both are extras (`warmstart[tensorboard]`, `warmstart[wandb]`) and off by default. Every numeric value of an event
becomes a scalar at the event's step under its metrics.jsonl key (`val/code/loss`, `train/loss`, `lr`, ...).
W&B runs in offline mode unless WANDB_MODE says otherwise; `wandb sync RUN_DIR/wandb/offline-run-*` uploads it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from warmstart.errors import UserError

SKIP = ("event", "step")


def _scalars(event: dict) -> dict[str, float]:
    out = {}
    for k, v in event.items():
        if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        out[k] = float(v)
    return out


class TensorBoardTracker:
    """Event files under RUN_DIR/tensorboard; a resumed run purges the steps it is about to re-log."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "train.trackers: tensorboard is not installed; pip install 'warmstart[tensorboard]' "
                "or drop it from train.trackers"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, event: dict) -> None:
        step = int(event.get("step", 0))
        for k, v in _scalars(event).items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per run directory (id = the directory name), offline unless WANDB_MODE is set."""

    def __init__(self, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise UserError(
                "train.trackers: wandb is not installed; pip install 'warmstart[wandb]' or drop it from train.trackers"
            ) from None
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "warmstart"),
            name=run_dir.name,
            id=run_dir.name,
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            resume="allow",
        )

    def log(self, event: dict) -> None:
        self.run.log(_scalars(event), step=int(event.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: list[str], run_dir: Path, purge_step: int | None = None) -> list:
    """The trackers named in `train.trackers`, opened on RUN_DIR (an unknown name is a one-line error)."""
    out = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardTracker(run_dir, purge_step))
        elif name == "wandb":
            out.append(WandbTracker(run_dir))
        else:
            raise UserError(f"train.trackers: unknown tracker {name!r} (have: tensorboard, wandb)")
    return out
