"""The run directory: its file names, who holds it, and reading and writing what is in it.

    RUN_DIR/
        .lock           flock-ed by the one process that trains the run, for the run's life; removed at its end
        config.yaml     the recipe, written before step 1
        metrics.jsonl   one event per line (warmstart.runtime.metrics)
        checkpoints/    step-NNNNNNNN/ (warmstart.train.checkpoint); .tmp-step-* while one is written
        final/          the Hugging Face checkpoint of the last step; .final.*.tmp while it is written
        summary.json    written last; with its final eval and final/ it means the run is finished

This module is the only place those names are spelled: everything else asks for `config_path(run_dir)`,
`final_dir(run_dir)`, ... or reads through `read_config` / `read_summary` / `read_metrics`. What a `train` call
does with an existing directory (start, restart, resume, nothing) is `warmstart.train.run_plan`.
A lock left by a process that died is no lock (the kernel drops an flock with its holder), so it is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml

from warmstart import atomic
from warmstart.config import DuplicateKeyError, Recipe, load_yaml
from warmstart.errors import UserError

LOCK = ".lock"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
SUMMARY = "summary.json"

if TYPE_CHECKING:  # torch is imported only by what trains or evaluates: the CLI checks arguments first
    from warmstart.runtime.distributed import Dist

T = TypeVar("T")


def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def final_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / FINAL


def summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUMMARY


def is_run_dir(path: str | Path) -> bool:
    """Whether PATH looks like a warmstart run directory (it has a config.yaml or a final/)."""
    return config_path(path).is_file() or final_dir(path).is_dir()


def run_of_checkpoint(path: str | Path) -> Path | None:
    """The finished warmstart run a checkpoint path names: the run directory itself or its final/ (with its
    config.yaml and summary.json); None for any other path."""
    p = Path(path)
    for cand in (p, p.parent) if p.name == FINAL else (p,):
        if summary_path(cand).is_file() and config_path(cand).is_file():
            return cand
    return None


def load_summary(run_dir: str | Path) -> dict:
    """RUN_DIR/summary.json, which must be there; UserError naming the file when it is missing or damaged."""
    from warmstart.jsonfile import read_json_object

    path = summary_path(run_dir)
    try:
        return read_json_object(path, "summary", "it is not the summary.json warmstart wrote; re-run the run")
    except OSError:
        raise UserError(f"{path}: missing (the run is not finished); resume it first") from None


def write_config(run_dir: Path, text: str) -> None:
    """RUN_DIR/config.yaml, atomically."""
    atomic.write_text(config_path(run_dir), text)


def write_summary(run_dir: Path, summary: dict) -> None:
    """RUN_DIR/summary.json, atomically: written last, it marks the run finished (with final/ and the final eval)."""
    atomic.write_json(summary_path(run_dir), summary)


def planned_steps(recipe: Recipe) -> int:
    """The run's optimizer steps: train.steps, else train.tokens // train.batch_tokens (UserError if < 1)."""
    total = recipe.train.steps or recipe.train.tokens // recipe.train.batch_tokens
    if total <= 0:
        raise UserError(f"train.tokens: {recipe.train.tokens} is less than one batch ({recipe.train.batch_tokens})")
    return total


def on_main(d: Dist, fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only; its result, or its UserError, on every rank."""
    from warmstart.runtime.distributed import broadcast_object

    result, error = None, None
    if d.is_main:
        try:
            result = fn()
        except UserError as e:
            error = str(e)
    result, error = broadcast_object((result, error), d)
    if error is not None:
        raise UserError(error)
    return result


# ----------------------------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive flock on RUN_DIR/.lock; the file holds the holder's pid, host and start time."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.created_dir = False
        self._created: list[Path] = []  # RUN_DIR and the parents the lock had to create, innermost first
        self._fd: int | None = None
        self.stale = ""  # what a process killed without a clean stop left in the lock file (`unclean_stop`)

    def acquire(self) -> None:
        """Take the lock (creating RUN_DIR); UserError when another live process holds it or RUN_DIR is unusable."""
        run_dir = self.run_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir}: exists and is not a directory; choose another name or out_dir")
        try:
            self._created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
            self.created_dir = bool(self._created)
            run_dir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
                    os.close(fd)
                    raise UserError(
                        f"{run_dir}: in use by another warmstart process ({holder}); wait for it to end or stop it"
                    ) from None
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # its holder removed the file between our open and our lock: lock the new one
            self.stale = os.pread(fd, 200, 0).decode(errors="replace")
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        except OSError as e:
            raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror})") from None
        self._fd = fd

    def release(self, refused: bool = False) -> None:
        """Drop the lock and its file; remove the folders the lock created if nothing else was written in them.
        `refused`: this process stopped before running (bad input); a killed run's record is put back as found."""
        if self._fd is None:
            return
        if refused and self.stale:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, self.stale.encode(), 0)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still holding it, so no one locks a file that is about to vanish
        os.close(self._fd)
        self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                break


@contextlib.contextmanager
def held(run_dir: Path, d: Dist) -> Iterator[RunLock]:
    """The run directory's lock, taken by rank 0 for every rank, for the duration."""
    lock = RunLock(run_dir)
    on_main(d, lock.acquire)
    try:
        yield lock
    except UserError:
        lock.release(refused=True)  # refused before the run: a killed run's record stays for the next command
        raise
    finally:
        lock.release()


def unclean_stop(run_dir: Path) -> str | None:
    """How RUN_DIR's last process ended, when it did not stop cleanly: a clean stop (finished, an error, SIGTERM
    or Ctrl-C) removes the lock file, so a lock file that no live process holds is what SIGKILL or the OS's
    out-of-memory killer leaves behind. Returns one line naming the process, the step its metrics reached and
    the last checkpoint; None when the run stopped cleanly, or is running now."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # held: running now
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a warmstart process"
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    step = last_logged_step(Path(run_dir))
    ckpts = sorted(p.name for p in checkpoints_dir(run_dir).glob("step-*") if p.is_dir())
    reached = f"after step {step}" if step >= 0 else "before its first logged step"
    saved = f"its last checkpoint is {ckpts[-1]}" if ckpts else "it wrote no checkpoint"
    return (f"{run_dir}: the run did not stop cleanly ({holder} was killed {reached}, by SIGKILL or the "
            f"out-of-memory killer); {saved}")


def say_unclean_stop(run_dir: Path) -> None:
    """Warn once when RUN_DIR's last process was killed without a clean stop (`unclean_stop`)."""
    line = unclean_stop(run_dir)
    if line:
        from warmstart.errors import warn

        warn(line)


# ----------------------------------------------------------------------------------------------- what is there
def read_config(run_dir: Path) -> dict | None:
    """RUN_DIR/config.yaml as a tree; None when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        tree = load_yaml(path.read_text())
    except DuplicateKeyError as e:
        raise UserError(f"{path}: {e.problem}; it is not the config.yaml warmstart wrote") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e.__class__.__name__}); it is not the config.yaml warmstart wrote") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: not a recipe (a YAML mapping); it is not the config.yaml warmstart wrote")
    return tree


def read_summary(run_dir: Path) -> dict | None:
    """RUN_DIR/summary.json; None when missing or unreadable."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def unfinished(run_dir: Path, recipe: Recipe) -> str | None:
    """None when the run of `recipe` in RUN_DIR is finished; else what is missing, in a few words.

    Finished: summary.json readable, at the recipe's last step, holding the final eval (unless the recipe
    evaluates nothing), and final/ present. A summary written by a crash-interrupted finish lacks one of these.
    """
    run_dir = Path(run_dir)
    if not (run_dir / SUMMARY).is_file():
        return "no summary.json"
    summary = read_summary(run_dir)
    if summary is None:
        return "summary.json is unreadable"
    total = planned_steps(recipe)
    if summary.get("steps") != total:
        return f"summary.json is at step {summary.get('steps')}, not {total}"
    evaluates = recipe.eval.domains != [] or bool(recipe.eval.tasks)
    if not isinstance(summary.get("final_eval"), dict) or (evaluates and not summary["final_eval"]):
        return "summary.json has no final evaluation"
    if not (run_dir / FINAL).is_dir():
        return "final/ is missing"
    return None


def finished_summary(run_dir: Path, recipe: Recipe) -> dict | None:
    """summary.json of a finished run (see `unfinished`); None when the run is not finished."""
    return read_summary(run_dir) if unfinished(run_dir, recipe) is None else None


def stale_temps(run_dir: Path) -> list[Path]:
    """Temp files and folders a killed process left: `.final.*.tmp/.old`, `.NAME.*.tmp`, `checkpoints/.tmp-*`."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(".*.tmp")] + [p for p in run_dir.glob(f".{FINAL}.*.old")]
    found += list((run_dir / CHECKPOINTS).glob(".tmp-*"))
    return sorted(found)


def remove_stale_temps(run_dir: Path) -> None:
    for p in stale_temps(run_dir):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def contents(run_dir: Path) -> list[Path]:
    """What RUN_DIR holds besides the lock and stale temps."""
    if not run_dir.is_dir():
        return []
    temps = set(stale_temps(run_dir))
    return [p for p in run_dir.iterdir() if p.name != LOCK and p not in temps]


def last_logged_step(run_dir: Path) -> int:
    """The highest step among metrics.jsonl's readable events (-1 when none); corrupt lines are passed over."""
    path = run_dir / METRICS
    last = -1
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("step"), int):
                    last = max(last, event["step"])
    return last
