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
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmstart import atomic
from warmstart.config import GrowRecipe, Recipe, validate, with_absolute_paths
from warmstart.errors import UserError
from warmstart.models.locate import resolve_checkpoint
from warmstart.models.presets import FAMILY_DEFAULTS
from warmstart.models.surgery import inherit, layer_count
from warmstart.runtime import rundir


# ----------------------------------------------------------------------------------------------- building blocks
def inherited_dir(root: Path, layers: int, rule: str = "first") -> Path:
    return Path(root) / "inherited" / (f"L{layers:02d}" if rule == "first" else f"L{layers:02d}-{rule}")


def ensure_inherited(ref: str | Path, root: Path, layers: int, rule: str = "first", sample: dict | None = None) -> Path:
    """The inherited checkpoint of `layers` blocks under `root`, chosen by `rule` (written once; atomic, so
    present = complete). `sample`: the keyword arguments of `inherit_by_rule` that name the sample."""
    out = inherited_dir(root, layers, rule)
    if not (out / "config.json").is_file():
        inherit_by_rule(ref, out, layers, rule, **(sample or {}))
    return out


def _check_sample_tokenizer(src: Path, config, sample_dir: str, sample_domains: list[str] | None) -> None:
    """The sample must be in the reference's tokens: ids of another tokenizer would measure the blocks on the
    wrong text (or index past the embedding table)."""
    from warmstart.data.shards import open_data_dir
    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.models.build import check_data_compatible

    domains = open_data_dir(sample_dir)
    used = [d for d in (sample_domains or list(domains)) if d in domains]
    if not used:
        return  # load_sample names the unknown domain
    max_id = max(int(domains[d].index["splits"]["train"].get("max_token_id") or 0) for d in used)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    check_data_compatible(load_tokenizer(str(src)), domains[used[0]].tokenizer, max_id if vocab else None, vocab,
                          str(sample_dir), what="--sample")


def inherit_by_rule(
    ref: str | Path,
    out: str | Path,
    layers: int,
    rule: str = "first",
    sample_dir: str | None = None,
    sample_tokens: int = 16384,
    seq_len: int = 512,
    keep_last: int = 1,
    overwrite: bool = False,
    device: str = "cpu",
    echo=print,
    sample_domains: list[str] | None = None,
    candidates: int = 3,
    alpha: float = 0.01,
):
    """`inherit` n = `layers` blocks chosen by `rule` (eval/block_choice.py), measured on `sample_dir`'s train
    split; prints and records (inherited.json "choice") what was measured and chosen, and what the search cost
    (`search_flops`, charged to runs from the cut). `alpha`: auto's racing level (0: every candidate on the
    whole sample). Returns InheritResult."""
    import torch
    from transformers import AutoConfig

    from warmstart.eval.block_choice import choose_blocks, describe, load_sample
    from warmstart.models.build import check_seq_len, no_kv_cache
    from warmstart.models.inherit_record import check_out
    from warmstart.models.locate import load_failure
    from warmstart.models.surgery import auto_class

    if rule == "first":
        return inherit(ref, out, layers=layers, overwrite=overwrite, choice={"rule": "first", "chosen": "first"})
    if sample_dir is None:
        raise UserError(f"--rule {rule}: measures the blocks on a sample of your data; give --sample DATA_DIR")
    check_out(out, overwrite, ref, sample_dir)  # before the search: never the reference or the sample
    src = resolve_checkpoint(str(ref), "--from")
    config = AutoConfig.from_pretrained(str(src))
    check_seq_len(config.get_text_config() if hasattr(config, "get_text_config") else config, seq_len, "--seq-len",
                  "lower --seq-len (the sample's windows) to at most that")
    k = layer_count(config)
    auto = auto_class(config)
    causal = auto.__name__ == "AutoModelForCausalLM"
    _check_sample_tokenizer(src, config, sample_dir, sample_domains)
    inputs, labels = load_sample(sample_dir, seq_len, sample_tokens, causal, sample_domains)
    from warmstart.models import memory

    memory.check_cut(config, k, layers, search=(8, seq_len))  # choose_blocks' batches of 8 windows
    try:
        model = no_kv_cache(auto.from_pretrained(str(src), dtype=torch.float32)).to(device)
    except Exception as e:  # OSError/ValueError/KeyError: see surgery.inherit
        raise UserError(f"--from: cannot load {ref} with {auto.__name__} ({load_failure(e)})") from None
    if not causal:  # masked LM: the masked positions are fixed by the sample (eval_pairs' seeded noise)
        from transformers import AutoTokenizer

        from warmstart.train.objectives import Objective, eval_pairs

        obj = Objective("masked", AutoTokenizer.from_pretrained(str(src)))
        inputs, labels = eval_pairs(np.concatenate([inputs, labels[:, -1:]], axis=1), obj, 0)
    blocks, record = choose_blocks(model, k, layers, rule, (inputs, labels), keep_last, causal=causal,
                                   candidates=candidates, alpha=alpha)
    record["sample"] = {
        "dir": str(sample_dir),
        "domains": sample_domains or "all",
        "split": "train",
        "seq_len": seq_len,
        "max_tokens": sample_tokens,
    }
    if record["sample_tokens"] < sample_tokens // 2:  # the data ran out: the user asked for a sample it cannot give
        short = (f"the sample gave {record['sample_tokens']:,} of the {sample_tokens:,} --sample-tokens asked for "
                 f"(each train document's first --seq-len {seq_len} + 1 tokens; a longer --seq-len or more documents "
                 "give more)")
        record["note"] = f"{record['note']}; {short}" if record.get("note") else short
    del model
    for line in describe(record, k):
        echo(f"[inherit] {line}")
    return inherit(ref, out, blocks=blocks, overwrite=overwrite, choice=record)


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
    for k in keys:  # NaN/inf (null once written): "not yet matched" forever, or a TypeError, never a comparison
        v = evals[k]
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise UserError(f"{where}: its {k} is {v if v is None else float(v)}, not a number (did the run "
                            "diverge? lower schedule.max_lr); a loss that is not a number cannot be compared")
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
    if dump.get("distill") is not None:  # every round (and the baseline) learns from the same teacher
        tree["distill"] = dump["distill"]
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
        old_data, old_eval = old.get("data") or {}, old.get("eval") or {}
        summary = rundir.load_summary(run)
        # the same quantity: the windows (a run made before eval.windows existed scored packed ones) and, for
        # packed windows, how they were read; and, for the average, the same domains averaged
        mine = {
            "data.dir": str(Path(cfg.data.dir).resolve()),
            "data.seq_len": cfg.data.seq_len,
            "eval.max_tokens": cfg.eval.max_tokens,
            "eval.windows": cfg.eval.windows or "documents",
        }
        theirs = {
            "data.dir": str(Path(old_data.get("dir", "")).resolve()),
            "data.seq_len": old_data.get("seq_len"),
            "eval.max_tokens": old_eval.get("max_tokens"),
            "eval.windows": old_eval.get("windows") or "packed",
        }
        if mine["eval.windows"] == theirs["eval.windows"] == "packed":
            mine["data.packing"], theirs["data.packing"] = cfg.data.packing, old_data.get("packing", "stream")
        if not cfg.grow.target:
            evaluated = sorted(k.split("/")[1] for k in summary.get("final_eval", {})
                               if k.startswith("val/") and k.endswith("/loss") and k != "val/avg/loss")
            mine["eval domains"], theirs["eval domains"] = ", ".join(sorted(_eval_domains(cfg))), ", ".join(evaluated)
        diff = [k for k in mine if mine[k] != theirs[k]]
        if diff:
            raise UserError(
                f"reference.from: {run} was evaluated with a different {diff[0]} ({theirs[diff[0]]!r} vs "
                f"{mine[diff[0]]!r} here), not the same quantity as the rounds' loss; set reference.evaluate: true "
                "to evaluate it on this recipe's data"
            )
        return target_loss(summary.get("final_eval", {}), cfg.grow.target, str(rundir.summary_path(run))), "summary"
    return _evaluate_reference(cfg, src), "evaluated"


def _evaluate_reference(cfg: GrowRecipe, src: Path | str) -> float:
    """The reference's loss on exactly the sequences every round is evaluated on."""
    import torch
    from transformers import AutoModelForCausalLM

    from warmstart.data.shards import open_data_dir
    from warmstart.eval.perplexity import eval_windows, evaluate
    from warmstart.models.build import check_token_ids, embedding_rows, no_kv_cache
    from warmstart.runtime.distributed import setup, teardown

    domains = open_data_dir(cfg.data.dir)
    names = _eval_domains(cfg)
    sets = {n: eval_windows(domains[n], cfg.data.seq_len, cfg.eval.max_tokens, cfg.eval.windows or "documents",
                            cfg.data.packing)
            for n in names}
    d = setup(cfg.train.device)
    try:
        from warmstart.models import memory

        memory.check_forward("grow (the reference's evaluation)", src, cfg.eval.batch_size, cfg.data.seq_len,
                             ["eval.batch_size", "data.seq_len"], device=d.device, say=d.is_main)
        model = no_kv_cache(AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32))
        max_id = max(int(domains[n].index["splits"]["val"].get("max_token_id") or 0) for n in names)
        check_token_ids(max_id, embedding_rows(model), f"data.dir: {cfg.data.dir} against reference.from {src}")
        losses = evaluate(model.to(d.device), sets, cfg.eval.batch_size, d)
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
    import os

    # what grow_summary.json and the rounds' config.yaml record reads the same from any working directory
    cfg = with_absolute_paths(cfg).model_copy(update={"out_dir": os.path.abspath(cfg.out_dir)})
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
        "rule": cfg.grow.rule,
        "distill": cfg.distill.model_dump(mode="json") if cfg.distill else None,
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

    trained = [d for d, w in (cfg.data.weights or {}).items() if w > 0] or None  # the domains the rounds train on
    sample = {"sample_dir": cfg.data.dir, "sample_tokens": cfg.grow.sample_tokens, "seq_len": cfg.data.seq_len,
              "sample_domains": trained, "candidates": cfg.grow.auto_candidates, "alpha": cfg.grow.auto_alpha}
    while True:
        init = ensure_inherited(src, root, n, cfg.grow.rule, sample)
        kept = json.loads((init / "inherited.json").read_text())["blocks"]
        print(f"[grow] round: {n} of {k} blocks inherited from {src} (rule {cfg.grow.rule}: blocks {kept})")
        done = train_round(_round_recipe(cfg, f"inheritune-L{n:02d}", init, None))
        row = _row(n, done, cfg, "inheritune")
        row["blocks"] = kept
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
        init = inherited_dir(root, n, cfg.grow.rule)  # the final round's shape and per-layer settings
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

