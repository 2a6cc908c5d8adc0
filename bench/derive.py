"""`warmstart derive` against the fixed-LR Inheritune arm it replaces: is the LR it measures (its probes charged) as
good as the `auto` cut trained at the max LR the SmolLM2 bench picked by hand (1e-3)?

    python bench/derive.py --checkpoint smollm2-hf --text prose=a.jsonl --text code=b.jsonl --layers 15,10 \
        --tokens 65536 --seeds 0 --work /tmp/derive-bench
    # writes bench/results/derive.{md,json} (--results elsewhere); a re-run skips every finished run

Per (n, seed), on the job's own prepared data, cut and validation windows (so every loss is one quantity):
  - `derive`: the block search on a sample of the text, the LR probes, the full run; every deciding FLOP (format
    probe, search, probes) charged to the run from step 0;
  - `auto` + fixed LR, equal tokens: the same cut (the search charged through its init) trained at --fixed-lr for
    the same tokens with the same schedule;
  - `auto` + fixed LR, equal FLOPs: the same, trained for the tokens the FLOPs derive spent deciding would have
    bought (so both arms end at the same FLOPs, search and probes included).
The goal (issue: the same or lower loss, every search and probe FLOP charged) is checked against both arms (the
same: within --same-nats).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from harness import add_job_settings, job_settings, run_main, timed_job

from warmstart import atomic
from warmstart.config import DeriveConfig, Recipe, validate
from warmstart.recipes.jobs import common, pipeline
from warmstart.recipes.jobs.adapt import text_weights
from warmstart.recipes.jobs.derive import derive
from warmstart.recipes.jobs.flags import parse_domains
from warmstart.report.jobs import finish
from warmstart.train.runs import run_to_end

RESULTS = Path(__file__).resolve().parent / "results"


def job_config(args, layers: int, seed: int, out: Path) -> DeriveConfig:
    tree = {"checkpoint": args.checkpoint, "text": parse_domains(args.text, "--text"), "tokens": args.tokens,
            "out": str(out), "seed": seed, "layers": layers, "probe_share": args.probe_share,
            "sample_tokens": args.sample_tokens, **job_settings(args)}
    return validate(DeriveConfig, tree, "bench")


def fixed_arm(cfg: DeriveConfig, job: Path, work: Path, name: str, tokens: int, lr: float) -> dict:
    """The job's cut trained at `lr` for `tokens` (whole batches) with the job's full-run recipe, in WORK/NAME."""
    data, cut = job / "data", job / "inherited"
    base = pipeline.base_tree(cfg, data, str(cut), text_weights(data, list(cfg.text)), None)
    arm = cfg.model_copy(update={"out": str(work), "tokens": tokens})
    tree = pipeline.full_recipe(arm, base, lr, 0.0).model_dump(mode="json", by_alias=True)
    tree["name"] = name
    return run_to_end(validate(Recipe, tree, name)).summary


def final_loss(summary: dict, names: list[str]) -> float:
    return sum(summary["final_eval"][f"val/{d}/loss"] for d in names) / len(names)


def cell(args, layers: int, seed: int) -> dict:
    work = Path(args.work) / f"L{layers}" / f"seed-{seed}"
    job = work / "derive"
    cfg = job_config(args, layers, seed, job)
    res, wall, wall_note = timed_job(work, job, lambda: derive(cfg))
    finish(res)
    new = list(cfg.text)
    dec, run = res.decision, res.run_summary
    ref = common.mean_loss(res.shift["losses"], new)
    tokens = pipeline.total_steps(cfg) * cfg.batch_tokens
    eq_tok = fixed_arm(cfg, job, work / "arms", f"auto-lr{args.fixed_lr:g}-equal-tokens", tokens, args.fixed_lr)
    # equal FLOPs: the arm's search is charged through its init like derive's; the format probe and the probes
    # derive paid are bought back as training steps of the same batch
    extra = dec["probe_flops"] + dec["format_flops"]
    steps = round((tokens * run["flops_per_token"] + extra) / (run["flops_per_token"] * cfg.batch_tokens))
    eq_fl = fixed_arm(cfg, job, work / "arms", f"auto-lr{args.fixed_lr:g}-equal-flops", steps * cfg.batch_tokens,
                      args.fixed_lr) if args.equal_flops else None
    d_loss, t_loss = final_loss(run, new), final_loss(eq_tok, new)
    f_loss = final_loss(eq_fl, new) if eq_fl else None
    return {
        "layers": layers, "of": dec["of"], "seed": seed, "tokens": tokens, "reference_loss": ref,
        "blocks": json.loads((job / "inherited" / "inherited.json").read_text())["blocks"],
        "derive": {"chosen": dec["chosen"], "why": dec["why"], "loss": d_loss, "flops": run["flops"],
                   "search_flops": dec["search_flops"], "probe_flops": dec["probe_flops"],
                   "format_flops": dec["format_flops"], "deciding_share": dec["deciding_share"],
                   "rungs": dec["rungs"], "wall_s": wall, "wall_note": wall_note,
                   "probes": {c["name"]: c["new_loss"] for c in dec["candidates"]}},
        "equal_tokens": {"lr": args.fixed_lr, "tokens": eq_tok["tokens"], "loss": t_loss, "flops": eq_tok["flops"]},
        "equal_flops": {"lr": args.fixed_lr, "tokens": eq_fl["tokens"], "loss": f_loss, "flops": eq_fl["flops"]}
        if eq_fl else None,
        "same_or_lower_equal_tokens": d_loss <= t_loss + args.same_nats,
        "same_or_lower_equal_flops": d_loss <= f_loss + args.same_nats if eq_fl else None,
    }


def markdown(cells: list[dict], command: str, same: float) -> str:
    lines = ["# `warmstart derive` against the `auto` cut at a fixed max LR", "", f"Written by: `{command}`", "",
             "Every loss: the mean over the text's domains of the validation loss on the job's document windows "
             "(the same windows for every column). FLOPs: training plus everything charged (format probe, block "
             "search, probes).", "",
             "| n of k | seed | blocks kept | derive's LR (why) | derive loss | derive FLOPs (deciding share) | "
             "fixed LR, equal tokens: loss (FLOPs) | fixed LR, equal FLOPs: tokens, loss (FLOPs) | checkpoint's loss | "
             "goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        d, t, f = c["derive"], c["equal_tokens"], c["equal_flops"]
        ok = c["same_or_lower_equal_tokens"] and c["same_or_lower_equal_flops"] is not False
        eqf = "not run" if f is None else f"{f['tokens']:,}, {f['loss']:.4f} ({f['flops']:.3g})"
        lines.append(f"| {c['layers']} of {c['of']} | {c['seed']} | {c['blocks']} | {d['chosen']} | {d['loss']:.4f} | "
                     f"{d['flops']:.3g} ({d['deciding_share']:.1%}) | {t['loss']:.4f} ({t['flops']:.3g}) | "
                     f"{eqf} | {c['reference_loss']:.4f} | {'met' if ok else 'MISSED'} |")
    lines += ["", f"Goal: derive's loss the same (within {same} nats) or lower than the fixed-LR arm at equal tokens "
              "and at equal FLOPs, every search and probe FLOP charged.", ""]
    for c in cells:
        d = c["derive"]
        probes = "; ".join(f"{k}: " + ", ".join(f"{v:.4f}" for v in r.values()) for k, r in d["probes"].items())
        lines.append(f"- n = {c['layers']}, seed {c['seed']}: rungs {d['rungs']} steps; probe losses by rung: "
                     f"{probes}; {d['why']}; deciding FLOPs: format {d['format_flops']:.3g}, search "
                     f"{d['search_flops']:.3g}, probes {d['probe_flops']:.3g}; derive wall "
                     + ("not measured" if d["wall_s"] is None else f"{d['wall_s']:.0f} s")
                     + (f" ({d['wall_note']})" if d.get("wall_note") else "") + ".")
    lines += ["", f"Machine: {platform.platform()}, Python {platform.python_version()}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text", action="append", required=True)
    p.add_argument("--layers", default="15,10")
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--seeds", default="0")
    p.add_argument("--work", required=True)
    p.add_argument("--results", default=str(RESULTS / "derive"), help="path stem of the .md and .json written")
    p.add_argument("--probe-share", dest="probe_share", type=float, default=0.25)
    p.add_argument("--fixed-lr", dest="fixed_lr", type=float, default=1e-3)
    p.add_argument("--no-equal-flops", dest="equal_flops", action="store_false",
                   help="leave out the equal-FLOPs arm (a re-run without this flag adds it; the rest is reused)")
    p.add_argument("--same-nats", dest="same_nats", type=float, default=0.02)
    add_job_settings(p, batch_tokens=1024, micro_batch_size=4, eval_tokens=2048)
    p.add_argument("--sample-tokens", dest="sample_tokens", type=int, default=2048)
    args = p.parse_args()
    command = "python bench/derive.py " + " ".join(sys.argv[1:])
    stem = Path(args.results)
    cells = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for layers in (int(n) for n in args.layers.split(",")):
            cells.append(cell(args, layers, seed))  # written after every cell
            atomic.write_json(stem.with_suffix(".json"), {"command": command, "cells": cells})
            atomic.write_text(stem.with_suffix(".md"), markdown(cells, command, args.same_nats))
    print(markdown(cells, command, args.same_nats))


if __name__ == "__main__":
    run_main(main)
