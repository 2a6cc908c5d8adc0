"""`warmstart derive CKPT --layers N --text NAME=PATH --tokens N --out DIR [--distill] [--until-reference]`: a smaller
model of N of the checkpoint's blocks (Inheritune), the blocks and the LR measured on the user's text.

Stages: the checks (nothing written on bad input); the format probe and the data; the reference (the checkpoint's
loss on the validation windows every later number is compared on); the block search (`inherit --rule auto` on a
sample of the text's train split: eval/block_choice.py, its FLOPs charged through the cut's inherited.json); the LR
probes (recipes/jobs/probes.py, replay none: there is no old text to keep); the full run from the cut; the report
against the reference. `--distill` trains the probes and the run against the checkpoint's next-token distribution
(the teacher's forward FLOPs counted per token).

`--until-reference` is Inheritune v2 (Sanyal et al. 2024): after a round of N blocks whose loss is above the
reference's, a round of N + 2 blocks (re-inherited from the checkpoint, its own search and probes), until one
matches or N reaches k - 1. Rounds live in OUT/L{N}/ (each the layout of a one-round job); derive.json lists them.
"""

from __future__ import annotations

from pathlib import Path

from warmstart import atomic, signals
from warmstart.config import DeriveConfig
from warmstart.errors import UserError
from warmstart.recipes.jobs import common, pipeline
from warmstart.recipes.jobs import probes as P
from warmstart.recipes.jobs.adapt import RULE_NO_OLD, text_weights

STEP = 2  # Inheritune v2's growth per round
CORRECTION = ("none (horizon exponent 0): on a freshly cut model short probes favoured the SMALL LR (its large-LR "
              "probes were still recovering from their first steps; bench/results/derive-v1.md), so the lowest probe "
              "loss is chosen; "
              "no probe is dropped by the paired test before it has trained past twice its warmup.")


def check(cfg: DeriveConfig):
    from warmstart.models.surgery import layer_count

    cfg, existed, src, config, tok = common.check_start(cfg, "derive")
    k = layer_count(config)
    if not 1 <= cfg.layers <= k - 1:
        raise UserError(f"--layers: {cfg.layers} is outside 1..{k - 1} (the checkpoint has {k} blocks)")
    cands = P.candidates(cfg.lrs, None)
    common.check_budget(cfg, src, tok, len(cands), len(cfg.text))
    return cfg, existed, src, k, cands


def derive(cfg: DeriveConfig, say=print, on_round=None) -> common.JobResult:
    """Run (or resume) the job up to its finished run; what the report needs (report/jobs.py `finish`): the last
    round's, with every round so far listed (`rounds`) under --until-reference. `on_round(result)`: called after
    every round (the command writes each round's report with it: reports are a layer above this one)."""
    cfg, existed, src, k, cands = check(cfg)
    common.set_threads(cfg)
    out = Path(cfg.out)
    new = list(cfg.text)
    was = None if existed else common.state_of(out)  # a first call refused later leaves `out` as it found it
    # (the plan made there is a check: each round plans its probes once its block search is paid for)
    fmt, data, sets, _, ref = common.first_stages(cfg, "derive", existed, src, dict(cfg.text), len(cands))
    ref_loss = common.mean_loss(ref["losses"], new)
    say(f"[derive] the checkpoint ({k} blocks) on your text: " + ", ".join(
        f"{n} {ref['losses'][n]['loss']:.4f}" for n in new))
    if not cfg.until_reference:
        res = _round(cfg, out, src, data, sets, ref, fmt, cfg.layers, k, cands, say, charge_format=True, undo_to=was)
        if on_round:
            on_round(res)
        return res
    n, rounds = cfg.layers, []
    while True:
        res = _round(cfg, out / f"L{n:02d}", src, data, sets, ref, fmt, n, k, cands, say,
                     charge_format=not rounds, undo_to=None if rounds else was)
        loss = common.mean_loss({d: {"loss": res.run_summary["final_eval"][f"val/{d}/loss"]} for d in new}, new)
        rounds.append({"layers": n, "dir": str(out / f"L{n:02d}"), "loss": loss, "flops": res.run_summary["flops"],
                       "matched": loss <= ref_loss})
        atomic.write_json(out / "derive.json", {"reference_loss": ref_loss, "rounds": rounds,
                                                "total_flops": sum(r["flops"] for r in rounds)})
        say(f"[derive] {n} blocks: loss {loss:.4f} vs the checkpoint's {ref_loss:.4f} -> "
            + ("matched" if loss <= ref_loss else "not yet"))
        res.rounds = list(rounds)
        if on_round:
            on_round(res)
        if loss <= ref_loss or n >= k - 1:
            return res
        n = min(n + STEP, k - 1)


def _round(cfg: DeriveConfig, out: Path, src, data: Path, sets: dict, ref: dict, fmt: dict, n: int, k: int,
           cands: list[P.Candidate], say, charge_format: bool, undo_to: str | None = None) -> common.JobResult:
    """One derived model of `n` blocks in `out`: search, probes, decision, run, report. `undo_to`: on the first
    call's first round, what the job directory was before it (`common.state_of`): a budget the probes do not fit
    once the search is paid for leaves it so, as every earlier refusal does."""
    from warmstart.models.inherit_record import search_flops
    from warmstart.recipes.inheritune import inherit_by_rule

    rcfg = cfg.model_copy(update={"out": str(out), "layers": n})
    new = list(cfg.text)
    cut = out / "inherited"
    if not (cut / "config.json").is_file():  # written whole or not at all (atomic)
        inherit_by_rule(src, cut, n, "auto", sample_dir=str(data), sample_tokens=cfg.sample_tokens,
                        seq_len=cfg.seq_len, sample_domains=new, echo=say)
        signals.pause_point("job:searched")
    search = search_flops(cut)
    train_fpt, fwd_fpt = common.flops_per_token(cut, cfg.seq_len)
    if cfg.distill:
        train_fpt += common.flops_per_token(src, cfg.seq_len)[1]  # the teacher's forward pass per token
    # the probes' share less what the search (and, in the first round, the format probe) cost, in this cut's
    # training tokens
    format_flops = fmt["flops"] if charge_format else 0.0
    try:
        rungs = P.plan_rungs(len(cands), pipeline.total_steps(cfg), cfg.batch_tokens, cfg.probe_share,
                             common.eval_positions(sets), spent=(format_flops + search) / train_fpt, tokens=cfg.tokens)
    except UserError:
        if undo_to is not None:
            common.undo(Path(cfg.out), undo_to)
        raise
    weights = text_weights(data, new)
    base = pipeline.base_tree(rcfg, data, str(cut), weights, None, teacher=str(src) if cfg.distill else None)

    def decide() -> dict:
        dec = pipeline.run_probes(rcfg, cands, lambda c: base, sets, new, [], ref["losses"], None, fwd_fpt, rungs, say)
        run_flops = train_fpt * pipeline.total_steps(cfg) * cfg.batch_tokens
        deciding = dec["probe_flops"] + format_flops + search
        return {**dec, "rule": RULE_NO_OLD, "correction": CORRECTION, "max_forgetting": None, "layers": n, "of": k,
                "format_flops": format_flops, "shift_flops": 0.0, "search_flops": search,
                "deciding_flops": deciding, "run_train_flops": run_flops, "deciding_share": deciding / run_flops,
                "probe_share_cap": cfg.probe_share}

    dec = pipeline.decision(rcfg, decide)
    say(f"[derive] {n} blocks: chose {dec['chosen']}: {dec['why']}")
    # the block search reaches the run through its init (the cut's inherited.json); the rest is charged here
    recipe = pipeline.full_recipe(rcfg, base, dec["max_lr"], dec["probe_flops"] + dec["format_flops"])
    run_summary = pipeline.run_full(recipe)
    import json

    record = json.loads((cut / "inherited.json").read_text())
    params = f"{run_summary['params'] / 1e6:.2f}M params" if run_summary.get("params") else ""
    line = f"model: {n} of the checkpoint's {k} blocks {record['blocks']} ({params}; block search: {search:.3g} FLOPs)"
    return common.JobResult("derive", out, dec, ref, run_summary, new, [], None, f"checkpoint ({k} blocks)",
                            search=record.get("choice") or {}, extra=[line])
