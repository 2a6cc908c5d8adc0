"""Inheritune (Sanyal et al. 2024): train a small model that starts from a reference's first blocks.

v1: `inherit` N of k blocks, then `train()` it (any recipe with `init.from` = the inherited checkpoint); the
baseline is the same recipe with `model.config` = that checkpoint's config.json and no `init.from`.
v2 (`grow`): N = k/2; train T steps; while the validation loss is worse than the reference's, N += step and
RE-INHERIT FROM THE REFERENCE (not from the last round); stop at the first match or at k-1. Every round is its
own run directory under OUT_DIR/NAME, so re-running skips finished rounds and resumes an interrupted one.
No training code lives here: every model is trained by `warmstart.train.loop.train`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from warmstart import atomic
from warmstart.config import GrowRecipe, Recipe, validate
from warmstart.errors import UserError
from warmstart.models.locate import resolve_checkpoint
from warmstart.models.presets import FAMILY_DEFAULTS
from warmstart.models.surgery import inherit, layer_count
from warmstart.runtime import rundir


# ----------------------------------------------------------------------------------------------- building blocks
def inherited_dir(root: Path, layers: int) -> Path:
    return Path(root) / "inherited" / f"L{layers:02d}"


def ensure_inherited(ref: str | Path, root: Path, layers: int) -> Path:
    """The inherited checkpoint of `layers` blocks under `root` (written once; atomic, so present = complete)."""
    out = inherited_dir(root, layers)
    if not (out / "config.json").is_file():
        inherit(ref, out, layers=layers)
    return out


def random_init_model(inherited: Path) -> dict:
    """`model:` section for a random init of exactly the inherited shape.

    `model.config` alone would let the family defaults (e.g. tied embeddings) override the file's values, so
    the file's own values for those keys are passed again as `sizes`.
    """
    raw = json.loads((Path(inherited) / "config.json").read_text())
    keys = FAMILY_DEFAULTS.get(raw.get("model_type"), {})
    sizes = {k: raw[k] for k in keys if k in raw}
    return {"config": str(Path(inherited) / "config.json"), "tokenizer": str(inherited), "sizes": sizes}


def target_loss(evals: dict, target: list[str] | None, where: str) -> float:
    """The compared number: the mean val loss of the target domains, or `val/avg/loss`."""
    keys = [f"val/{d}/loss" for d in target] if target else ["val/avg/loss"]
    missing = [k for k in keys if k not in evals]
    if missing:
        raise UserError(f"{where}: has no {missing[0]} (evaluated: {', '.join(sorted(evals)) or 'nothing'})")
    return float(sum(evals[k] for k in keys) / len(keys))


def count_blocks_and_params(src: Path | str) -> tuple[int, int]:
    """(blocks, parameters) of a checkpoint, from its config alone (the model is built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(src))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return layer_count(config), sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------- v2: grow
@dataclass
class GrowResult:
    summary: dict
    path: Path


def _round_recipe(cfg: GrowRecipe, name: str, init_from: Path | None, model: dict | None) -> Recipe:
    dump = cfg.model_dump(mode="json", by_alias=True)
    tree = {k: dump[k] for k in ("seed", "data", "optim", "schedule", "train", "eval")}
    tree.update({"name": name, "out_dir": str(cfg.grow_dir)})
    if init_from is not None:
        tree["init"] = {"from": str(init_from)}
    if model is not None:
        tree["model"] = model
    return validate(Recipe, tree, f"grow:{name}")


def _eval_domains(cfg: GrowRecipe) -> list[str]:
    from warmstart.data.shards import open_data_dir

    domains = open_data_dir(cfg.data.dir)
    names = cfg.eval.domains if cfg.eval.domains is not None else list(domains)
    for d in cfg.grow.target or []:
        if d not in names:
            raise UserError(f"grow.target: domain {d!r} is not evaluated (eval domains: {', '.join(names)})")
    return names


def reference_loss(cfg: GrowRecipe, src: Path | str) -> tuple[float, str]:
    """(the reference's compared val loss, where it came from): given > evaluated > the run's summary.json."""
    ref = cfg.reference
    if ref.loss is not None:
        return ref.loss, "given"
    run = Path(ref.from_)
    if not ref.evaluate and rundir.summary_path(run).is_file():
        old = rundir.read_config(run) or {}
        mine = {
            "data.dir": str(Path(cfg.data.dir).resolve()),
            "data.seq_len": cfg.data.seq_len,
            "eval.max_tokens": cfg.eval.max_tokens,
        }
        theirs = {
            "data.dir": str(Path(old.get("data", {}).get("dir", "")).resolve()),
            "data.seq_len": old.get("data", {}).get("seq_len"),
            "eval.max_tokens": old.get("eval", {}).get("max_tokens"),
        }
        diff = [k for k in mine if mine[k] != theirs[k]]
        if diff:
            raise UserError(
                f"reference.from: {run} was evaluated with a different {diff[0]} ({theirs[diff[0]]!r} vs "
                f"{mine[diff[0]]!r}); set reference.evaluate: true to evaluate it on this recipe's data"
            )
        summary = rundir.load_summary(run)
        return target_loss(summary.get("final_eval", {}), cfg.grow.target, str(rundir.summary_path(run))), "summary"
    return _evaluate_reference(cfg, src), "evaluated"


def _evaluate_reference(cfg: GrowRecipe, src: Path | str) -> float:
    """The reference's loss on exactly the sequences every round is evaluated on."""
    import torch
    from transformers import AutoModelForCausalLM

    from warmstart.data.shards import open_data_dir
    from warmstart.eval.perplexity import eval_windows, evaluate
    from warmstart.runtime.distributed import setup, teardown

    domains = open_data_dir(cfg.data.dir)
    names = _eval_domains(cfg)
    sets = {n: eval_windows(domains[n], cfg.data.seq_len, cfg.eval.max_tokens, cfg.eval.windows or "documents",
                            cfg.data.packing)
            for n in names}
    d = setup(cfg.train.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).to(d.device)
        losses = evaluate(model, sets, cfg.eval.batch_size, d)
    finally:
        teardown(d)
    evals = {f"val/{n}/loss": v for n, v in losses.items()}
    if losses:
        evals["val/avg/loss"] = sum(losses.values()) / len(losses)
    return target_loss(evals, cfg.grow.target, f"reference {src}")


def _row(layers: int, summary: dict, cfg: GrowRecipe, kind: str) -> dict:
    return {
        "kind": kind,
        "layers": layers,
        "run_dir": summary["run_dir"],
        "params": summary["params"],
        "val_loss": target_loss(summary["final_eval"], cfg.grow.target, summary["run_dir"]),
        "final_eval": summary["final_eval"],
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "flops": summary["flops"],
    }


def grow(cfg: GrowRecipe) -> GrowResult:
    """Inheritune v2 (see the module docstring); writes OUT_DIR/NAME/grow_summary.json after every round.
    A round stopped by a signal: grow_summary.json says "interrupted", then `signals.Interrupted` is raised
    (`warmstart.train.runs`' policy; re-running resumes that round)."""
    _eval_domains(cfg)
    src = resolve_checkpoint(cfg.reference.from_, "reference.from")
    k, ref_params = count_blocks_and_params(src)
    if k < 2:
        raise UserError(f"reference.from: {src} has {k} block(s); inheriting needs at least 2")
    n = cfg.grow.start_layers or max(1, k // 2)
    if n > k - 1:
        raise UserError(f"grow.start_layers: {n} is outside 1..{k - 1} (the reference has {k} blocks)")
    ref_loss, source = reference_loss(cfg, src)
    root = cfg.grow_dir
    summary = {
        "reference": {
            "from": str(src),
            "layers": k,
            "params": ref_params,
            "val_loss": ref_loss,
            "loss_source": source,
        },
        "target": cfg.grow.target or ["avg"],
        "tolerance": cfg.grow.tolerance,
        "step": cfg.grow.step,
        "rounds": [],
        "matched": False,
        "final_layers": None,
        "baseline": None,
    }
    path = root / "grow_summary.json"

    def save(status: str) -> None:
        rows = summary["rounds"] + ([summary["baseline"]] if summary["baseline"] else [])
        summary["status"] = status
        summary["total_tokens"] = sum(r["tokens"] for r in summary["rounds"])
        summary["total_flops"] = sum(r["flops"] for r in summary["rounds"])
        summary["baseline_flops"] = sum(r["flops"] for r in rows if r["kind"] == "random-init")
        atomic.write_json(path, summary)

    def train_round(recipe: Recipe) -> dict:
        from warmstart.train.runs import run_once

        outcome = run_once(recipe)
        if outcome.status == "interrupted":
            save("interrupted")
        return outcome.raise_if_interrupted().summary

    while True:
        init = ensure_inherited(src, root, n)
        print(f"[grow] round: {n} of {k} blocks inherited from {src}")
        done = train_round(_round_recipe(cfg, f"inheritune-L{n:02d}", init, None))
        row = _row(n, done, cfg, "inheritune")
        row["matched"] = row["val_loss"] <= ref_loss + cfg.grow.tolerance
        summary["rounds"].append(row)
        summary["final_layers"] = n
        summary["matched"] = row["matched"]
        save("running")
        print(
            f"[grow] {n} blocks: val loss {row['val_loss']:.4f} vs reference {ref_loss:.4f} "
            f"(+{cfg.grow.tolerance}) -> {'matched' if row['matched'] else 'not yet'}"
        )
        if row["matched"] or n >= k - 1:
            break
        n = min(n + cfg.grow.step, k - 1)

    if cfg.grow.baseline:
        print(f"[grow] baseline: random init of {n} blocks, same steps")
        init = inherited_dir(root, n)
        done = train_round(_round_recipe(cfg, f"scratch-L{n:02d}", None, random_init_model(init)))
        summary["baseline"] = _row(n, done, cfg, "random-init")
    save("complete")
    print(grow_table(summary))
    print(f"[grow] wrote {path}")
    return GrowResult(summary, path)


def grow_table(summary: dict) -> str:
    """The paper's table, one row per model: reference / Inheritune rounds / random init of the final depth."""
    ref = summary["reference"]
    lines = [f"{'model':<26} {'layers':>6} {'params':>9} {'val loss':>9}"]
    lines.append(f"{'reference':<26} {ref['layers']:>6} {ref['params'] / 1e6:>8.2f}M {ref['val_loss']:>9.4f}")
    for r in summary["rounds"]:
        mark = " (matched)" if r.get("matched") else ""
        lines.append(
            f"{'inheritune' + mark:<26} {r['layers']:>6} {r['params'] / 1e6:>8.2f}M {r['val_loss']:>9.4f}"
        )
    if summary.get("baseline"):
        b = summary["baseline"]
        lines.append(
            f"{'random init, same steps':<26} {b['layers']:>6} {b['params'] / 1e6:>8.2f}M {b['val_loss']:>9.4f}"
        )
    return "\n".join(lines)

