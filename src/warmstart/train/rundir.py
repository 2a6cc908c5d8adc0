"""The run directory: what is in it, who holds it, and what starting or resuming does with it.

    RUN_DIR/
        .lock           flock-ed by the one process that trains the run, for the run's life; removed at its end
        config.yaml     the recipe, written before step 1
        metrics.jsonl   one event per line (warmstart.train.metrics)
        checkpoints/    step-NNNNNNNN/ (warmstart.train.checkpoint); .tmp-step-* while one is written
        final/          the Hugging Face checkpoint of the last step; .final.*.tmp while it is written
        summary.json    written last; with its final eval and final/ it means the run is finished

`plan` decides, under the lock, what a `train` call does: start fresh, start again (an earlier attempt that
stopped before its first checkpoint: nothing to keep, nothing to delete by hand), resume from the newest intact
checkpoint (including one taken at the last step: the run then only finishes), or nothing (already finished).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import yaml

from warmstart.config import Recipe
from warmstart.errors import UserError, warn
from warmstart.train import checkpoint as ckpt
from warmstart.train.distributed import Dist, broadcast_object

LOCK = ".lock"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
SUMMARY = "summary.json"

T = TypeVar("T")


def planned_steps(recipe: Recipe) -> int:
    """The run's optimizer steps: train.steps, else train.tokens // train.batch_tokens (UserError if < 1)."""
    total = recipe.train.steps or recipe.train.tokens // recipe.train.batch_tokens
    if total <= 0:
        raise UserError(f"train.tokens: {recipe.train.tokens} is less than one batch ({recipe.train.batch_tokens})")
    return total


def on_main(d: Dist, fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only; its result, or its UserError, on every rank."""
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
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        except OSError as e:
            raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror})") from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock and its file; remove the folders the lock created if nothing else was written in them."""
        if self._fd is None:
            return
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
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------------- what is there
def read_config(run_dir: Path) -> dict | None:
    """RUN_DIR/config.yaml as a tree; None when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text())
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


def _contents(run_dir: Path) -> list[Path]:
    """What RUN_DIR holds besides the lock and stale temps."""
    if not run_dir.is_dir():
        return []
    temps = set(stale_temps(run_dir))
    return [p for p in run_dir.iterdir() if p.name != LOCK and p not in temps]


def _last_logged_step(run_dir: Path) -> int:
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


def logged_eval(run_dir: Path, step: int) -> dict:
    """The values of metrics.jsonl's last eval event at `step` (what `run_eval` returned then); {} if none."""
    from warmstart.train.metrics import read_metrics

    evals = [m for m in read_metrics(run_dir) if m.get("event") == "eval" and m["step"] == step]
    if not evals:
        return {}
    return {k: v for k, v in evals[-1].items() if k not in ("event", "step", "tokens", "flops", "lr")}


# ----------------------------------------------------------------------------------------------- the decision
@dataclass
class Plan:
    action: Literal["fresh", "restart", "resume", "finished"]
    checkpoint: Path | None = None  # for "resume"
    summary: dict | None = None  # for "finished"
    note: str = ""  # one line for the user (restart: why)


def _first_checkpoint_step(recipe: Recipe, old: dict | None) -> int:
    total = planned_steps(recipe)
    everies = [recipe.train.checkpoint_every, ((old or {}).get("train") or {}).get("checkpoint_every")]
    return min([total] + [e for e in everies if isinstance(e, int) and e > 0])


def _no_checkpoint(recipe: Recipe, old: dict | None) -> Plan:
    """No checkpoint folder at all: a restart, unless metrics.jsonl shows there were checkpoints once."""
    run_dir = recipe.run_dir
    first, last = _first_checkpoint_step(recipe, old), _last_logged_step(run_dir)
    if last > first:  # events after step `first` are only written once its checkpoint is complete
        where = "is missing" if not (run_dir / CHECKPOINTS).is_dir() else "holds no checkpoint"
        raise UserError(
            f"{run_dir}: {CHECKPOINTS}/ {where}, yet {METRICS} reaches step {last}, past the first checkpoint "
            f"(step {first}): the checkpoints were deleted or moved; put them back, or delete {run_dir} and start "
            "the run again"
        )
    return Plan("restart", note=f"{run_dir}: no checkpoint yet (the earlier attempt stopped before step {first}); "
                                "starting it again from step 0")


def plan(recipe: Recipe, resume: bool, changed: list[str], allow_config_change: bool, existed: bool = True) -> Plan:
    """What `train` does with RUN_DIR (call with the lock held; `changed`: config.yaml's keys that differ from
    the recipe's; `existed`: RUN_DIR was there before the lock was taken).

    Raises UserError, leaving every file as it was, when the directory holds something else, another recipe's
    run, or a run that cannot be resumed (and then says what was found and why each checkpoint was rejected).
    Stale temp files are removed when the run goes ahead.
    """
    run_dir = recipe.run_dir
    old = read_config(run_dir)
    contents = _contents(run_dir)
    if old is None:
        if contents:
            raise UserError(
                f"{run_dir}: run directory exists and is not a warmstart run (no {CONFIG}); "
                "choose another name / out_dir"
            )
        if resume and not existed:
            raise UserError(f"{run_dir}: nothing to resume (no config.yaml); drop --resume to start the run")
        remove_stale_temps(run_dir)
        return Plan("fresh", note=f"{run_dir}: nothing to resume yet; starting from step 0" if resume else "")
    if changed and not (resume and allow_config_change):
        if resume:
            raise UserError(
                f"{run_dir}: --resume with a changed recipe ({', '.join(changed)}); resume continues the same run — "
                "start a new run with init.from to switch data or schedule, or pass --allow-config-change"
            )
        raise UserError(
            f"{run_dir}: run directory exists and holds a run of a different recipe ({', '.join(changed)}); "
            "choose another name / out_dir"
        )
    checkpoints = ckpt.scan(run_dir / CHECKPOINTS)
    if not resume:
        if (run_dir / SUMMARY).exists() or (run_dir / FINAL).exists() or next(checkpoints, None) is not None:
            raise UserError(
                f"{run_dir}: run directory exists; use --resume to continue it, or choose another name / out_dir"
            )
        decision = _no_checkpoint(recipe, old)
        remove_stale_temps(run_dir)
        return decision
    if unfinished(run_dir, recipe) is None:
        return Plan("finished", summary=read_summary(run_dir))
    rejected = []
    for path, problem in checkpoints:
        if problem is None:
            remove_stale_temps(run_dir)
            return Plan("resume", checkpoint=path)
        warn(f"checkpoint {path} is damaged ({problem}); skipped")
        rejected.append(f"{path.name} ({problem})")
    if rejected:
        raise UserError(
            f"{run_dir}: no intact checkpoint to resume from; found {len(rejected)}, all rejected: "
            f"{'; '.join(rejected)}. Delete {run_dir} and start the run again"
        )
    decision = _no_checkpoint(recipe, old)
    remove_stale_temps(run_dir)
    return decision
