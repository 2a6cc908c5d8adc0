"""`warmstart adapt CKPT --text NAME=PATH --tokens N [--old NAME=PATH] --out DIR`: continued pre-training with the
max LR and the replay share measured on the user's text.

Stages (recipes/jobs/__init__.py has the directory layout): the checks (nothing written on bad input); the format
probe and the data; the shift (the checkpoint's loss on every new and old domain before training: the start the
forgetting is measured from); the probes, raced (recipes/jobs/probes.py: the candidates, the race, the rule, the
horizon correction); the decision (decision.json); the full run (re-warming + re-decay at the chosen settings,
dense evaluation early, the FLOPs spent deciding charged from step 0); the report, which opens with the decision.

The budget: the full run trains `--tokens`; the probes, the format probe and the before-training evaluation are
charged on top (at most `--probe-share` of the run's training FLOPs for the probes), so the run's FLOPs curve
starts at what deciding cost. Without `--old` forgetting cannot be measured: the job says so once and decides the
LR alone, on the new text's loss.
"""

from __future__ import annotations

from pathlib import Path

from warmstart.config import AdaptConfig
from warmstart.recipes.jobs import common, pipeline
from warmstart.recipes.jobs import probes as P

RULE = ("the lowest new-text validation loss (mean over the new domains) among the candidates whose old-text loss "
        "(mean over the old domains, change from the checkpoint) rose by at most the bound; when none keeps it, the "
        "one that forgot least.")
RULE_NO_OLD = "the lowest new-text validation loss (mean over the new domains); no old text, so no forgetting bound."
CORRECTION = ("short probes favour large LRs: the probes' best max LR is moved to the run's horizon, lr x (probe steps "
              "/ run steps)^beta (Bjorck et al. 2024), then to the nearest candidate; short probes also see little of a "
              "full run's forgetting: at that LR, among the shares the paired test cannot tell from the best, the "
              "largest.")
CORRECTION_OFF = ("none for the LR (--horizon-exponent 0: the probes' best max LR as measured); short probes see little "
                  "of a full run's forgetting: at that LR, among the shares the paired test cannot tell from the best, "
                  "the largest.")


def check(cfg: AdaptConfig):
    """Every check that needs no writing (common.check_start, the budget); what the stages need."""
    cfg, existed, src, _, tok = common.check_start(cfg, "adapt")
    cands = P.candidates(cfg.lrs, cfg.replay if cfg.old else None)
    common.check_budget(cfg, src, tok, len(cands), len(cfg.text) + len(cfg.old))
    return cfg, existed, src, cands


def adapt(cfg: AdaptConfig, say=print) -> dict:
    """Run (or resume) the job up to its finished run; what the report needs (report/jobs.py `finish` writes it)."""
    cfg, existed, src, cands = check(cfg)
    common.set_threads(cfg)
    out = Path(cfg.out)
    new, old = list(cfg.text), list(cfg.old)
    bound = cfg.forgetting_bound
    if not old:
        say("[adapt] no --old text: forgetting cannot be measured; the max LR alone is decided, on the new text's loss")
    train_fpt, fwd_fpt = common.flops_per_token(src, cfg.seq_len)
    fmt, data, sets, rungs, before = common.first_stages(cfg, "adapt", existed, src, {**cfg.text, **cfg.old},
                                                         len(cands))
    say("[adapt] before training: " + ", ".join(f"{n} {before['losses'][n]['loss']:.4f}" for n in new + old))
    weights = text_weights(data, new)

    def base_for(c: P.Candidate) -> dict:
        replay = {"fraction": c.replay, "domains": dict.fromkeys(old, 1.0)} if c.replay > 0 else None
        return pipeline.base_tree(cfg, data, str(src), weights, replay)

    def decide() -> dict:
        dec = pipeline.run_probes(cfg, cands, base_for, sets, new, old, before["losses"], bound, fwd_fpt, rungs, say,
                                  exponent=cfg.horizon_exponent)
        run_flops = train_fpt * pipeline.total_steps(cfg) * cfg.batch_tokens
        deciding = dec["probe_flops"] + fmt["flops"] + before["flops"]
        return {**dec, "rule": RULE if old else RULE_NO_OLD,
                "correction": CORRECTION if cfg.horizon_exponent > 0 else CORRECTION_OFF,
                "horizon_exponent": cfg.horizon_exponent, "max_forgetting": bound,
                "format_flops": fmt["flops"], "shift_flops": before["flops"], "deciding_flops": deciding,
                "run_train_flops": run_flops, "deciding_share": deciding / run_flops,
                "probe_share_cap": cfg.probe_share,
                "note": None if old else "no --old text: forgetting cannot be measured; the LR alone was decided"}

    dec = pipeline.decision(cfg, decide)
    chosen = next(c for c in cands if c.name == dec["chosen"])
    say(f"[adapt] chose {dec['chosen']}: {dec['why']}")
    recipe = pipeline.full_recipe(cfg, base_for(chosen), dec["max_lr"], dec["deciding_flops"])
    run_summary = pipeline.run_full(recipe)
    return common.JobResult("adapt", out, dec, before, run_summary, new, old, bound)


def text_weights(data: Path, names: list[str]) -> dict[str, float]:
    """The new domains mixed as given: each in proportion to its training tokens."""
    from warmstart.data.shards import open_data_dir

    domains = open_data_dir(data)
    return {n: float(domains[n].n_tokens("train")) for n in names}
