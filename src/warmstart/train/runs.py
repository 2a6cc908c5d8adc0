"""Run a recipe to completion exactly once across invocations: what every multi-run recipe needs.

Sweeps, grow rounds, DDO proxies and the quickstart all call `run_once`: a finished run (summary.json) is read,
not retrained; an interrupted one (or one whose summary lacks its final eval) is resumed from its checkpoint; one
that died before its first checkpoint is started again; a run directory holding a different recipe is refused
rather than silently reused.

Interruption, one policy for every recipe that trains several runs (`run_to_end`, or `RunOutcome.raise_if_
interrupted` where the recipe first saves what it has): a run stopped by SIGTERM/SIGINT (checkpointed by the
loop) stops the whole recipe with `signals.Interrupted`, so the CLI prints one line and exits 128 + the signal
number; re-running the same command skips the finished runs and resumes the stopped one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import yaml

from warmstart import signals
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

    def raise_if_interrupted(self) -> RunOutcome:
        """This outcome when the run finished; `signals.Interrupted` (exit code 128 + signum, a note saying to
        re-run the same command) when a signal stopped it."""
        if self.status == "interrupted":
            raise signals.Interrupted(self.exit_code - 128, RESUME_NOTE)
        return self


RESUME_NOTE = "re-run the same command to resume"


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
    if old is not None and rundir.summary_path(run_dir).exists():
        print(f"{run_dir}: not complete ({missing}); finishing it")
    resume = old is not None  # resume finds a checkpoint, or starts again one that stopped before its first
    try:
        result = train(recipe, resume=resume)
    except signals.Interrupted as e:  # stopped outside the step loop: the same advice as inside it
        e.note = RESUME_NOTE
        raise
    if result.interrupted_by:
        return RunOutcome("interrupted", None, result.exit_code)
    return RunOutcome("resumed" if resume else "trained", rundir.read_summary(run_dir))


def run_to_end(recipe: Recipe) -> RunOutcome:
    """`run_once`, with the multi-run recipes' interruption policy: a stopped run raises `signals.Interrupted`
    (see the module docstring), so the returned outcome is always finished and carries its summary."""
    return run_once(recipe).raise_if_interrupted()
