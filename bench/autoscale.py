"""AutoScale on the demo corpus: does the predicted mixture beat uniform and the reused small-budget optimum?

1. DDO (7 proxy runs each) at two small budgets N1 and N2 = 2 N1;
2. AutoScale's prediction at N3 = 4 N2;
3. three runs at N3: (a) the predicted mixture, (b) uniform, (c) the N2 DDO mixture reused unchanged;
4. tokens each needs to reach uniform's final average validation loss ("x% faster"), final losses, and a plot
   of the weights vs budget.

    .venv/bin/python bench/autoscale.py [--root WORK] [--steps1 50]

Writes bench/results/autoscale.json, .md and .png. Re-running skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from harness import run_main

from warmstart import atomic
from warmstart.config import DDOConfig, Recipe, validate
from warmstart.data.demo_corpus import prepare_demo
from warmstart.recipes.autoscale import predict, run_ddo, train_proxy
from warmstart.recipes.autoscale_laws import predict_mixture
from warmstart.runtime import rundir
from warmstart.runtime.metrics import read_metrics

DOMAINS = ["prose", "code", "docstrings"]
SEQ, BATCH = 128, 1024
RESULTS = Path(__file__).resolve().parent / "results"


def proxy_tree(root: Path, steps: int) -> dict:
    return {
        "name": "proxy",
        "seed": 0,
        "data": {"dir": str(root / "corpus" / "shards"), "seq_len": SEQ},
        "model": {"preset": "llama-tiny", "tokenizer": str(root / "corpus" / "tokenizer")},
        "schedule": {"kind": "cosine", "max_lr": 3e-3, "warmup_steps": 5, "min_lr_ratio": 0.1},
        "train": {"tokens": steps * BATCH, "batch_tokens": BATCH, "micro_batch_size": 8, "progress": False},
        "eval": {"every": 10**6, "max_tokens": 4096, "batch_size": 32, "domains": DOMAINS},
    }


def tokens_to_reach(run_dir: Path, target: float) -> float | None:
    """First token count where the average val loss reaches `target` (linear between evals)."""
    pts = [(m["tokens"], m["val/avg/loss"]) for m in read_metrics(run_dir) if m.get("event") == "eval"]
    for (t0, l0), (t1, l1) in zip(pts, pts[1:], strict=False):
        if l1 <= target:
            return float(t1 if l0 == l1 else t0 + (l0 - target) / (l0 - l1) * (t1 - t0))
    return None


def plot(path: Path, mixes: dict, big: float, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    d1, d2 = mixes["ddo_n1"], mixes["ddo_n2"]
    budgets = np.geomspace(d1["budget"] / 2, big * 2, 60)
    curve = [predict_mixture([d1["tokens"], d2["tokens"]], b).weights for b in budgets]
    for i, d in enumerate(DOMAINS):
        color = f"C{i}"
        ax.plot(budgets, [c[d] for c in curve], color=color, lw=1, label=f"{d} (AutoScale trend)")
        ax.plot([d1["budget"], d2["budget"]], [d1["weights"][d], d2["weights"][d]], "o", color=color)
        ax.plot([big], [mixes["predicted"]["weights"][d]], "*", ms=12, color=color)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log axis
    ax.set_xlabel("token budget")
    ax.set_ylabel("weight")
    ax.set_title("DDO optima (o) and the predicted mixture (*)")
    ax.legend(fontsize=7)
    for name, run_dir in runs.items():
        ev = [m for m in read_metrics(run_dir) if m.get("event") == "eval"]
        bx.plot([m["tokens"] for m in ev], [m["val/avg/loss"] for m in ev], label=name)
    bx.set_xlabel("tokens")
    bx.set_ylabel("average validation loss")
    bx.set_title(f"runs at {big / 1e3:.0f}k tokens")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/bench-autoscale")
    ap.add_argument("--steps1", type=int, default=50, help="base-run steps at the smaller budget")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the committed .json")
    args = ap.parse_args()
    if args.markdown_only:
        atomic.write_text(RESULTS / "autoscale.md", markdown(json.loads((RESULTS / "autoscale.json").read_text())))
        return
    root = Path(args.root)
    t0 = time.time()
    prepare_demo(root, workers=1)

    cfgs = []
    for k, steps in (("n1", args.steps1), ("n2", 2 * args.steps1)):
        tree = {
            "name": f"ddo-{k}",
            "out_dir": str(root / "mixtures"),
            "proxy": proxy_tree(root, steps),
            "domains": DOMAINS,
            "max_epochs": 4,
        }
        cfgs.append(validate(DDOConfig, tree, f"bench:{k}"))
    mixes = {"ddo_n1": run_ddo(cfgs[0]), "ddo_n2": run_ddo(cfgs[1])}
    big = 4 * mixes["ddo_n2"]["budget"]
    mixes["predicted"] = predict([c.mixture_dir for c in cfgs], big, root / "mixtures" / "predicted.json")
    t_ddo = time.time() - t0

    weights = {
        "predicted": mixes["predicted"]["weights"],
        "uniform": {d: round(1 / len(DOMAINS), 12) for d in DOMAINS},
        "ddo_n2_reused": mixes["ddo_n2"]["weights"],
    }
    runs = {}
    for name, w in weights.items():
        tree = proxy_tree(root, 0)
        tree.update({"name": name, "out_dir": str(root / "runs")})
        tree["data"]["weights"] = {d: round(v, 12) for d, v in w.items()}
        tree["train"] = {"tokens": int(big), "batch_tokens": BATCH, "micro_batch_size": 8, "progress": False}
        tree["eval"] = {"every": 20, "max_tokens": 4096, "batch_size": 32, "domains": DOMAINS}
        recipe = validate(Recipe, tree, f"bench:{name}")
        train_proxy(recipe)
        runs[name] = recipe.run_dir

    finals = {n: rundir.load_summary(d)["final_eval"] for n, d in runs.items()}
    target = finals["uniform"]["val/avg/loss"]
    uni_tokens = tokens_to_reach(runs["uniform"], target)
    rows = {}
    for name in runs:
        need = tokens_to_reach(runs[name], target)
        rows[name] = {
            "weights": weights[name],
            "final_avg_loss": finals[name]["val/avg/loss"],
            "final_loss": {d: finals[name][f"val/{d}/loss"] for d in DOMAINS},
            "tokens_to_uniform_final": need,
            "faster_than_uniform": None if need is None else 1 - need / uni_tokens,
        }
    result = {
        "setup": {
            "model": "llama-tiny",
            "seq_len": SEQ,
            "batch_tokens": BATCH,
            "domains": DOMAINS,
            "budgets": {"n1": mixes["ddo_n1"]["budget"], "n2": mixes["ddo_n2"]["budget"], "n3": big},
            "multipliers": cfgs[0].multipliers,
            "max_epochs": cfgs[0].max_epochs,
            "target": "avg",
        },
        "ddo": {
            k: {
                "weights": v["weights"],
                "fits": {d: {p: v["fits"][d][p] for p in ("a", "b", "c", "rmse")} for d in DOMAINS},
                "predicted_loss": v["predicted_loss"],
                "capped": [d for d, c in v["caps"].items() if c["capped"]],
            }
            for k, v in mixes.items()
            if k.startswith("ddo")
        },
        "prediction": {k: mixes["predicted"][k] for k in ("weights", "t", "ratios", "budget")},
        "runs_at_n3": rows,
        "uniform_final_avg_loss": target,
        "seconds": {
            # the runs' own clocks (summary.json elapsed_s): a re-run that skips finished runs leaves these as they are
            "training_all_runs": round(sum(
                rundir.load_summary(Path(r))["elapsed_s"]
                for r in [*(p["run_dir"] for k in ("ddo_n1", "ddo_n2") for p in mixes[k]["proxy_runs"]),
                          *runs.values()]
            )),
            "this_invocation": {"ddo_and_predict": round(t_ddo), "total": round(time.time() - t0)},
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic.write_json(RESULTS / "autoscale.json", result)
    plot(RESULTS / "autoscale.png", mixes, big, runs)
    atomic.write_text(RESULTS / "autoscale.md", markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    s = r["setup"]
    b = s["budgets"]
    lines = [
        "# AutoScale on the demo corpus",
        "",
        f"Proxy and final model: {s['model']} (seq {s['seq_len']}, batch {s['batch_tokens']} tokens), domains "
        f"{', '.join(s['domains'])}; DDO (multipliers {s['multipliers']}, max {s['max_epochs']} epochs, target: "
        f"average val loss) at N1 = {b['n1']:,} and N2 = {b['n2']:,} tokens; prediction and runs at "
        f"N3 = {b['n3']:,.0f} tokens. Command: `.venv/bin/python bench/autoscale.py`. "
        f"Training wall time {r['seconds']['training_all_runs']} s (all proxy and final runs, on 2 CPU cores).",
        "",
        "## Weights",
        "",
        "| domain | DDO N1 | DDO N2 | predicted N3 |",
        "|---|---|---|---|",
    ]
    for d in s["domains"]:
        lines.append(
            f"| {d} | {r['ddo']['ddo_n1']['weights'][d]:.3f} | {r['ddo']['ddo_n2']['weights'][d]:.3f} "
            f"| {r['prediction']['weights'][d]:.3f} |"
        )
    lines += [
        "",
        "## Runs at N3",
        "",
        "| mixture | final avg loss | "
        + " | ".join(s["domains"])
        + " | tokens to uniform's final | faster |",
        "|---" * (4 + len(s["domains"])) + "|",
    ]
    for name, row in r["runs_at_n3"].items():
        need = row["tokens_to_uniform_final"]
        fast = row["faster_than_uniform"]
        lines.append(
            f"| {name} | {row['final_avg_loss']:.4f} | "
            + " | ".join(f"{row['final_loss'][d]:.4f}" for d in s["domains"])
            + f" | {'not reached' if need is None else f'{need:,.0f}'} | "
            + ("-" if fast is None else f"{100 * fast:+.1f}%")
            + " |"
        )
    runs = r["runs_at_n3"]
    gap = runs["predicted"]["final_avg_loss"] - runs["uniform"]["final_avg_loss"]
    fast = runs["predicted"]["faster_than_uniform"]
    if fast is not None and fast > 0:
        verdict = f"the predicted mixture reached uniform's final loss {100 * fast:.1f}% sooner"
    else:
        verdict = (
            f"the effect does not show at this scale: the predicted mixture ends {gap:+.4f} nats from uniform "
            "(one seed; differences this small are within run-to-run noise)"
        )
    lines += [
        "",
        f"**Verdict.** {verdict}. The DDO optimum does move with the budget (the weights above shift between "
        "N1 and N2, and the prediction extrapolates that shift), which is AutoScale's premise; whether the "
        "extrapolated mixture pays off needs budgets where the per-domain power laws are well separated, "
        "far beyond a 0.2M-parameter model on 3 MB of text.",
        "",
        "![weights vs budget and loss curves](autoscale.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
