"""Downstream tasks through lm-evaluation-harness (the optional `lm-eval` extra), on an in-memory model.

One function serves both `warmstart eval` and evaluation during training, so a task's accuracy is computed the
same way in both. The model is wrapped, not copied (lm-eval's `HFLM(pretrained=model)`); the tokenizer IS copied,
because lm-eval sets a pad token on the tokenizer it is given and the training run saves its own tokenizer later.

Task names are whatever lm-eval knows, plus the local task definitions shipped in `task_data/` (and any
`include_paths` given). When every requested task is local, lm-eval's own ~10k task configs are not indexed,
which keeps a local task evaluation to a few seconds and needs no network.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from warmstart.errors import UserError

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "task_data"


def local_task_names(include_paths: list[str | Path] | None = None) -> list[str]:
    """Names of the task YAMLs in the shipped `task_data/` (and `include_paths`): one task per file stem."""
    names = []
    for root in [LOCAL_TASKS_DIR, *(Path(p) for p in include_paths or [])]:
        names += [p.stem for p in sorted(Path(root).rglob("*.yaml")) if not p.stem.startswith("_")]
    return names


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(
            "tasks: lm-evaluation-harness is not installed; install the extra: pip install 'warmstart[lm-eval]'"
        ) from None


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """lm-eval seeds Python/NumPy/torch globally; a training run must continue with its own RNG streams."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _flatten_results(results: dict) -> dict[str, float]:
    """lm-eval's {"task": {"acc,none": x, "acc_stderr,none": s, ...}} -> {"task/acc": x} (stderr dropped)."""
    out: dict[str, float] = {}
    for task, res in results.items():
        for key, value in res.items():
            if "," not in key or "_stderr" in key or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric}_{filt}"
            out[f"{task}/{name}"] = float(value)
    return out


def task_manager(tasks: list[str], include_paths: list[str | Path] | None = None):
    """lm-eval's task index for `tasks`, after checking every name is known (a training run calls this before
    its first step, so a misspelt task fails in seconds, not at the first task evaluation)."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    local = set(local_task_names(include_paths))
    paths = [str(LOCAL_TASKS_DIR), *(str(p) for p in include_paths or [])]
    manager = TaskManager(include_path=paths, include_defaults=not set(tasks) <= local)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise UserError(
            f"tasks: {', '.join(unknown)} not known to lm-eval (nor found in {', '.join(paths)}); "
            "list the names with `lm_eval ls tasks`, or give a directory of task YAMLs"
        )
    return manager


def run_tasks(
    model: torch.nn.Module,
    tokenizer,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: int | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    include_paths: list[str | Path] | None = None,
) -> dict[str, float]:
    """Evaluate `tasks` with lm-eval on `model`; returns {"<task>/<metric>": value} (e.g. "hellaswag/acc").

    `num_fewshot` None keeps each task's default; `limit` evaluates only the first N items of each task.
    The model's train/eval mode and every global RNG state are restored afterwards.
    """
    if not tasks:
        return {}
    _require_lm_eval()
    for noisy in ("lm_eval", "lm-eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(tasks, include_paths)
    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with _rng_preserved():
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
            out = simple_evaluate(
                model=lm,
                tasks=list(tasks),
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                bootstrap_iters=0,
                log_samples=False,
                verbosity="WARNING",
            )
    finally:
        model.train(was_training)
    return _flatten_results(out["results"] if out else {})
