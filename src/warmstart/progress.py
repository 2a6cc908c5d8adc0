"""Progress of long work on stderr: a live tqdm bar on a terminal; in a log (stderr not a terminal) one plain line
at most every `interval_s` seconds, never carriage-return redraws.

tqdm redraws its bar with `\\r`; in a file every redraw is kept, so a log of the 4-minute demo held one
93,089-character line of 963 updates. Every progress bar in warmstart comes from `bar()`. The log interval is
`WARMSTART_PROGRESS_S` seconds (default 30; 0: a line at every update).
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

DEFAULT_INTERVAL_S = 30.0


class _Lines:
    """A file for tqdm that keeps each redraw as one line and drops the `\\r` and the clearing writes."""

    def __init__(self, fp):
        self.fp = fp

    def write(self, s: str) -> None:
        text = s.replace("\r", "").strip()
        if text:
            self.fp.write(text + "\n")

    def flush(self) -> None:
        self.fp.flush()


def on_terminal(fp=None) -> bool:
    """True when `fp` (default: stderr) is an interactive terminal."""
    fp = sys.stderr if fp is None else fp
    try:
        return bool(fp.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def log_interval_s() -> float:
    """Seconds between progress lines in a log: WARMSTART_PROGRESS_S, default 30."""
    raw = os.environ.get("WARMSTART_PROGRESS_S", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def bar(total: float | None = None, *, enabled: bool = True, desc: str | None = None, unit: str = "it",
        initial: int = 0, leave: bool = True) -> tqdm:
    """A progress bar on stderr (tqdm's interface: update, set_postfix, close, context manager).

    On a terminal: tqdm's live bar. Otherwise: a line such as `train: 40/300 step (13%), 00:12 elapsed, ~01:18
    left, 3.2 step/s, loss=4.1` at most every `log_interval_s()` seconds, the first one only after that long
    (a short job writes nothing), none at all when `enabled` is False.
    """
    if on_terminal():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not enabled,
                    dynamic_ncols=True)
    every = log_interval_s()
    word = unit.strip()
    counted = "{n_fmt}/{total_fmt} " + word + " ({percentage:.0f}%), {elapsed} elapsed, ~{remaining} left"
    fmt = (counted if total else "{n_fmt} " + word + ", {elapsed} elapsed") + ", {rate_fmt}{postfix}"
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not enabled,
                file=_Lines(sys.stderr), mininterval=every, miniters=1, delay=every,
                bar_format=("{desc}: " if desc else "") + fmt)
