"""What a `train` call does with its run directory: start, start again, resume, or nothing (already finished).

`decide` runs on rank 0 with the run's lock held (`warmstart.runtime.rundir.held`) and hands every rank the same
`Plan`: start fresh, start again (an earlier attempt that stopped before its first checkpoint: nothing to keep,
nothing to delete by hand), resume from the newest intact checkpoint (including one taken at the last step: the
run then only finishes), or nothing (already finished). A changed recipe is refused unless the change is one a
resume may make (`RESUME_FREE_KEYS`) or `--allow-config-change` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from warmstart.config import Recipe, absolute_paths, to_yaml
from warmstart.errors import UserError, warn
from warmstart.runtime import rundir
from warmstart.runtime.distributed import Dist
from warmstart.train import checkpoint as ckpt

# recipe keys that may change between a run and its resume without --allow-config-change
RESUME_FREE_KEYS = {
    "out_dir",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.progress",
    "train.device",
    "train.compile",
    "train.micro_batch_size",
    "train.trackers",
    "train.cpu_threads",
    "train.keep_heap",
    "train.activation_checkpointing",
    "train.parallel",  # a layout, not the math: checkpoints load into any layout
}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _resolved(tree: dict) -> dict:
    """A recipe with today's defaults filled in, so keys added by a newer warmstart do not count as changes."""
    tree = absolute_paths(tree)  # a run recorded before paths were absolute: its relative ones, from here
    data = tree.get("data")
    if isinstance(data, dict) and "packing" not in data:  # written before data.packing existed: the stream
        tree = {**tree, "data": {**data, "packing": "stream"}}
    try:
        return yaml.safe_load(to_yaml(Recipe.model_validate(tree)))
    except ValueError:
        return tree


def config_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring the ones a resume may change freely."""
    a, b = _flatten(_resolved(old)), _flatten(_resolved(new))
    return sorted(
        k
        for k in set(a) | set(b)
        if a.get(k) != b.get(k) and k not in RESUME_FREE_KEYS and not k.startswith("eval.")
    )


@dataclass
class Plan:
    action: Literal["fresh", "restart", "resume", "finished"]
    checkpoint: Path | None = None  # for "resume"
    summary: dict | None = None  # for "finished"
    note: str = ""  # one line for the user (restart: why)


def _first_checkpoint_step(recipe: Recipe, old: dict | None) -> int:
    total = rundir.planned_steps(recipe)
    everies = [recipe.train.checkpoint_every, ((old or {}).get("train") or {}).get("checkpoint_every")]
    return min([total] + [e for e in everies if isinstance(e, int) and e > 0])


def _no_checkpoint(recipe: Recipe, old: dict | None) -> Plan:
    """No checkpoint folder at all: a restart, unless metrics.jsonl shows there were checkpoints once."""
    run_dir = recipe.run_dir
    first, last = _first_checkpoint_step(recipe, old), rundir.last_logged_step(run_dir)
    if last > first:  # events after step `first` are only written once its checkpoint is complete
        where = "is missing" if not rundir.checkpoints_dir(run_dir).is_dir() else "holds no checkpoint"
        raise UserError(
            f"{run_dir}: {rundir.CHECKPOINTS}/ {where}, yet {rundir.METRICS} reaches step {last}, past the first "
            f"checkpoint (step {first}): the checkpoints were deleted or moved; put them back, or delete {run_dir} and start "
            "the run again"
        )
    return Plan("restart", note=f"{run_dir}: no checkpoint yet (the earlier attempt stopped before step {first}); "
                                "starting it again from step 0")


def _refuse_counter_changes(recipe: Recipe, old: dict, changed: list[str]) -> None:
    """A resume may not change what its counters are made of: tokens, FLOPs, a token budget's step count and
    the schedule's position are all `step x train.batch_tokens`, so a new batch size would recount the steps
    already taken (512-token steps resumed at 1,024 stopped at half a token budget, or reported 4,096 tokens
    where 3,072 were trained). Nor the sequence length: the sampler's positions and epochs count sequences."""
    if "train.batch_tokens" in changed:
        was = (old.get("train") or {}).get("batch_tokens")
        raise UserError(
            f"{recipe.run_dir}: --resume cannot change train.batch_tokens ({was} -> {recipe.train.batch_tokens}): "
            f"its steps so far are counted as {was} tokens each; keep train.batch_tokens: {was}, or start a new "
            "run from this one's weights with init.from"
        )
    if "data.seq_len" in changed:
        was = (old.get("data") or {}).get("seq_len")
        raise UserError(
            f"{recipe.run_dir}: --resume cannot change data.seq_len ({was} -> {recipe.data.seq_len}): the data "
            f"read so far is counted in sequences of {was} tokens; keep data.seq_len: {was}, or start a new run "
            "from this one's weights with init.from"
        )


def plan(recipe: Recipe, resume: bool, changed: list[str], allow_config_change: bool, existed: bool = True) -> Plan:
    """What `train` does with RUN_DIR (call with the lock held; `changed`: config.yaml's keys that differ from
    the recipe's; `existed`: RUN_DIR was there before the lock was taken).

    Raises UserError, leaving every file as it was, when the directory holds something else, another recipe's
    run, or a run that cannot be resumed (and then says what was found and why each checkpoint was rejected).
    Stale temp files are removed when the run goes ahead.
    """
    run_dir = recipe.run_dir
    old = rundir.read_config(run_dir)
    if old is None:
        if rundir.contents(run_dir):
            raise UserError(
                f"{run_dir}: run directory exists and is not a warmstart run (no {rundir.CONFIG}); "
                "choose another name / out_dir"
            )
        if resume and not existed:
            raise UserError(f"{run_dir}: nothing to resume (no {rundir.CONFIG}); drop --resume to start the run")
        rundir.remove_stale_temps(run_dir)
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
    checkpoints = ckpt.scan(rundir.checkpoints_dir(run_dir))
    if not resume:
        done = rundir.summary_path(run_dir).exists() or rundir.final_dir(run_dir).exists()
        if done or next(checkpoints, None) is not None:
            raise UserError(
                f"{run_dir}: run directory exists; use --resume to continue it, or choose another name / out_dir"
            )
        decision = _no_checkpoint(recipe, old)
        rundir.remove_stale_temps(run_dir)
        return decision
    if rundir.unfinished(run_dir, recipe) is None:
        return Plan("finished", summary=rundir.read_summary(run_dir))
    rejected = []
    for path, problem in checkpoints:
        if problem is None:
            _refuse_counter_changes(recipe, old, changed)
            rundir.remove_stale_temps(run_dir)
            return Plan("resume", checkpoint=path)
        warn(f"checkpoint {path} is damaged ({problem}); skipped")
        rejected.append(f"{path.name} ({problem})")
    if rejected:
        raise UserError(
            f"{run_dir}: no intact checkpoint to resume from; found {len(rejected)}, all rejected: "
            f"{'; '.join(rejected)}. Delete {run_dir} and start the run again"
        )
    decision = _no_checkpoint(recipe, old)
    rundir.remove_stale_temps(run_dir)
    return decision


def decide(recipe: Recipe, d: Dist, resume: bool, allow_config_change: bool, existed: bool) -> Plan:
    """Decide (on rank 0, lock held) what this call does with the run directory; every rank gets the plan."""

    def on_rank0() -> Plan:
        old = rundir.read_config(recipe.run_dir)
        changed = config_changes(old, yaml.safe_load(to_yaml(recipe))) if old is not None else []
        return plan(recipe, resume, changed, allow_config_change, existed)

    return rundir.on_main(d, on_rank0)
