"""The probe rungs, the decision and the full run of a job: recipes for `train()`, never a loop of their own.

`run_probes` trains and races the candidates (recipes/jobs/probes.py says how) and writes decision.json;
`full_recipe` is the run at the chosen settings (re-warming + re-decay, dense evaluation early, the FLOPs spent
deciding charged from step 0: `init.charged_flops`); `run_full` trains it, resumed when it was stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from warmstart import atomic, signals
from warmstart.config import JobConfig, Recipe, validate
from warmstart.recipes.jobs import probes as P
from warmstart.recipes.jobs.common import mean_loss, stage, window_losses
from warmstart.runtime import rundir


def total_steps(cfg: JobConfig) -> int:
    return cfg.tokens // cfg.batch_tokens


MIN_WARMUP = 2  # a warmup of 0 or 1 steps puts the first update at max LR: no re-warming at all


def warmup_steps(cfg: JobConfig) -> int:
    """The full run's re-warming steps: warmup_fraction of its steps (rounded as the schedule rounds), at least
    MIN_WARMUP (at 40-100 steps 1% rounds to 0 or 1, which is no warmup: the first update would be at max LR on a
    freshly re-started optimizer, Ibrahim et al. 2024's re-warming skipped), never more than the run."""
    s = total_steps(cfg)
    return min(s, max(MIN_WARMUP, round(cfg.warmup_fraction * s)))


def base_tree(cfg: JobConfig, data_dir: Path, init_from: str, weights: dict[str, float], replay: dict | None,
              teacher: str | None = None) -> dict:
    """What every recipe of a job shares: the data, the start, the batch, the seed, the threads."""
    tree = {
        "seed": cfg.seed,
        "data": {"dir": str(data_dir), "weights": weights, "seq_len": cfg.seq_len},
        "init": {"from": str(init_from)},
        "train": {"batch_tokens": cfg.batch_tokens, "micro_batch_size": cfg.micro_batch_size, "device": cfg.device,
                  "cpu_threads": cfg.cpu_threads},
    }
    if replay:
        tree["data"]["replay"] = replay
    if teacher is not None:
        tree["distill"] = {"teacher": str(teacher)}
    return tree


def probe_recipe(cfg: JobConfig, base: dict, cand: P.Candidate, steps: int, first_rung: int) -> Recipe:
    tree = json.loads(json.dumps(base))
    tree.update({"name": cand.name, "out_dir": str(Path(cfg.out) / "probes")})
    tree["schedule"] = {"kind": "constant", "max_lr": cand.lr, "warmup_steps": min(warmup_steps(cfg), first_rung)}
    tree["train"].update({"steps": steps, "checkpoint_every": first_rung, "keep_checkpoints": 1,
                          "progress": False})
    tree["eval"] = {"domains": [], "every": steps}
    return validate(Recipe, tree, f"probe {cand.name}")


def _train_to(recipe: Recipe) -> dict:
    """Train a probe to its rung's step count: a finished probe is read; one at an earlier rung continues from its
    checkpoint (the longer step count is the only change: a constant schedule's LR does not depend on it); one
    stopped mid-rung resumes. A signal stops the job (`signals.Interrupted`; re-running resumes)."""
    from warmstart.train.loop import train
    from warmstart.train.runs import RESUME_NOTE

    done = rundir.finished_summary(recipe.run_dir, recipe)
    if done is not None:
        return done
    begun = rundir.read_config(recipe.run_dir) is not None
    result = train(recipe, resume=begun, allow_config_change=begun)
    if result.interrupted_by:
        raise signals.Interrupted(result.interrupted_by, RESUME_NOTE)
    return rundir.read_summary(recipe.run_dir)


def probe_row(lr: float, replay: float, rung: dict, new: list[str], old: list[str], shift: dict) -> dict:
    """A probe's numbers at one rung as the race and the rule read them (probes.race_rung, probes.choose): its
    rung-R.json plus the new- and old-text means and the forgetting from `shift` (the checkpoint's losses)."""
    return {"lr": lr, "replay": replay, "new_loss": mean_loss(rung["losses"], new),
            "old_loss": mean_loss(rung["losses"], old) if old else None,
            "forgetting": P.forgetting(rung, old, shift), **rung}


def run_probes(cfg: JobConfig, cands: list[P.Candidate], base_for, sets: dict, new: list[str], old: list[str],
               shift: dict, bound: float | None, fwd_fpt: float, rungs: list[int], say=print,
               exponent: float = 0.0) -> dict:
    """Every rung of the race (probes/NAME/rung-R.json), then the choice; returns decision.json's body (without
    the FLOPs outside the probes, which the caller adds). `base_for(candidate)`: the candidate's base recipe tree.
    `exponent`: the horizon correction's beta (probes.choose; 0: none)."""
    out = Path(cfg.out)
    by_name = {c.name: c for c in cands}
    alive, rounds, rows = [c.name for c in cands], [], {}
    reached: dict[str, dict] = {}
    for r, steps in enumerate(rungs):
        rows = {}
        for name in alive:
            cand = by_name[name]
            path = out / "probes" / name / f"rung-{r}.json"
            if not path.is_file():
                summary = _train_to(probe_recipe(cfg, base_for(cand), cand, steps, rungs[0]))
                losses, eval_flops = window_losses(rundir.final_dir(out / "probes" / name), sets, fwd_fpt, cfg.device)
                atomic.write_json(path, {
                    "steps": steps, "tokens": summary["tokens"],
                    "train_flops": summary["flops_per_token"] * summary["tokens"],  # without init_flops (a search)
                    "eval_flops": eval_flops, "losses": losses,
                })
                signals.pause_point("job:rung")
            rung = json.loads(path.read_text())
            row = probe_row(cand.lr, cand.replay, rung, new, old, shift)
            rows[name] = row
            reached.setdefault(name, {})[r] = row
            say(f"[probe] {name}: {steps} steps, new-text loss {row['new_loss']:.4f}"
                + (f", old-text loss change {row['forgetting']:+.4f}" if old else ""))
        outcome = P.race_rung(rows, bound, new, cfg.alpha, last=r == len(rungs) - 1,
                              settled=steps > P.SETTLE * warmup_steps(cfg))
        rounds.append({"rung": r, "steps": steps, **outcome})
        alive = outcome["continue"]
        decided = len(alive) == 1 or r == len(rungs) - 1
        for name in rows:  # a stopped probe's numbers are in its rung files: its weights are only disk
            if decided or name not in alive:
                free_weights(out / "probes" / name)
        if len(alive) == 1:  # the race is decided: no later rung to train
            break
    latest = {n: seen[max(seen)] for n, seen in reached.items()}
    chosen, why = P.choose({n: rows[n] for n in alive}, bound, new, cfg.alpha, latest=latest,
                           run_steps=total_steps(cfg), exponent=exponent)
    table = []
    for c in cands:
        seen = reached.get(c.name, {})
        final = seen[max(seen)]
        status = "chosen" if c.name == chosen else _fate(c.name, rounds)
        table.append({"name": c.name, "lr": c.lr, "replay": c.replay, "steps": final["steps"],
                      "new_loss": {str(k): v["new_loss"] for k, v in seen.items()},
                      "forgetting": {str(k): v["forgetting"] for k, v in seen.items()},
                      "train_flops": final["train_flops"],
                      "eval_flops": sum(v["eval_flops"] for v in seen.values()), "status": status})
    return {"candidates": table, "rungs": rungs, "rounds": rounds, "chosen": chosen,
            "max_lr": by_name[chosen].lr, "replay": by_name[chosen].replay, "why": why,
            "probe_flops": sum(t["train_flops"] + t["eval_flops"] for t in table)}


def free_weights(run_dir: Path) -> None:
    """Delete a probe's checkpoints and final weights once no rung will continue it (its rung-R.json files, config
    and summary stay: a re-run reads those). Without this a job's disk grows with candidates x (weights + AdamW
    state): 9 probes of an 8B model would leave about 1.2 TB behind."""
    import shutil

    for sub in (rundir.CHECKPOINTS, rundir.FINAL):
        shutil.rmtree(Path(run_dir) / sub, ignore_errors=True)


def _fate(name: str, rounds: list[dict]) -> str:
    for rd in rounds:
        if name in rd["dropped"]:
            return f"dropped after {rd['steps']} steps (paired test vs {rd['dropped'][name]})"
        if name in rd["halved"]:
            return f"stopped after {rd['steps']} steps (halving)"
    return "finalist"


def decision(cfg: JobConfig, make) -> dict:
    return stage(Path(cfg.out), "decision", make)


def full_recipe(cfg: JobConfig, base: dict, max_lr: float, charged: float) -> Recipe:
    """The run at the chosen settings: re-warming (`warmup_steps`) + re-decay (cosine to min_lr_ratio), dense
    evaluation early (every step of the first 5%, at least 4), a checkpoint every 10%."""
    s = total_steps(cfg)
    tree = json.loads(json.dumps(base))
    tree.update({"name": "run", "out_dir": str(cfg.out)})
    tree["init"]["charged_flops"] = charged
    tree["schedule"] = {"kind": "cosine", "max_lr": max_lr, "warmup_steps": warmup_steps(cfg),
                        "min_lr_ratio": cfg.min_lr_ratio}
    tree["train"].update({"steps": s, "checkpoint_every": max(1, s // 10), "keep_checkpoints": 2})
    tree["eval"] = {"every": max(1, s // 20), "dense_steps": min(s, max(4, s // 20)), "max_tokens": cfg.eval_tokens,
                    "batch_size": 8, "windows": "documents"}
    return validate(Recipe, tree, "the full run")


def run_full(recipe: Recipe) -> dict:
    """Train the full run (a finished one is read, a stopped one resumed); its summary."""
    from warmstart.train.runs import run_to_end

    return run_to_end(recipe).summary
