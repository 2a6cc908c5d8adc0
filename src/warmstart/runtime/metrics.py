"""metrics.jsonl: one JSON object per event, appended; a resumed run truncates to its checkpoint's offset.

A line cut short (a crash or a full disk mid-write) is cut off before anything is appended, so the file stays
one whole event per line; `read_metrics` names a corrupt line as `file:line` (UserError).

metrics.jsonl is the source of truth. Optional trackers (TensorBoard, W&B in offline mode; `train.trackers`)
receive a copy of every event's numbers; they are told nothing the file does not hold.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from warmstart import jsonfile
from warmstart.errors import UserError, warn
from warmstart.runtime import rundir

TIMING_KEYS = ("tokens_per_s", "mfu", "elapsed_s")  # wall-clock dependent; everything else is reproducible


class MetricsLog:
    """Appends events to `path`; fans them out to trackers.

    `trackers` None means: the `train.trackers` list of the run's config.yaml (next to metrics.jsonl), read at
    the first write — the loop writes config.yaml before any event, so a recipe's choice reaches here unchanged.
    """

    def __init__(self, path: Path, enabled: bool = True, trackers: list[str] | None = None):
        self.path = path
        self.enabled = enabled
        self._tracker_names = trackers
        self._trackers: list | None = None
        self._resumed = False

    def truncate(self, offset: int) -> None:
        """Drop events written after a checkpoint, so a resumed run re-writes them exactly once.

        The cut lands on a line boundary: at `offset` itself (where the checkpoint's last event ended), or, when
        the file is shorter than that (lost writes) or was edited, at the end of the last whole line before it.
        """
        if not (self.enabled and self.path.exists()):
            return
        size = self.path.stat().st_size
        with open(self.path, "r+b") as f:
            keep = _line_start(f, min(offset, size))
            if size < offset:
                warn(f"{self.path} is shorter than at the checkpoint ({size} of {offset} bytes; lost writes?); "
                     f"kept its {keep} bytes of whole lines, the events after them are missing")
            elif keep < offset:
                warn(f"{self.path}: the checkpoint's offset {offset} is inside a line (edited?); cut at byte {keep}")
            f.truncate(keep)
        self._resumed = True

    def _cut_partial_tail(self) -> None:
        """Before appending to a file whose last line was cut short: drop that fragment (with a warning)."""
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        with open(self.path, "r+b") as f:
            keep = _line_start(f, size)
            if keep < size:
                warn(f"{self.path}: its last line was cut short ({size - keep} bytes, no newline); removed it")
                f.truncate(keep)

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
        line = jsonfile.dumps(event) + "\n"
        if self._trackers is None:  # opened before the first line, so a bad tracker setting writes nothing
            from warmstart.runtime.tracking import open_trackers

            names = self._tracker_names
            if names is None:
                names = _configured_trackers(rundir.config_path(self.path.parent))
            self._trackers = open_trackers(names, self.path.parent, event.get("step") if self._resumed else None)
            self._cut_partial_tail()
        # flushed to the OS on every event (a killed process loses nothing); checkpoints fsync what they need
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
        for t in self._trackers:
            t.log(event)

    def close(self) -> None:
        for t in self._trackers or []:
            t.close()
        self._trackers = None


def _configured_trackers(config_path: Path) -> list[str]:
    if not config_path.is_file():
        return []
    cfg = rundir.read_config(config_path.parent) or {}
    return list((cfg.get("train") or {}).get("trackers") or [])


def _line_start(f, upto: int) -> int:
    """The largest position <= `upto` that starts a line of the open binary file `f` (0 or just after a newline)."""
    pos = upto
    while pos > 0:
        start = max(0, pos - 65536)
        f.seek(start)
        chunk = f.read(pos - start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every event of RUN_DIR/metrics.jsonl, in file order ([] when there is no file).

    Raises UserError `metrics.jsonl:LINE: ...` in one line for a line that is not a JSON object (a line cut short
    by a crash or a full disk, a list, a bare value) or an event without an integer `step`.
    """

    path = rundir.metrics_path(run_dir)
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (damaged file)") from None
    events = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}; a line cut short by a "
                            "crash?); remove that line") from None
        if not isinstance(event, dict):
            raise UserError(f"{path}:{lineno}: expected one JSON object per line, got a {type(event).__name__}")
        step = event.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise UserError(f"{path}:{lineno}: event without an integer 'step' (got {step!r})")
        events.append(event)
    return events


def logged_eval(run_dir: Path, step: int) -> dict:
    """The values of metrics.jsonl's last eval event at `step` (what `run_eval` returned then); {} if none."""
    evals = [m for m in read_metrics(run_dir) if m.get("event") == "eval" and m["step"] == step]
    if not evals:
        return {}
    return {k: v for k, v in evals[-1].items() if k not in ("event", "step", "tokens", "flops", "lr")}
