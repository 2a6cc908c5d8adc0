"""metrics.jsonl: one JSON object per event, appended; a resumed run truncates to its checkpoint's offset."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

TIMING_KEYS = ("tokens_per_s", "mfu", "elapsed_s")  # wall-clock dependent; everything else is reproducible


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate(self, offset: int) -> None:
        """Drop events written after a checkpoint, so a resumed run re-writes them exactly once."""
        if self.enabled and self.path.exists():
            if self.path.stat().st_size < offset:
                warnings.warn(
                    f"{self.path} is shorter than at the checkpoint (lost writes?); events may be missing",
                    stacklevel=2,
                )
                return
            with open(self.path, "r+b") as f:
                f.truncate(offset)

    def sync(self) -> None:
        """fsync, so the offset a checkpoint records is on disk before the checkpoint is."""
        if self.enabled and self.path.exists():
            with open(self.path, "rb") as f:
                os.fsync(f.fileno())

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def write(self, event: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _clean(v) for k, v in event.items()}) + "\n"
        # flushed to the OS on every event (a killed process loses nothing); checkpoints fsync what they need
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
