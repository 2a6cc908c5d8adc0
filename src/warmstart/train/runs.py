"""Run a recipe to completion exactly once across invocations: what every multi-run recipe needs.

Sweeps, grow rounds, DDO proxies and the quickstart all call `run_once`: a finished run (summary.json) is read,
not retrained; an interrupted one (or one whose summary lacks its final eval) is resumed from its checkpoint; one
that died before its first checkpoint is started again; a run directory holding a different recipe is refused
rather than silently reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import yaml

from warmstart.config import Recipe, to_yaml
from warmstart.errors import UserError
from warmstart.runtime import rundir
from warmstart.train.loop import train
from warmstart.train.run_plan import config_changes


@dataclass
class RunOutcome:
    status: Literal["skipped", "resumed", "trained", "interrupted"]
    summary: dict | None  # summary.json's contents; None when interrupted
    exit_code: int = 0

    @property
    def final_eval(self) -> dict:
        return (self.summary or {}).get("final_eval", {})


def run_once(recipe: Recipe) -> RunOutcome:
    """Train `recipe` unless its run is finished (`rundir.unfinished`): a summary that lacks what a finished run
    has (its final eval, final/) is not taken as done; the run is resumed (or started again) to finish it."""
    run_dir = recipe.run_dir
    old = rundir.read_config(run_dir)
    if old is not None:
        changed = config_changes(old, yaml.safe_load(to_yaml(recipe)))
        if changed:
            raise UserError(
                f"{run_dir}: holds a run of a different recipe ({', '.join(changed)}); "
                "choose another name or delete that directory"
            )
    missing = rundir.unfinished(run_dir, recipe)
    if missing is None:
        print(f"{run_dir}: complete; skipping")
        return RunOutcome("skipped", rundir.read_summary(run_dir))
    if old is not None and (run_dir / rundir.SUMMARY).exists():
        print(f"{run_dir}: not complete ({missing}); finishing it")
    resume = old is not None  # resume finds a checkpoint, or starts again one that stopped before its first
    result = train(recipe, resume=resume)
    if result.interrupted_by:
        return RunOutcome("interrupted", None, result.exit_code)
    return RunOutcome("resumed" if resume else "trained", rundir.read_summary(run_dir))
