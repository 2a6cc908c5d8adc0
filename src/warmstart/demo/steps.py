"""The quickstart's per-method steps, each a few small runs on the demo corpus that return a printable table.

Every run goes through `warmstart.train.runs.run_to_end`: a finished run is read, not retrained, and a run
stopped by a signal stops the quickstart (re-running resumes it).
"""

from __future__ import annotations

from pathlib import Path

from warmstart.config import DDOConfig, Recipe, validate
from warmstart.errors import UserError
from warmstart.runtime import rundir

INHERITUNE_STEPS = 60
INHERITUNE_SEQ_LEN = 128
INHERITUNE_BATCH_TOKENS = 2048
AUTOSCALE_DOMAINS = ["prose", "code", "docstrings"]


# ----------------------------------------------------------------------------------------------- continual
def replay_step(rewarm: Recipe, upstream_run: Path, upstream_domain: str) -> str:
    """The re-warm run's stability gap beside a 25%-replay variant of it.

    The replay run is `rewarm` (a finished run) with `data.replay = {fraction: 0.25, domains: {upstream_domain:
    1.0}}` (same steps and schedule; compute-equivalent), started from `upstream_run`, next to it. Returns the
    gap table of both (and writes gap.json in both run directories). Raises UserError when `rewarm` has not run.
    """
    from warmstart.eval.gap import gap_table, run_gap
    from warmstart.tables import text_table
    from warmstart.train.runs import run_to_end

    rewarm_run = rewarm.run_dir
    if not rundir.summary_path(rewarm_run).is_file():
        raise UserError(f"{rewarm_run}: the re-warm run is not complete (no {rundir.SUMMARY}); run it first")
    base = rewarm.model_dump(mode="json", by_alias=True)
    base["name"] = f"{rewarm.name}-replay25"
    base["out_dir"] = str(rewarm_run.parent)
    base["init"]["from"] = str(upstream_run)
    base["data"]["replay"] = {"fraction": 0.25, "domains": {upstream_domain: 1.0}}
    replay = validate(Recipe, base, f"quickstart:{base['name']}")
    run_to_end(replay)
    return text_table(gap_table({run.name: run_gap(run) for run in (rewarm_run, replay.run_dir)}))


# ----------------------------------------------------------------------------------------------- inheritune
def inheritune_step(root: Path, reference_run: Path) -> dict:
    """Inherit half of the reference run's blocks, train briefly on 'prose', compare with the same-size random
    init trained the same steps; returns the table (val loss on 'prose'; `warmstart.tables` layout)."""
    from warmstart.models.locate import resolve_checkpoint
    from warmstart.recipes.inheritune import count_blocks_and_params, ensure_inherited, random_init_model
    from warmstart.runtime.metrics import read_metrics
    from warmstart.train.runs import run_to_end

    root, reference_run = Path(root), Path(reference_run)
    src = resolve_checkpoint(str(reference_run))
    k, ref_params = count_blocks_and_params(src)
    n = max(1, k // 2)
    work = root / "runs" / "inheritune"
    init = ensure_inherited(src, work, n)
    common = {
        "out_dir": str(work),
        "seed": 0,
        "data": {"dir": str(root / "corpus" / "shards"), "weights": {"prose": 1.0}, "seq_len": INHERITUNE_SEQ_LEN},
        "optim": {"weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_steps": 10, "min_lr_ratio": 0.1},
        "train": {
            "steps": INHERITUNE_STEPS,
            "batch_tokens": INHERITUNE_BATCH_TOKENS,
            "micro_batch_size": 16,
            "log_every": 10,
        },
        "eval": {"every": 40, "max_tokens": 8192, "batch_size": 32, "domains": ["prose"]},
    }
    inh = validate(
        Recipe, {**common, "name": f"inheritune-L{n:02d}", "init": {"from": str(init)}}, "quickstart"
    )
    rnd = validate(
        Recipe, {**common, "name": f"scratch-L{n:02d}", "model": random_init_model(init)}, "quickstart"
    )
    results = {}
    for label, recipe in (("inherited", inh), ("random init", rnd)):
        done = run_to_end(recipe).summary
        evals = [m for m in read_metrics(recipe.run_dir) if m.get("event") == "eval"]
        results[label] = (done["params"], evals[0]["val/prose/loss"], evals[-1]["val/prose/loss"])
    ref_summary = rundir.load_summary(reference_run)
    ref_loss = ref_summary["final_eval"].get("val/prose/loss", float("nan"))
    rows = [["reference", k, ref_params, None, ref_loss]]
    rows += [[label, n, params, start, end] for label, (params, start, end) in results.items()]
    return {
        "title": f"Inheritune: {n} of {k} blocks of {reference_run.name}, {INHERITUNE_STEPS} steps on 'prose'",
        "columns": ["model", "layers", "params", "val/prose/loss at step 0", "val/prose/loss at the end"],
        "formats": ["str", "int", "int", "loss", "loss"],
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------- autoscale
def autoscale_configs(root: Path, budgets: tuple[int, int] = (16, 32)) -> list[DDOConfig]:
    """Two tiny DDOs (base runs of `budgets` steps of 512 tokens) on the demo domains."""
    root = Path(root)
    out = []
    for steps in budgets:
        tree = {
            "name": f"ddo-{steps * 512 // 1000}k",
            "out_dir": str(root / "mixtures"),
            "max_epochs": 4,
            "proxy": {
                "name": "proxy",
                "seed": 0,
                "data": {"dir": str(root / "corpus" / "shards"), "seq_len": 128},
                "model": {"preset": "llama-tiny", "tokenizer": str(root / "corpus" / "tokenizer")},
                "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_steps": 2, "min_lr_ratio": 0.1},
                "train": {
                    "tokens": steps * 512,
                    "batch_tokens": 512,
                    "micro_batch_size": 4,
                    "log_every": 10,
                    "progress": False,
                },
                "eval": {"every": 100000, "max_tokens": 2048, "batch_size": 16, "domains": AUTOSCALE_DOMAINS},
            },
            "domains": AUTOSCALE_DOMAINS,
        }
        out.append(validate(DDOConfig, tree, f"quickstart:{tree['name']}"))
    return out


def autoscale_step(root: Path) -> tuple[dict, list[Path]]:
    """A small DDO at two budgets on the demo domains and AutoScale's prediction at 4x the larger; returns the
    weights table (`warmstart.tables` layout) and the three mixture directories (for the report)."""
    from warmstart.recipes.autoscale import predict, run_ddo, weights_table

    root = Path(root)
    cfgs = autoscale_configs(root)
    mixes = {}
    for cfg in cfgs:
        mixes[f"DDO {cfg.name[4:]}"] = run_ddo(cfg)
    big = 4 * mixes[list(mixes)[-1]]["budget"]
    predicted = root / "mixtures" / "predicted" / "mixture.json"
    mixes[f"pred {big / 1000:g}k"] = predict([c.mixture_dir for c in cfgs], big, predicted)
    table = weights_table(mixes, "AutoScale on the demo domains: weights of the optimal mixture per token budget")
    table["note"] = f"predicted mixture: {predicted} (use it with data.weights_from)"
    return table, [*(c.mixture_dir for c in cfgs), predicted.parent]


# ----------------------------------------------------------------------------------------------- report
def report_step(
    root: Path,
    runs: list[Path],
    baseline: Path,
    metric: str = "val/avg/loss",
    extra_tables: dict[str, dict] | None = None,
) -> Path:
    """The report of the quickstart's runs (and mixture directories) in ROOT/report, with the other steps' tables
    (`warmstart.report.make_report`); the HTML page's path."""
    from warmstart.report import make_report

    result = make_report(runs, Path(root) / "report", baseline=baseline, metric=metric, extra_tables=extra_tables)
    return Path(result["html"])
