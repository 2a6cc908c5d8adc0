"""Continual pre-training on the demo corpus: re-warming, replay, from scratch, and the stability-gap strategies.

    python bench/continual.py                      # writes bench/results/continual.{json,md,png}
    python bench/continual.py --work /tmp/cpt      # keep the runs (a re-run skips finished ones)

A llama-small model is pre-trained on the upstream domain (`prose`), then continued on the downstream domain
(`code`) for the same number of steps in every variant (equal tokens, equal compute):
  (a) no re-warm: constant low LR (0.1 x the upstream max LR, as Gupta et al.'s 3e-5 vs 3e-4);
  (b) re-warm (linear warmup 2% + cosine to 0.1 x max) at max LR 0.5x, 1x, 2x the upstream max LR;
  (c) re-warm 1x + 5% and 25% replay of `prose` (compute-equivalent: part of the same batch);
  (d) from scratch on `code`, same steps and schedule as (b) 1x;
  (e) Guo et al.'s strategies at the (b) 1x schedule: e1 a random K-token subset of `code` for 4 epochs;
      e2 the K lowest-perplexity `code` tokens under the upstream model (`warmstart quality`), 4 epochs;
      e3 a pretraining-like mixture: 82% code + 18% prose re-sampled each epoch; e4 all three combined.
Every run evaluates both domains densely from step 0; gap metrics come from warmstart.eval.gap.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from harness import edited, run_main

from warmstart import atomic
from warmstart.config import Recipe, validate
from warmstart.data.demo_corpus import prepare_demo
from warmstart.eval.gap import run_gap
from warmstart.recipes.continual import pretraining_like_recipe
from warmstart.runtime import rundir
from warmstart.runtime.metrics import read_metrics
from warmstart.train.runs import run_to_end

UP, DOWN = "prose", "code"
RESULTS = Path(__file__).resolve().parent / "results"


def base_tree(args, shards: Path, runs: Path, name: str) -> dict:
    return {
        "name": name,
        "out_dir": str(runs),
        "seed": 0,
        "data": {"dir": str(shards), "weights": {DOWN: 1.0}, "seq_len": args.seq_len},
        "init": {"from": str(runs / "upstream")},
        "optim": {"weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {"kind": "cosine", "max_lr": args.lr, "warmup_fraction": 0.02, "min_lr_ratio": 0.1},
        "train": {
            "steps": args.down_steps,
            "batch_tokens": args.batch_tokens,
            "micro_batch_size": 8,
            "log_every": 5,
            "progress": False,
        },
        "eval": {
            "every": args.eval_every,
            "dense_steps": args.dense,
            "max_tokens": args.eval_tokens,
            "batch_size": 32,
            "domains": [UP, DOWN],
        },
    }


def record(work: Path, name: str, seconds: float) -> None:
    """Wall seconds of the invocation that actually did the work (a re-run that skips keeps them)."""
    path = work / "timings.json"
    t = json.loads(path.read_text()) if path.is_file() else {}
    t[name] = round(seconds, 1)
    atomic.write_json(path, t)


def run(recipe: Recipe, work: Path) -> None:
    t0 = time.perf_counter()
    status = run_to_end(recipe).status
    dt = time.perf_counter() - t0
    if status != "skipped":
        record(work, recipe.name, dt)
    print(f"[bench] {recipe.name}: {status} ({dt:.0f}s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/warmstart-bench-continual")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-tokens", type=int, default=1024)
    p.add_argument("--up-steps", type=int, default=120)
    p.add_argument("--down-steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3, help="upstream max LR (= the 1x re-warm max LR)")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--dense", type=int, default=6)
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=4, help="epochs over the K-token subsets (e1, e2, e4)")
    p.add_argument("--out", default=str(RESULTS / "continual"))
    args = p.parse_args()
    work = Path(args.work)
    shards, tok, _ = prepare_demo(work)
    runs = work / "runs"

    up = base_tree(args, shards, runs, "upstream")
    up.pop("init")
    up["model"] = {"preset": "llama-small", "tokenizer": str(tok)}
    up["data"]["weights"] = {UP: 1.0}
    up["schedule"] = {"kind": "cosine", "max_lr": args.lr, "warmup_steps": 20, "min_lr_ratio": 0.1}
    up["train"]["steps"] = args.up_steps
    up["eval"].update({"every": 50, "dense_steps": 0})
    run(validate(Recipe, up), work)

    budget = args.down_steps * args.batch_tokens
    k_tokens = budget // args.epochs  # subset size so that the budget is `epochs` passes over it

    def variant(name: str, **edits) -> dict:
        return edited(base_tree(args, shards, runs, name), **edits)

    trees = {
        "a-constant-lowlr": variant(
            "a-constant-lowlr", schedule={"kind": "constant", "max_lr": args.lr * 0.1}
        ),
        "b-rewarm-0.5x": variant("b-rewarm-0.5x", schedule__max_lr=args.lr * 0.5),
        "b-rewarm-1x": variant("b-rewarm-1x"),
        "b-rewarm-2x": variant("b-rewarm-2x", schedule__max_lr=args.lr * 2),
        "c-replay-5": variant("c-replay-5", data__replay={"fraction": 0.05, "domains": {UP: 1.0}}),
        "c-replay-25": variant("c-replay-25", data__replay={"fraction": 0.25, "domains": {UP: 1.0}}),
        "d-scratch": variant("d-scratch", init={}, model={"preset": "llama-small", "tokenizer": str(tok)}),
        "e1-subset-epochs": variant(
            "e1-subset-epochs", data__subsets={DOWN: {"tokens": k_tokens, "mode": "random"}}
        ),
    }
    for name, t in trees.items():
        run(validate(Recipe, t, name), work)

    # e2: the K lowest-perplexity code tokens under the upstream (reference) model, as a new domain
    from warmstart.data.quality import select_top_tokens
    from warmstart.recipes.quality import score_domain

    ranking = work / "ranking-code"
    t0 = time.perf_counter()
    score_domain(
        str(runs / "upstream"),
        shards,
        DOWN,
        ranking,
        batch_size=16,
        chunk_docs=64,
        context=args.seq_len * 2,
        max_doc_tokens=1024,
        progress=False,
    )
    sel = select_top_tokens(shards, ranking, k_tokens, "code_hq", overwrite=True)
    if sel["status"] != "up to date":
        record(work, "quality", time.perf_counter() - t0)
    print(f"[bench] quality: {sel} ({time.perf_counter() - t0:.0f}s)", flush=True)
    hq_tokens = sel["tokens"]
    hq_k = min(k_tokens, (hq_tokens - 1) // args.seq_len * args.seq_len)
    e2 = variant("e2-hq-subset-epochs", data__weights={"code_hq": 1.0})
    e2["eval"]["domains"] = [UP, DOWN]
    e3 = pretraining_like_recipe(
        variant("e3-pretrain-mixture"),
        {UP: 1.0},
        DOWN,
        0.82,
        general_tokens_per_epoch=round(k_tokens * 0.18 / 0.82),
    )
    e4 = pretraining_like_recipe(
        variant("e4-all-three"),
        {UP: 1.0},
        "code_hq",
        0.82,
        general_tokens_per_epoch=round(hq_k * 0.18 / 0.82),
    )
    for r in (validate(Recipe, e2, "e2"), e3, e4):
        run(r, work)
    names = [*trees, "e2-hq-subset-epochs", "e3-pretrain-mixture", "e4-all-three"]
    timings = json.loads((work / "timings.json").read_text())
    report(runs, names, args, sel, sum(timings.values()))


def _curve(run_dir: Path, key: str) -> tuple[list[int], list[float]]:
    ev = [m for m in read_metrics(run_dir) if m.get("event") == "eval" and m.get(key) is not None]
    return [m["tokens"] for m in ev], [m[key] for m in ev]


def report(runs: Path, names: list[str], args, sel: dict, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    up_final = rundir.load_summary(runs / "upstream")["final_eval"]
    for n in names:
        g = run_gap(runs / n)
        g3 = run_gap(runs / n, window=3)
        rows.append(
            {
                "run": n,
                **{
                    f"{dom}_{k}": g[f"val/{dom}/loss"][k]
                    for dom in (UP, DOWN)
                    for k in (
                        "start",
                        "worst",
                        "worst_tokens",
                        "depth",
                        "recovered",
                        "recover_tokens",
                        "final",
                    )
                },
                **{f"{dom}_depth_w3": g3[f"val/{dom}/loss"]["depth"] for dom in (UP, DOWN)},
            }
        )
    by = {r["run"]: r for r in rows}
    f = {}  # findings: (claim, holds?, evidence)
    rewarm = ["b-rewarm-0.5x", "b-rewarm-1x", "b-rewarm-2x"]
    f["rewarm_raises_losses_first"] = (
        "Re-warming first raises the loss (a stability gap): downstream and upstream loss rise above their step-0 "
        "value before falling",
        all(by[r][f"{DOWN}_depth"] > 0 and by[r][f"{UP}_depth"] > 0 for r in rewarm),
        ", ".join(
            f"{r}: {DOWN} depth {by[r][f'{DOWN}_depth']:.3f}, {UP} depth {by[r][f'{UP}_depth']:.3f}"
            for r in rewarm
        ),
    )
    f["rewarm_beats_scratch"] = (
        "Every re-warmed model beats training from scratch on the downstream data",
        all(by[r][f"{DOWN}_final"] < by["d-scratch"][f"{DOWN}_final"] for r in rewarm),
        f"scratch {by['d-scratch'][f'{DOWN}_final']:.3f} vs "
        + ", ".join(f"{r} {by[r][f'{DOWN}_final']:.3f}" for r in rewarm),
    )
    lo, mid, hi = (by[r] for r in rewarm)
    f["higher_lr_more_adaptation"] = (
        "Higher max LR: more adaptation (lower downstream loss)",
        lo[f"{DOWN}_final"] > mid[f"{DOWN}_final"] > hi[f"{DOWN}_final"],
        f"{DOWN} final 0.5x/1x/2x: {lo[f'{DOWN}_final']:.3f} / {mid[f'{DOWN}_final']:.3f} / {hi[f'{DOWN}_final']:.3f}",
    )
    f["higher_lr_more_forgetting"] = (
        "Higher max LR: more forgetting (higher upstream loss)",
        lo[f"{UP}_final"] < mid[f"{UP}_final"] < hi[f"{UP}_final"],
        f"{UP} final 0.5x/1x/2x: {lo[f'{UP}_final']:.3f} / {mid[f'{UP}_final']:.3f} / {hi[f'{UP}_final']:.3f}",
    )
    f["rewarm_beats_constant_downstream"] = (
        "Re-warming gives lower downstream loss in the end than a constant low LR (no re-warm)",
        mid[f"{DOWN}_final"] < by["a-constant-lowlr"][f"{DOWN}_final"],
        f"1x {mid[f'{DOWN}_final']:.3f} vs constant {by['a-constant-lowlr'][f'{DOWN}_final']:.3f}",
    )
    f["replay_reduces_forgetting"] = (
        "Replay reduces forgetting (upstream loss 25% < 5% < no replay) at a small downstream cost",
        by["c-replay-25"][f"{UP}_final"] < by["c-replay-5"][f"{UP}_final"] < mid[f"{UP}_final"],
        f"{UP} final 0/5/25%: {mid[f'{UP}_final']:.3f} / {by['c-replay-5'][f'{UP}_final']:.3f} / "
        f"{by['c-replay-25'][f'{UP}_final']:.3f}; {DOWN} final {mid[f'{DOWN}_final']:.3f} / "
        f"{by['c-replay-5'][f'{DOWN}_final']:.3f} / {by['c-replay-25'][f'{DOWN}_final']:.3f}",
    )
    strategies = ["e1-subset-epochs", "e2-hq-subset-epochs", "e3-pretrain-mixture", "e4-all-three"]
    for s in strategies:
        f[f"{s}_shallower_gap"] = (
            f"{s}: a shallower downstream stability gap than plain re-warming (1x)",
            by[s][f"{DOWN}_depth"] < mid[f"{DOWN}_depth"],
            f"depth {by[s][f'{DOWN}_depth']:.3f} vs {mid[f'{DOWN}_depth']:.3f}",
        )
        f[f"{s}_better_downstream"] = (
            f"{s}: lower final downstream loss than plain re-warming (1x) at equal compute",
            by[s][f"{DOWN}_final"] < mid[f"{DOWN}_final"],
            f"{by[s][f'{DOWN}_final']:.3f} vs {mid[f'{DOWN}_final']:.3f}",
        )
    out = Path(args.out)
    env = {"python": platform.python_version(), "machine": platform.machine(), "seconds": round(seconds, 1)}
    atomic.write_json(
        out.with_suffix(".json"),
        {
            "settings": vars(args),
            "upstream_final": up_final,
            "quality_selection": sel,
            "runs": rows,
            "findings": {k: {"claim": c, "holds": bool(h), "evidence": e} for k, (c, h, e) in f.items()},
            "env": env,
        },
    )

    def tok(r, dom):
        return f"{r[f'{dom}_recover_tokens']:,}" if r[f"{dom}_recovered"] else "never"

    lines = [
        "# Continual pre-training on the demo corpus (`bench/continual.py`)",
        "",
        f"llama-small (~1M params), upstream `{UP}` {args.up_steps} steps, then `{DOWN}` for {args.down_steps} "
        f"steps x {args.batch_tokens} tokens (seq {args.seq_len}) in every variant; eval every step before "
        f"{args.dense}, then every {args.eval_every}, on {args.eval_tokens} val tokens per domain. Gap metrics "
        "from `warmstart.eval.gap` (window 1; `*_depth_w3` in the JSON uses a 3-point moving median). "
        f"Wall time {seconds / 60:.1f} min (summed over the runs, as first trained) on {platform.machine()} CPU "
        "(2 cores shared with other jobs: throughput varied 10x during the run).",
        "",
        f"| run | {DOWN} start | {DOWN} gap depth | {DOWN} tokens to recover | {DOWN} final | {UP} start | "
        f"{UP} gap depth | {UP} tokens to recover | {UP} final |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r[f'{DOWN}_start']:.3f} | {r[f'{DOWN}_depth']:.3f} | {tok(r, DOWN)} | "
            f"{r[f'{DOWN}_final']:.3f} | {r[f'{UP}_start']:.3f} | {r[f'{UP}_depth']:.3f} | {tok(r, UP)} | "
            f"{r[f'{UP}_final']:.3f} |"
        )
    lines += [
        "",
        f"Quality subset (e2, e4): {sel['docs']} of {sel['of_docs']} `{DOWN}` documents, "
        f"{sel['tokens']:,} tokens, lowest perplexity under the upstream model.",
        "",
        "## Which of the papers' findings reproduce at this scale",
        "",
    ]
    for c, h, e in f.values():
        lines.append(f"- **{'reproduces' if h else 'does not reproduce'}**: {c}. ({e})")
    hq_epochs = args.down_steps * args.batch_tokens / max(sel["tokens"], 1)
    lines += [
        "",
        "## Notes (read before trusting the verdicts above)",
        "",
        f"- Each verdict compares single runs (one seed) of {args.down_steps} steps; differences of a few "
        "hundredths are within run-to-run noise at this scale.",
        f"- Warmup is 2% of {args.down_steps} steps, i.e. about one step, so the LR reaches its maximum at once; the "
        "dip at the first evaluations is mostly that first large step (Gupta et al. also found warmup length to "
        "matter little). The 0.5x run shows no downstream dip at all, hence the first verdict.",
        f"- The quality subset is a rank cut over whole documents: the demo's `{DOWN}` documents are long, so the "
        f"cut kept {sel['docs']} documents ({sel['tokens']:,} tokens), repeated ~{hq_epochs:.1f} times in e2; a "
        "model this small overfits them, which is why e2/e4 end worse downstream although their early dip is "
        "shallower than plain re-warming's. Guo et al.'s setting (5B of 50B tokens, a 3B model) is far from this.",
        "- Upstream (`prose`) loss never recovers to its start within the run in any continued variant: with a "
        "strong shift, forgetting is not undone within the run even after the cosine decay to 0.1 x max LR.",
        "",
        "![curves](continual.png)",
    ]
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    colors = plt.get_cmap("tab20").colors
    for i, n in enumerate(names):
        ls, c = ("--" if n.startswith("e") else "-"), colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        for ax, dom in ((axes[0], DOWN), (axes[1], UP)):
            x, y = _curve(runs / n, f"val/{dom}/loss")
            ax.plot(x, y, ls, color=c, label=n, lw=1.2)
        x, y = _curve(runs / n, f"val/{DOWN}/loss")
        cut = [j for j, t in enumerate(x) if t <= args.batch_tokens * max(args.dense, 3 * args.eval_every)]
        axes[2].plot([x[j] for j in cut], [y[j] for j in cut], ls + "o", color=c, ms=3, label=n)
    axes[0].set_title(f"downstream ({DOWN}) val loss")
    axes[1].set_title(f"upstream ({UP}) val loss (forgetting)")
    axes[2].set_title(f"{DOWN}: the first steps (stability gap)")
    for ax in axes:
        ax.set_xlabel("tokens")
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 7))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buf = out.with_suffix(".png")
    fig.savefig(buf, dpi=110)
    print(f"wrote {out.with_suffix('.md')}, .json, .png", flush=True)


if __name__ == "__main__":
    run_main(main)
