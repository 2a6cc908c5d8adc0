"""Run a recipe to completion exactly once across invocations: what every multi-run recipe needs.

Sweeps, grow rounds, DDO proxies and the quickstart all call `run_once`: a finished run (summary.json) is read,
not retrained; an interrupted one is resumed from its checkpoint; one that died before its first checkpoint is
started again; a run directory holding a different recipe is refused rather than silently reused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Literal

import yaml

from warmstart.config import Recipe, to_yaml
from warmstart.errors import UserError
from warmstart.train.loop import config_changes, train


@dataclass
class RunOutcome:
    status: Literal["skipped", "resumed", "trained", "interrupted"]
    summary: dict | None  # summary.json's contents; None when interrupted
    exit_code: int = 0

    @property
    def final_eval(self) -> dict:
        return (self.summary or {}).get("final_eval", {})


def run_once(recipe: Recipe) -> RunOutcome:
    run_dir = recipe.run_dir
    if (run_dir / "config.yaml").is_file():
        old = yaml.safe_load((run_dir / "config.yaml").read_text())
        changed = config_changes(old, yaml.safe_load(to_yaml(recipe)))
        if changed:
            raise UserError(
                f"{run_dir}: holds a run of a different recipe ({', '.join(changed)}); "
                "choose another name or delete that directory"
            )
    summary = run_dir / "summary.json"
    if summary.is_file():
        print(f"{run_dir}: complete; skipping")
        return RunOutcome("skipped", json.loads(summary.read_text()))
    ckpts = run_dir / "checkpoints"
    resume = (run_dir / "config.yaml").is_file() and ckpts.is_dir() and any(ckpts.iterdir())
    if not resume and (run_dir / "config.yaml").is_file():
        shutil.rmtree(run_dir)  # our run that died before its first checkpoint: nothing to keep
    result = train(recipe, resume=resume)
    if result.interrupted_by:
        return RunOutcome("interrupted", None, result.exit_code)
    return RunOutcome("resumed" if resume else "trained", json.loads(summary.read_text()))
