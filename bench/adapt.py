"""`warmstart adapt` against the choices it replaces: is the setting it measures on a small share of the budget
as good as the best one found by training every candidate at the full budget?

    python bench/adapt.py --checkpoint smollm2-hf --text debian=a.jsonl,b.jsonl --text python=c.jsonl \
        --old web=proxy.jsonl --budgets 16k,65k --seeds 0,1 --large-seeds 0 --work /tmp/adapt-bench
    # writes bench/results/adapt.{md,json} (--results elsewhere); a re-run skips every finished run

Per cell (a budget and a seed), side by side, on the same prepared data and validation windows:
  (a) the grid: every candidate (max LR x replay share) trained at the full budget with the run's own schedule
      (re-warming + re-decay); the pick is the lowest new-text loss whose old-text loss rose by at most the bound;
      what a user with unlimited compute would choose (its compute: every candidate's run);
  (b) `adapt`: its choice, trained at the full budget, its probes, format probe and before-training evaluation
      charged (the run's init_flops);
  (c) the fixed recipe: the packaged re-warm + replay settings (--fixed-lr, --fixed-replay).
The goal (issue: adapt within 0.02 nats of (a)'s new-text loss under the same bound, not worse than (c), probes at
most 10% of the FLOPs) is checked per cell and said plainly. The horizon bias: how well the probes' ranking (each
candidate's new-text loss at the last rung it reached) predicts the full-budget ranking (Kendall's tau over the
candidates the probes carried to their last rung, and the rank (a) gives adapt's choice).
Grid runs evaluate sparsely (--grid-evals points) to keep a slow model's wall time down; adapt's run is the job's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

from harness import add_job_settings, job_settings, run_main, timed_job

from warmstart import atomic
from warmstart.config import DEFAULT_HORIZON_EXPONENT, DEFAULT_MAX_FORGETTING, AdaptConfig, Recipe, validate
from warmstart.recipes.jobs import pipeline
from warmstart.recipes.jobs.adapt import adapt
from warmstart.recipes.jobs.flags import parse_domains, parse_list, parse_tokens
from warmstart.recipes.jobs.probes import candidates
from warmstart.report.jobs import finish
from warmstart.train.runs import run_to_end

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_NATS = 0.02


def job_config(args, budget: int, seed: int, out: Path) -> AdaptConfig:
    tree = {"checkpoint": args.checkpoint, "text": parse_domains(args.text, "--text"), "tokens": budget,
            "out": str(out), "seed": seed, "probe_share": args.probe_share, "horizon_exponent": args.horizon_exponent,
            **job_settings(args)}
    if args.old:
        tree["old"] = parse_domains(args.old, "--old")
        tree["max_forgetting"] = args.max_forgetting
    if args.replay:
        tree["replay"] = parse_list(args.replay, "--replay")
    return validate(AdaptConfig, tree, "bench")


def full_run(cfg: AdaptConfig, job: Path, work: Path, name: str, lr: float, replay: float, evals: int) -> dict:
    """One candidate at the full budget: the job's own full-run recipe (same data, start, schedule shape and eval
    windows), in WORK/NAME, evaluated at `evals` points."""
    from warmstart.data.shards import open_data_dir

    data = job / "data"
    domains = open_data_dir(data)
    weights = {n: float(domains[n].n_tokens("train")) for n in cfg.text}
    rep = {"fraction": replay, "domains": dict.fromkeys(cfg.old, 1.0)} if replay > 0 else None
    from warmstart.models.locate import resolve_checkpoint

    base = pipeline.base_tree(cfg, data, str(resolve_checkpoint(cfg.checkpoint)), weights, rep)
    recipe = pipeline.full_recipe(cfg.model_copy(update={"out": str(work)}), base, lr, 0.0)
    steps = pipeline.total_steps(cfg)
    tree = recipe.model_dump(mode="json", by_alias=True)
    tree["name"] = name
    tree["eval"].update({"every": max(1, steps // max(1, evals)), "dense_steps": 0})
    return run_to_end(validate(Recipe, tree, name)).summary


def losses(summary: dict, shift: dict, new: list[str], old: list[str]) -> tuple[float, float | None]:
    ev = summary["final_eval"]
    n = sum(ev[f"val/{d}/loss"] for d in new) / len(new)
    if not old:
        return n, None
    f = sum(ev[f"val/{d}/loss"] - shift["losses"][d]["loss"] for d in old) / len(old)
    return n, f


def pick(rows: dict[str, dict], bound: float | None) -> str:
    ok = [k for k, r in rows.items() if bound is None or r["forgetting"] <= bound]
    if ok:
        return min(ok, key=lambda k: rows[k]["new"])
    return min(rows, key=lambda k: rows[k]["forgetting"])


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    n = len(a)
    if n < 2:
        return None
    s = sum((1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
            for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def rechoose(job: Path, dec: dict, shift: dict, new: list[str], old: list[str], bound, alpha: float,
             run_steps: int, exponent: float) -> tuple[str, str]:
    """What the current rule (`probes.choose`, horizon correction `exponent`) picks from the job's stored probe
    numbers (every candidate's furthest rung): a decision recorded under an earlier rule is re-made on the same
    probes, no training."""
    from warmstart.recipes.jobs import probes as P

    latest = {}
    for c in dec["candidates"]:
        r = max(int(k) for k in c["new_loss"])
        rung = json.loads((job / "probes" / c["name"] / f"rung-{r}.json").read_text())
        latest[c["name"]] = pipeline.probe_row(c["lr"], c["replay"], rung, new, old, shift["losses"])
    alive = {n: latest[n] for n in dec["rounds"][-1]["continue"]}  # the last raced rung's survivors, as run_probes
    return P.choose(alive, bound, new, alpha, latest=latest, run_steps=run_steps, exponent=exponent)


def implied_exponent(probe_lr: float, probe_steps: int, full_lr: float, run_steps: int) -> float:
    """The beta that moves the probes' best LR onto the full budget's: log(probe LR / full LR) / log(run steps /
    probe steps) (LR* ~ horizon^-beta, Bjorck et al. 2024)."""
    return math.log(probe_lr / full_lr) / math.log(run_steps / probe_steps)


def horizon_fit(points: list[tuple[float, float, int, int]]) -> float | None:
    """Least-squares beta through the origin over (probe LR, full LR, probe steps, run steps) points:
    sum(y x) / sum(x^2), y = log(probe LR / full LR), x = log(run steps / probe steps). None without points."""
    xs = [math.log(r / s) for _, _, s, r in points]
    ys = [math.log(p / f) for p, f, _, _ in points]
    den = sum(x * x for x in xs)
    return sum(x * y for x, y in zip(xs, ys, strict=True)) / den if den else None


def cell(args, budget: int, seed: int) -> dict:
    work = Path(args.work) / f"tokens-{budget}" / f"seed-{seed}"
    job = work / "adapt"
    cfg = job_config(args, budget, seed, job)
    res, adapt_s, wall_note = timed_job(work, job, lambda: adapt(cfg))
    finish(res)
    dec, shift = res.decision, res.shift
    new, old = list(cfg.text), list(cfg.old)
    bound = cfg.forgetting_bound
    grid = {}
    train_fpt = res.run_summary["flops_per_token"]
    for c in candidates(cfg.lrs, cfg.replay if old else None):
        if c.name == dec["chosen"]:  # adapt's own full run is this candidate's full-budget run
            s, source = res.run_summary, "adapt's run"
        else:
            s, source = full_run(cfg, job, work / "grid", c.name, c.lr, c.replay, args.grid_evals), "grid"
        n, f = losses(s, shift, new, old)
        grid[c.name] = {"lr": c.lr, "replay": c.replay, "new": n, "forgetting": f,
                        "flops": train_fpt * s["tokens"], "source": source}
    best = pick(grid, bound)
    fixed_replay = args.fixed_replay if old else 0.0
    same = [k for k, g in grid.items() if g["lr"] == args.fixed_lr and g["replay"] == fixed_replay]
    if same:  # the packaged recipe is one of the candidates: its grid run is (c)
        fn, ff, fixed_flops = grid[same[0]]["new"], grid[same[0]]["forgetting"], grid[same[0]]["flops"]
    else:
        fixed_s = full_run(cfg, job, work / "fixed", "fixed", args.fixed_lr, fixed_replay, args.grid_evals)
        fn, ff = losses(fixed_s, shift, new, old)
        fixed_flops = train_fpt * fixed_s["tokens"]
    an, af = losses(res.run_summary, shift, new, old)
    # the horizon bias: probe ranking (last rung reached) against the full-budget ranking
    finalists = [c for c in dec["candidates"] if c["steps"] == dec["rungs"][-1]]
    probe = [c["new_loss"][str(len(dec["rungs"]) - 1)] for c in finalists]
    full = [grid[c["name"]]["new"] for c in finalists]
    ok_grid = [k for k in grid if bound is None or grid[k]["forgetting"] <= bound]
    rank = sorted(ok_grid, key=lambda k: grid[k]["new"]).index(dec["chosen"]) + 1 if dec["chosen"] in ok_grid else None
    out = {
        "budget": budget, "seed": seed, "bound": bound, "warmup_steps": pipeline.warmup_steps(cfg),
        "grid": grid, "grid_pick": best, "grid_flops": sum(g["flops"] for g in grid.values()),
        "adapt": {"chosen": dec["chosen"], "new": an, "forgetting": af, "flops": res.run_summary["flops"],
                  "deciding_flops": dec["deciding_flops"], "deciding_share": dec["deciding_share"],
                  "wall_s": adapt_s, "wall_note": wall_note, "rank_in_grid": rank,
                  "rule_exponent": dec.get("horizon_exponent")},
        "fixed": {"lr": args.fixed_lr, "replay": fixed_replay, "new": fn, "forgetting": ff, "flops": fixed_flops,
                  "source": f"grid run {same[0]}" if same else "its own run"},
        "probe_rank_tau": kendall_tau(probe, full), "finalists": [c["name"] for c in finalists],
        **goal_parts(an, af, grid[best]["new"], fn, ff, bound),
        "probes_within_10pct": dec["deciding_share"] <= 0.10,
    }
    return {**out, **current_rule(job, out, cfg.horizon_exponent)}


def goal_parts(new: float, forgot: float | None, best: float, fixed: float, fixed_forgot: float | None,
               bound: float | None) -> dict:
    """The goal's loss parts for a run ending at new-text loss `new` having forgotten `forgot`: within GOAL_NATS of
    the grid's pick `best` under the bound, and not worse than the fixed recipe (unless that breaks the bound)."""
    return {"within_goal": new <= best + GOAL_NATS and (bound is None or forgot <= bound),
            "not_worse_than_fixed": new <= fixed + 1e-9 or (bound is not None and fixed_forgot > bound)}


def current_rule(job: Path, c: dict, exponent: float) -> dict:
    """The cell under the rule as it stands (`rechoose` on the job's probe files) at `exponent`, at the first fit's
    beta (FIRST_FIT) and at none: each choice and the full-budget run of it (adapt's run or the grid's), the goal's
    loss parts judged on that run; and the horizon numbers: the probes' best LR before the correction, the steps it
    was measured at and the beta that would move it onto the grid's pick."""
    cfg = json.loads((job / "job.json").read_text())["config"]
    dec = json.loads((job / "decision.json").read_text())
    shift = json.loads((job / "shift.json").read_text())
    new, old = list(cfg["text"]), list(cfg.get("old") or {})
    steps = cfg["tokens"] // cfg["batch_tokens"]
    alpha = cfg.get("alpha", 0.05)
    best, fixed = c["grid"][c["grid_pick"]], c["fixed"]

    def judged(beta: float) -> dict:
        name, why = rechoose(job, dec, shift, new, old, c["bound"], alpha, steps, beta)
        g = c["grid"][name]
        return {"chosen": name, "why": why, "exponent": beta, "new": g["new"], "forgetting": g["forgetting"],
                "source": "adapt's run" if name == dec["chosen"] else "the grid's run of that candidate",
                **goal_parts(g["new"], g["forgetting"], best["new"], fixed["new"], fixed["forgetting"], c["bound"])}

    raw = judged(0.0)
    probe_lr = c["grid"][raw["chosen"]]["lr"]
    probe_steps = next(k["steps"] for k in dec["candidates"] if k["name"] == raw["chosen"])
    return {
        "current_rule": judged(exponent), "first_fit": judged(FIRST_FIT), "uncorrected": raw,
        "horizon": {"probe_lr": probe_lr, "probe_steps": probe_steps, "run_steps": steps, "full_lr": best["lr"],
                    "implied_exponent": implied_exponent(probe_lr, probe_steps, best["lr"], steps)},
    }


BOUNDS = (0.0, 0.02, 0.05, 0.1, 0.2, None)
# the first fit of the horizon exponent (the job's default until the held-out cells ran) and the cells it was fitted on
# before any other cell ran: every other cell is held out from it; the default now (config.DEFAULT_HORIZON_EXPONENT)
# is fitted on all cells
FIRST_FIT = 0.2
FIT_CELLS = ((40960, 0), (40960, 1), (65536, 0))


def horizon_section(cells: list[dict]) -> list[str]:
    """The horizon correction: per cell the beta that would move the probes' best LR onto the grid's pick, the fit
    (on FIT_CELLS, and on all), and the current rule judged per cell, fitted and held-out cells apart."""
    fit = [c for c in cells if (c["budget"], c["seed"]) in FIT_CELLS]
    held = [c for c in cells if (c["budget"], c["seed"]) not in FIT_CELLS]

    def pts(cs):
        return [(h["probe_lr"], h["full_lr"], h["probe_steps"], h["run_steps"]) for h in (c["horizon"] for c in cs)]

    b_fit, b_all = horizon_fit(pts(fit)), horizon_fit(pts(cells))
    exp = cells[0]["current_rule"]["exponent"]
    lines = ["## The horizon correction", "",
             "The probes' best max LR (the rule before the correction) against the full budget's best (the grid's "
             "pick), and the beta of LR* ~ horizon^-beta (Bjorck et al. 2024) that moves the one onto the other: "
             "log(probe LR / full LR) / log(run steps / probe steps).", "",
             "| tokens | seed | probes' best LR (after steps) | run steps | full budget's best LR | implied beta | "
             "in the first fit |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        h = c["horizon"]
        lines.append(f"| {c['budget']:,} | {c['seed']} | {h['probe_lr']:g} ({h['probe_steps']}) | {h['run_steps']} | "
                     f"{h['full_lr']:g} | {h['implied_exponent']:+.3f} | "
                     f"{'yes' if (c['budget'], c['seed']) in FIT_CELLS else 'no (held out)'} |")
    lines += ["", "Least-squares beta through the origin: "
              + (f"{b_fit:.4f} on the fitted cells" if b_fit is not None else "no fitted cell here")
              + (f", {b_all:.4f} on all {len(cells)}" if b_all is not None else "")
              + f"; the job's default (`--horizon-exponent`) is {DEFAULT_HORIZON_EXPONENT:g}, this table's rule used "
              f"{exp:g}.", "",
              "Each rule re-made from each cell's probe files and judged on the full-budget run of its choice (adapt's "
              f"run or the grid's): the job's default now (beta {exp:g}, fitted on all cells), the first fit (beta "
              f"{FIRST_FIT:g}, fitted on three cells before the others ran, which are held out from it) and no "
              "correction (beta 0). Each: choice, new-text loss minus (a), minus (c), and the goal's loss parts "
              "(within 0.02 nats of (a) and not worse than (c)).", "",
              f"| tokens | seed | beta {exp:g} (default) | beta {FIRST_FIT:g} (first fit) | beta 0 | cell in the "
              "first fit |", "|---|---|---|---|---|---|"]

    def cell_of(r, a, f):
        ok = r["within_goal"] and r["not_worse_than_fixed"]
        return f"{r['chosen']}: {r['new'] - a['new']:+.4f}, {r['new'] - f['new']:+.4f}, {'met' if ok else 'MISSED'}"

    for c in cells:
        a, f = c["grid"][c["grid_pick"]], c["fixed"]
        lines.append(f"| {c['budget']:,} | {c['seed']} | {cell_of(c['current_rule'], a, f)} | "
                     f"{cell_of(c['first_fit'], a, f)} | {cell_of(c['uncorrected'], a, f)} | "
                     f"{'fitted' if (c['budget'], c['seed']) in FIT_CELLS else 'held out'} |")
    lines.append("")
    for key, label in (("current_rule", f"beta {exp:g}"), ("first_fit", f"beta {FIRST_FIT:g}"),
                       ("uncorrected", "beta 0")):
        parts = []
        for name, cs in (("fitted", fit), ("held out", held)):
            if cs:
                n = sum(c[key]["within_goal"] and c[key]["not_worse_than_fixed"] for c in cs)
                parts.append(f"{n} of {len(cs)} {name}")
        gap = sum(c[key]["new"] - c["grid"][c["grid_pick"]]["new"] for c in cells) / len(cells)
        lines.append(f"- {label}: loss parts met in {', '.join(parts)} (cells as in the first fit); mean new-text "
                     f"loss above (a) {gap:.4f} nats over all {len(cells)}.")
    return lines + ["", "(The goal's third part, deciding at most 10% of the FLOPs, does not depend on the rule: "
                    "see the deciding share above.)", ""]


def probe_rows(work: Path, c: dict) -> dict:
    """Each candidate's probe numbers at the last rung it reached (the job's decision.json)."""
    dec = json.loads((work / f"tokens-{c['budget']}" / f"seed-{c['seed']}" / "adapt" / "decision.json").read_text())
    out = {}
    for k in dec["candidates"]:
        last = str(max(int(r) for r in k["new_loss"]))
        out[k["name"]] = {"steps": k["steps"], "new": k["new_loss"][last], "forgetting": k["forgetting"][last],
                          "status": k["status"]}
    return out


def candidates_table(c: dict, probes: dict) -> list[str]:
    bound = c["bound"]
    lines = [f"### {c['budget']:,} tokens, seed {c['seed']}", "",
             "| candidate | probe steps | probe new loss | probe forgetting | full-budget new loss | full-budget "
             f"forgetting | keeps +{bound:g} | run |", "|---|---|---|---|---|---|---|---|"]
    for name, g in c["grid"].items():
        pr = probes.get(name, {})
        keeps = "yes" if g["forgetting"] is None or g["forgetting"] <= bound else "no"
        mark = " (adapt's choice)" if name == c["adapt"]["chosen"] else ""
        lines.append(f"| {name}{mark} | {pr.get('steps', '—')} | {pr.get('new', float('nan')):.4f} | "
                     f"{pr.get('forgetting', float('nan')):+.4f} | {g['new']:.4f} | {g['forgetting']:+.4f} | {keeps} | "
                     f"{g.get('source', 'grid')} |")
    return lines + [""]


def bound_analysis(cells: list[dict]) -> list[str]:
    """What each forgetting bound would have picked at the full budget (the grid), and the seed-to-seed spread of
    each candidate's measured forgetting: the noise a bound must stand above."""
    lines = ["## The default `--max-forgetting`", "",
             "The grid's pick (lowest full-budget new-text loss among the candidates that keep the bound) under each "
             "bound, per cell: pick, new loss, forgetting.", "",
             "| tokens | seed | " + " | ".join("no bound" if b is None else f"+{b:g}" for b in BOUNDS) + " |",
             "|---|---|" + "---|" * len(BOUNDS)]
    for c in cells:
        row = []
        for b in BOUNDS:
            k = pick(c["grid"], b)
            g = c["grid"][k]
            row.append(f"{k}: {g['new']:.4f}, {g['forgetting']:+.4f}")
        lines.append(f"| {c['budget']:,} | {c['seed']} | " + " | ".join(row) + " |")
    by_budget: dict[int, list[dict]] = {}
    for c in cells:
        by_budget.setdefault(c["budget"], []).append(c)
    for budget, cs in by_budget.items():
        if len(cs) < 2:
            continue
        spread = {k: max(x["grid"][k]["forgetting"] for x in cs) - min(x["grid"][k]["forgetting"] for x in cs)
                  for k in cs[0]["grid"]}
        lines += ["", f"Seed-to-seed spread of the full-budget forgetting at {budget:,} tokens (max - min over seeds "
                  f"{', '.join(str(x['seed']) for x in cs)}): " + ", ".join(f"{k} {v:.4f}" for k, v in spread.items())
                  + f"; largest {max(spread.values()):.4f}."]
    return lines + [""]


def markdown(cells: list[dict], command: str, work: Path | None = None) -> str:
    commands = list(dict.fromkeys(c.get("command", command) for c in cells))
    written = [f"Written by: `{commands[0]}`"] if len(commands) == 1 else (
        ["Written by (each cell names its command below):", ""] + [f"- `{c}`" for c in commands])
    lines = ["# `warmstart adapt` against the full-budget grid and the fixed recipe", "", *written, "",
             "| tokens | seed | (a) grid pick | (a) new loss | (b) adapt choice | (b) new loss | (b) forgetting | "
             "(c) fixed new loss | (c) forgetting | deciding share | probe-rank tau | adapt's rank in (a) | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        a, b, f = c["grid"][c["grid_pick"]], c["adapt"], c["fixed"]
        fg = "—" if b["forgetting"] is None else f"{b['forgetting']:+.4f}"
        ff = "—" if f["forgetting"] is None else f"{f['forgetting']:+.4f}"
        tau = "—" if c["probe_rank_tau"] is None else f"{c['probe_rank_tau']:+.2f}"
        goal = "met" if c["within_goal"] and c["not_worse_than_fixed"] and c["probes_within_10pct"] else "MISSED"
        lines.append(f"| {c['budget']:,} | {c['seed']} | {c['grid_pick']} | {a['new']:.4f} | {b['chosen']} | "
                     f"{b['new']:.4f} | {fg} | {f['new']:.4f} | {ff} | {b['deciding_share']:.1%} | {tau} | "
                     f"{b['rank_in_grid'] or '—'} | {goal} |")
    for c in cells:
        cur = c.get("current_rule")
        if cur and cur["chosen"] != c["adapt"]["chosen"]:
            ran = c["adapt"].get("rule_exponent")
            under = "an earlier rule" if ran is None else f"horizon exponent {ran:g}"
            lines.append(f"- tokens {c['budget']:,}, seed {c['seed']}: adapt ran under {under} and chose "
                         f"{c['adapt']['chosen']}; the current rule picks {cur['chosen']} from the same probe files: "
                         f"its full-budget run ({cur['source']}) ends at new-text loss {cur['new']:.4f}, forgetting "
                         f"{cur['forgetting']:+.4f}.")
    met = sum(c["within_goal"] and c["not_worse_than_fixed"] and c["probes_within_10pct"] for c in cells)
    lines += ["", f"Goal (within {GOAL_NATS} nats of (a) under the same bound, not worse than (c), probes at most "
              f"10% of the FLOPs): met in {met} of {len(cells)} cells as run.", ""]
    for c in cells:
        for what, ok in (("NOT within 0.02 nats of the grid's pick (or not within the bound)", c["within_goal"]),
                         ("WORSE than the fixed recipe", c["not_worse_than_fixed"]),
                         (f"deciding took {c['adapt']['deciding_share']:.1%} of the run's FLOPs, NOT at most 10%",
                          c["probes_within_10pct"])):
            if not ok:
                lines.append(f"- tokens {c['budget']:,}, seed {c['seed']}: {what}.")
    for c in cells:
        w = c.get("warmup_steps")
        lines.append(f"- tokens {c['budget']:,}, seed {c['seed']}: every full-budget run re-warmed over "
                     + (f"{w} steps" if w is not None else "0 steps (written before the job's 2-step warmup floor: "
                        "1% of 40 steps rounded to none)")
                     + (f"; command: `{c['command']}`" if len(commands) > 1 and c.get("command") else "") + ".")
    for c in cells:
        if c["adapt"].get("wall_s") is not None:
            note = f" ({c['adapt']['wall_note']})" if c["adapt"].get("wall_note") else ""
            lines.append(f"- tokens {c['budget']:,}, seed {c['seed']}: `adapt` wall time {c['adapt']['wall_s']:.0f} s"
                         f"{note}.")
    lines += ["", "Deciding share: the format probe, the before-training losses and the probes, over the run's training "
              "FLOPs. Probe-rank tau: Kendall's tau between the probes' new-text ranking (last rung) and the full-budget "
              "ranking, over the candidates the probes carried to their last rung. (a)'s entry for adapt's choice is "
              "adapt's own run; (c) is the grid's run of the packaged recipe's settings when they are a candidate.", ""]
    if all(c.get("current_rule") for c in cells):
        lines += horizon_section(cells)
    if work is not None:
        lines += ["## Every candidate: probes and the full budget", ""]
        for c in cells:
            lines += candidates_table(c, probe_rows(work, c))
    if cells and cells[0]["bound"] is not None:
        lines += bound_analysis(cells)
    lines += ["", f"Machine: {platform.platform()}, Python {platform.python_version()}.", ""]
    return "\n".join(lines)


def refreshed(args, c: dict) -> dict:
    """A kept cell with the current rule re-made from its job's probe files (no training)."""
    job = Path(args.work) / f"tokens-{c['budget']}" / f"seed-{c['seed']}" / "adapt"
    return {**c, **current_rule(job, c, args.horizon_exponent)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text", action="append", required=True)
    p.add_argument("--old", action="append")
    p.add_argument("--budgets", default="16k,65k", help="comma-separated token budgets; the first is the smaller")
    p.add_argument("--seeds", default="0,1", help="seeds at the smaller budget")
    p.add_argument("--large-seeds", dest="large_seeds", default="0", help="seeds at the other budgets")
    p.add_argument("--work", required=True)
    p.add_argument("--results", default=str(RESULTS / "adapt"), help="path stem of the .md and .json written")
    p.add_argument("--probe-share", dest="probe_share", type=float, default=0.1)
    p.add_argument("--max-forgetting", dest="max_forgetting", type=float, default=DEFAULT_MAX_FORGETTING)
    p.add_argument("--replay")
    p.add_argument("--horizon-exponent", dest="horizon_exponent", type=float, default=DEFAULT_HORIZON_EXPONENT,
                   help="beta of adapt's horizon correction (the job's --horizon-exponent)")
    add_job_settings(p, batch_tokens=4096, micro_batch_size=8, eval_tokens=16384)
    p.add_argument("--grid-evals", dest="grid_evals", type=int, default=4, help="evaluations per grid run")
    p.add_argument("--fixed-lr", dest="fixed_lr", type=float, default=3e-4)
    p.add_argument("--fixed-replay", dest="fixed_replay", type=float, default=0.25)
    p.add_argument("--rewrite", action="store_true", help="only write the .md again from the .json and WORK")
    p.add_argument("--fresh", action="store_true",
                   help="drop the results file's cells of other budgets and seeds (kept by default)")
    args = p.parse_args()
    if args.rewrite:
        stem = Path(args.results)
        held = json.loads(stem.with_suffix(".json").read_text())
        cells = [refreshed(args, c) for c in held["cells"]]
        atomic.write_json(stem.with_suffix(".json"), {**held, "cells": cells})
        atomic.write_text(stem.with_suffix(".md"), markdown(cells, held["command"], Path(args.work)))
        return
    budgets = [parse_tokens(b) for b in args.budgets.split(",")]
    plan = [(b, int(s)) for i, b in enumerate(budgets)
            for s in (args.seeds if i == 0 else args.large_seeds).split(",")]
    command = "python bench/adapt.py " + " ".join(sys.argv[1:])
    stem = Path(args.results)
    cells = []
    if stem.with_suffix(".json").is_file() and not args.fresh:  # cells of other (budget, seed)s are kept
        held = json.loads(stem.with_suffix(".json").read_text())
        cells = [refreshed(args, {"command": held["command"], **c}) for c in held["cells"]
                 if (c["budget"], c["seed"]) not in plan]
    for b, s in plan:  # written after every cell: a long bench stopped part-way keeps what it finished
        cells.append({"command": command, **cell(args, b, s)})
        atomic.write_json(stem.with_suffix(".json"), {"command": command, "cells": cells})
        atomic.write_text(stem.with_suffix(".md"), markdown(cells, command, Path(args.work)))
    print(markdown(cells, command, Path(args.work)))


if __name__ == "__main__":
    run_main(main)
