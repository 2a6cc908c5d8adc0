"""`warmstart quickstart`: the whole story on the built-in corpus, on a laptop CPU, in a few minutes.

1. write the demo corpus (real text shipped with Python), train a small BPE, prepare token shards;
2. pre-train a small LLaMA-style reference model on the upstream domain (`prose`);
3. continue it on the downstream domain (`code`) with re-warming (warmup + cosine), evaluating every domain
   densely from step 0, so the stability gap is visible;
4. print upstream/downstream loss before, at the worst point, and at the end, with the stability-gap metrics,
   and a replay variant (25% of every batch from the upstream domain);
5. Inheritune: inherit half of the reference's blocks, train briefly, compare with the same-size random init;
6. AutoScale: DDO at two small budgets on the demo domains and the predicted mixture at 4x;
7. the baseline the continued runs replace: the same model shape from scratch on `code`, same steps;
8. a report (PNG plots + HTML summary) of the runs, with the Inheritune and AutoScale tables and mixtures,
   compute saved measured against that baseline on the `code` validation loss (own tokens, and counting the
   upstream pre-training; the terminal shows it as the report does).

Each step is skipped when its output is already complete, and an interrupted run is resumed. The steps of
5, 6, 8 and the replay variant of 4 are in `warmstart.demo.steps`; this module holds the story and its recipes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from warmstart import atomic
from warmstart.config import Recipe, to_yaml, validate
from warmstart.jsonfile import read_json_object
from warmstart.runtime import rundir

UPSTREAM, DOWNSTREAM = "prose", "code"
SEQ_LEN = 128
BATCH_TOKENS = 16 * SEQ_LEN


def recipes(root: Path) -> dict[str, Recipe]:
    """The quickstart's training recipes: the upstream pre-training, the re-warmed continuation and its baseline,
    the same model from scratch on the downstream domain with the same steps (also written to OUT/recipes/)."""
    shards = str(root / "corpus" / "shards")
    common = {
        "out_dir": str(root / "runs"),
        "seed": 0,
        "optim": {"weight_decay": 0.1, "grad_clip": 1.0},
        "train": {"batch_tokens": BATCH_TOKENS, "micro_batch_size": 16, "log_every": 10},
    }
    upstream = {
        **common,
        "name": "upstream",
        "data": {"dir": shards, "weights": {UPSTREAM: 1.0}, "seq_len": SEQ_LEN},
        "model": {"preset": "llama-small", "tokenizer": str(root / "corpus" / "tokenizer")},
        "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_steps": 20, "min_lr_ratio": 0.1},
        "train": {**common["train"], "steps": 300},
        "eval": {"every": 50, "max_tokens": 8192, "batch_size": 32},
    }
    downstream = {
        **common,
        "name": "downstream-rewarm",
        "data": {"dir": shards, "weights": {DOWNSTREAM: 1.0}, "seq_len": SEQ_LEN},
        "init": {"from": str(root / "runs" / "upstream")},
        "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_fraction": 0.05, "min_lr_ratio": 0.1},
        "train": {**common["train"], "steps": 150},
        "eval": {"every": 10, "dense_steps": 20, "max_tokens": 8192, "batch_size": 32},
    }
    # the run the re-warmed ones replace: the same model shape trained from scratch on the new domain, same budget
    scratch = {
        **upstream,
        "name": "downstream-scratch",
        "data": {**downstream["data"]},
        "train": {**downstream["train"]},
        "eval": {**upstream["eval"], "every": 25},
    }
    return {
        r["name"]: validate(Recipe, r, f"quickstart:{r['name']}") for r in (upstream, downstream, scratch)
    }


def _saved_lines(s: dict) -> str:
    """The report's compute saved against the scratch baseline (its summary.json), in a few printable lines; the
    numbers in the report's own display rule (`warmstart.tables.fmt`, 'saved'), so terminal and report agree."""
    from warmstart.tables import fmt

    lines = [f"compute saved against {s['baseline']} (reaching its final {s['metric']}, {s['target']:.3f}):"]
    for r in s["runs"]:
        c = r["compute_saved"]
        if r["name"] == s["baseline"]:
            continue
        if not c["comparable"]:
            lines.append(f"  {r['name']:<28} not comparable: {c['not_comparable']}")
        elif not c["reached"]:
            lines.append(f"  {r['name']:<28} not reached")
        else:
            total = c["total_tokens_saved"]
            lines.append(
                f"  {r['name']:<28} {c['tokens_to_target']:>9,.0f} tokens: {fmt(c['tokens_saved'], 'saved')} own, "
                + (f"{fmt(total, 'saved')} counting the upstream runs" if total is not None else "total unknown")
            )
    return "\n".join(lines)


class _Stages:
    """`[quickstart k/N, M:SS elapsed] what`: where the demo is and how long it has taken (each training run's
    progress bar, or its progress lines in a log, gives that run's time left)."""

    def __init__(self, n: int):
        self.n, self.k, self.t0 = n, 0, time.monotonic()

    def elapsed(self) -> str:
        m, sec = divmod(int(time.monotonic() - self.t0), 60)
        return f"{m}:{sec:02d}"

    def __call__(self, what: str) -> None:
        self.k += 1
        print(f"\n[quickstart {self.k}/{self.n}, {self.elapsed()} elapsed] {what}", flush=True)


def run_quickstart(out: Path, fresh: bool = False) -> None:
    """Run the quickstart in OUT (see the module docstring); a run stopped by a signal raises
    `signals.Interrupted` (re-running the same command resumes it)."""
    from warmstart.data.demo_corpus import prepare_demo
    from warmstart.demo import steps
    from warmstart.eval.gap import gap_table, run_gap
    from warmstart.tables import text_table
    from warmstart.train.runs import run_to_end

    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    stage = _Stages(8)
    stage(f"demo corpus, a 2048-token byte-level BPE and token shards in {out / 'corpus'}")
    _, _, prepared = prepare_demo(out, vocab_size=2048, workers=2, progress=True)
    print(prepared.summary())

    rs = recipes(out)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    for name, r in rs.items():
        atomic.write_text(out / "recipes" / f"{name}.yaml", to_yaml(r))
    stage(f"pre-training the reference model on '{UPSTREAM}'")
    run_to_end(rs["upstream"])
    stage(f"continuing it on '{DOWNSTREAM}' with re-warming (warmup + cosine)")
    run_to_end(rs["downstream-rewarm"])

    rewarm = rs["downstream-rewarm"].run_dir
    print(f"\nContinual pre-training {UPSTREAM} -> {DOWNSTREAM}: validation loss per domain")
    print(text_table(gap_table({rewarm.name: run_gap(rewarm)})))

    stage("stability gap and a replay variant")
    print(steps.replay_step(rs["downstream-rewarm"], rs["upstream"].run_dir, UPSTREAM))
    stage("Inheritune: half of the reference's blocks vs the same-size random init")
    inheritune = steps.inheritune_step(out, rs["upstream"].run_dir)
    print(f"{inheritune['title']}\n{text_table(inheritune)}")
    stage("AutoScale: compute-optimal mixtures at two small budgets, predicted at 4x")
    autoscale, mixtures = steps.autoscale_step(out)
    print(f"{autoscale['title']}\n{text_table(autoscale)}\n{autoscale['note']}")
    stage(f"the baseline the re-warmed runs replace: the same model from scratch on '{DOWNSTREAM}'")
    run_to_end(rs["downstream-scratch"])
    stage("the report")
    runs = sorted(p for p in (out / "runs").iterdir() if rundir.summary_path(p).is_file())
    html = steps.report_step(out, [*runs, *mixtures], baseline=rs["downstream-scratch"].run_dir,
                             metric=f"val/{DOWNSTREAM}/loss",
                             extra_tables={"inheritune": inheritune, "autoscale": autoscale})
    print(_saved_lines(read_json_object(html.parent / "summary.json", "report summary")))
    print(f"\nruns: {out / 'runs'}  ({rundir.METRICS}, {rundir.FINAL}/ Hugging Face checkpoints)")
    print(f"recipes: {out / 'recipes'}  (re-run with `warmstart train RECIPE`)")
    print(f"report: {html}")
    print(f"[quickstart] done in {stage.elapsed()}")
