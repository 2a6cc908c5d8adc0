"""The stages both jobs share: the job directory, the input checks, the format probe + data, and per-window losses.

Every check that can fail on bad input (the checkpoint, the text, the output directory, the budget) runs before
anything is written; the stages then write their results atomically (`warmstart.atomic`), each skipped when its
result is there, so the same command resumes a job killed anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warmstart import atomic, signals
from warmstart.config import JobConfig, SourceConfig
from warmstart.errors import UserError

JOB_FILE = "job.json"


# ----------------------------------------------------------------------------------------------- the job directory
def with_absolute_paths(cfg: JobConfig) -> JobConfig:
    """`cfg` with its text paths, its output directory and a checkpoint given as an existing path made absolute,
    so job.json reads the same from any working directory (and a re-run from another one matches it)."""
    def fix(paths: list[str]) -> list[str]:
        return [os.path.abspath(p) if Path(p).exists() else p for p in paths]

    update: dict = {"out": os.path.abspath(cfg.out), "text": {n: fix(p) for n, p in cfg.text.items()}}
    if Path(cfg.checkpoint).expanduser().exists():
        update["checkpoint"] = os.path.abspath(Path(cfg.checkpoint).expanduser())
    if hasattr(cfg, "old"):
        update["old"] = {n: fix(p) for n, p in cfg.old.items()}
    return type(cfg).model_validate({**cfg.model_dump(mode="json", by_alias=True), **update})


def check_job_dir(cfg: JobConfig, kind: str) -> bool:
    """Whether `cfg.out` already holds this job (same kind, same settings: a re-run resumes it). A directory that
    holds anything else, or this kind of job with other settings, is refused in one line (nothing is touched)."""
    from warmstart.outputs import check_out_dir

    out = check_out_dir(cfg.out, "--out")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    record = out / JOB_FILE
    try:
        held = json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        held = None
    if not isinstance(held, dict) or "job" not in held:
        raise UserError(f"--out: {out} holds something else (no warmstart {JOB_FILE}); choose a new directory")
    if held["job"] != kind:
        raise UserError(f"--out: {out} holds a warmstart {held['job']} job, not {kind}; choose a new directory")
    mine = cfg.model_dump(mode="json", by_alias=True)
    # a setting added since the job was written counts as its default (the job ran with it)
    defaults = {k: f.get_default(call_default_factory=True) for k, f in type(cfg).model_fields.items()
                if not f.is_required()}
    theirs = {**{k: v for k, v in defaults.items() if k in mine}, **(held.get("config") or {})}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        article = "an" if kind[0] in "aeiou" else "a"
        raise UserError(f"--out: {out} holds {article} {kind} job with other settings ({', '.join(diff)}); re-run "
                        "it with its own settings to resume it, or choose a new directory")
    return True


def write_job(cfg: JobConfig, kind: str) -> None:
    atomic.write_json(Path(cfg.out) / JOB_FILE, {"job": kind, "config": cfg.model_dump(mode="json", by_alias=True)})


def stage(out: Path, name: str, make) -> dict:
    """The JSON result of stage `name` in `out`: read when there, else `make()`d and written atomically, then the
    test hook `job:NAME` (a kill there finds the stage done and the next not begun)."""
    path = Path(out) / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = make()
    atomic.write_json(path, result)
    signals.pause_point(f"job:{name}")
    return json.loads(path.read_text())  # what a resumed job reads: the same values, the same types


# ----------------------------------------------------------------------------------------------- input checks
def check_text(tok, domains: dict[str, list[str]], flag: str, skip_bad_records: bool = False) -> None:
    """Every domain's paths exist and hold a document of at least 2 tokens (read until the first one): an empty
    file or text that tokenizes to nothing is one line naming the flag, before anything is written."""
    from warmstart.data.doc_format import encode_texts
    from warmstart.data.sources import iter_documents

    for name, paths in domains.items():
        for p in paths:
            if not Path(p).exists():
                raise UserError(f"{flag} {name}={p}: not found")
        files = [f for p in paths for f in ([Path(p)] if Path(p).is_file() else Path(p).rglob("*")) if f.is_file()]
        if all(f.stat().st_size == 0 for f in files):
            raise UserError(f"{flag} {name}={','.join(paths)}: empty (no text); give files that hold text")
        found = False
        for p in paths:
            for text in iter_documents(SourceConfig(path=p), skip_bad_records=skip_bad_records):
                if len(encode_texts(tok, [text])[0]) >= 2:
                    found = True
                    break
            if found:
                break
        if not found:
            raise UserError(f"{flag} {name}={','.join(paths)}: no document tokenizes to 2 or more tokens; give "
                            "text to train on")


def check_start(cfg: JobConfig, kind: str):
    """The checks every job makes first, nothing written: the output directory (new, or this job with these
    settings), the checkpoint (it loads; --seq-len fits its positions), the new text (it tokenizes to something).
    Returns (cfg with absolute paths, whether OUT holds this job already, the checkpoint, its config, its
    tokenizer)."""
    from warmstart.models.build import check_seq_len

    cfg = with_absolute_paths(cfg)
    existed = check_job_dir(cfg, kind)
    src, config, tok = checkpoint_shape(cfg)
    check_seq_len(config.get_text_config() if hasattr(config, "get_text_config") else config, cfg.seq_len,
                  "--seq-len", "lower --seq-len")
    check_text(tok, cfg.text, "--text", cfg.skip_bad_records)
    for name, paths in getattr(cfg, "old", {}).items():
        check_text(tok, {name: paths}, "--old", cfg.skip_bad_records)
    return cfg, existed, src, config, tok


def format_flops(cfg: JobConfig, tok, fwd_fpt: float) -> float:
    """What the job's format probe will cost, exactly, before any model is loaded: its documents tokenized
    (`format_probe.sample_text_documents`, the sample `format_and_data` scores) x the positions each format scores
    x the checkpoint's forward FLOPs per token `fwd_fpt` (format.json's "flops" once it has run)."""
    from warmstart.eval.format_probe import (
        SAMPLE_DOCS,
        SAMPLE_TOKENS,
        sample_text_documents,
        scored_positions,
    )

    docs = sample_text_documents(tok, [p for paths in cfg.text.values() for p in paths], SAMPLE_DOCS, SAMPLE_TOKENS,
                                 cfg.skip_bad_records)
    return scored_positions(tok, docs) * fwd_fpt


def check_budget(cfg: JobConfig, src, tok, n_candidates: int, n_domains: int) -> None:
    """The budget holds at least one batch and room for the probes besides the format probe, before anything is
    written: the format probe's cost exact (`format_flops`, in the checkpoint's training tokens: a lower bound for
    a cut, whose tokens cost less), the evaluation the fewest positions the windows can have (one per scored
    token). The exact plan (`first_stages`, and a derive round after its block search) counts the windows, the
    before-training losses and the search once the data is prepared."""
    from warmstart.recipes.jobs.probes import plan_rungs

    steps = cfg.tokens // cfg.batch_tokens
    if steps < 1:
        raise UserError(f"--tokens {cfg.tokens:,} is less than one batch (--batch-tokens {cfg.batch_tokens:,})")
    train_fpt, fwd_fpt = flops_per_token(src, cfg.seq_len)
    spent = format_flops(cfg, tok, fwd_fpt) / train_fpt
    plan_rungs(n_candidates, steps, cfg.batch_tokens, cfg.probe_share, cfg.eval_tokens * n_domains, spent=spent,
               tokens=cfg.tokens)


def checkpoint_shape(cfg: JobConfig):
    """(resolved checkpoint, its config, tokenizer); a wrong checkpoint is one line before anything is written."""
    from transformers import AutoConfig

    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.models.locate import load_failure, resolve_checkpoint

    src = resolve_checkpoint(cfg.checkpoint, "checkpoint")
    try:
        config = AutoConfig.from_pretrained(str(src))
        tok = load_tokenizer(str(src))
    except Exception as e:  # OSError/ValueError/KeyError from transformers for a directory it cannot read
        raise UserError(f"checkpoint: cannot load {cfg.checkpoint} ({load_failure(e)})") from None
    return src, config, tok


def flops_per_token(src, seq_len: int) -> tuple[float, float]:
    """(training FLOPs per token, forward FLOPs per token) of the checkpoint at `seq_len`, from its config alone
    (the model is built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from warmstart.models.build import flops_per_token as train_fpt
    from warmstart.models.build import forward_flops_per_token

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src)))
    return train_fpt(model, seq_len), forward_flops_per_token(model, seq_len)


# ----------------------------------------------------------------------------------------------- format + data
def format_and_data(cfg: JobConfig, src, domains: dict[str, list[str]], fwd_fpt: float) -> tuple[dict, Path]:
    """The format probe on the new text (format.json), then every domain prepared in that format into OUT/data
    (`prepare` skips a domain whose text, tokenizer and settings are unchanged: re-running does not re-tokenize)."""
    from warmstart.data import prepare
    from warmstart.eval.format_probe import run_probe

    out = Path(cfg.out)

    def probe() -> dict:
        texts = [p for paths in cfg.text.values() for p in paths]
        res = run_probe(str(src), texts=texts, device=cfg.device, skip_bad_records=cfg.skip_bad_records)
        w = res["winner"]
        scored = sum(r["tokens"] for r in res["rows"])
        return {"rows": res["rows"], "winner": w, "docs": res["docs"], "table": res["table"],
                "bos": "auto" if w["default"] else w["bos"], "doc_end": "auto" if w["default"] else w["doc_end"],
                "flops": scored * fwd_fpt}

    fmt = stage(out, "format", probe)
    data = out / "data"
    tree = {"tokenizer": str(src), "out": str(data), "seed": cfg.seed, "val_fraction": cfg.val_fraction,
            "bos": fmt["bos"], "doc_end": fmt["doc_end"], "overwrite": True, "skip_bad_records": cfg.skip_bad_records,
            "domains": {n: [{"path": p} for p in paths] for n, paths in domains.items()}}
    result = prepare(tree, progress=False)
    built = result.built
    print(f"[data] {data}: " + (f"tokenized {', '.join(built)}" if built else "up to date (nothing re-tokenized)"))
    for d in result.domains:
        if d.val_tokens < 2:
            raise UserError(f"{d.name}: {d.docs} document(s) leave no validation text (--val-fraction "
                            f"{cfg.val_fraction}); give more documents")
    signals.pause_point("job:prepared")
    return fmt, data


def first_stages(cfg: JobConfig, kind: str, existed: bool, src, domains: dict[str, list[str]], n_candidates: int):
    """job.json, the format probe and the data, the validation windows, the exact probe plan and the checkpoint's
    losses on the windows (shift.json) -> (format, data dir, windows, rungs, shift). The plan counts the evaluation
    positions exactly, and leaves out of the probes' share what the format probe and (adapt) the before-training
    losses cost. A bad input found here (too little text for a validation split, a budget the counted windows do
    not fit) leaves nothing behind on a first call."""
    from warmstart.recipes.jobs.probes import plan_rungs

    out = Path(cfg.out)
    was = state_of(out)
    train_fpt, fwd_fpt = flops_per_token(src, cfg.seq_len)
    if not existed:
        write_job(cfg, kind)
    try:
        fmt, data = format_and_data(cfg, src, domains, fwd_fpt)
        sets = eval_sets(data, list(domains), cfg.seq_len, cfg.eval_tokens)
        positions = eval_positions(sets)
        spent = fmt["flops"] + (positions * fwd_fpt if kind == "adapt" else 0.0)
        rungs = plan_rungs(n_candidates, cfg.tokens // cfg.batch_tokens, cfg.batch_tokens, cfg.probe_share,
                           positions, spent=spent / train_fpt, tokens=cfg.tokens)

        def shift() -> dict:
            losses, flops = window_losses(src, sets, fwd_fpt, cfg.device)
            return {"losses": losses, "flops": flops}

        return fmt, data, sets, rungs, stage(out, "shift", shift)
    except UserError:
        if not existed:
            undo(out, was)
        raise


# ----------------------------------------------------------------------------------------------- per-window losses
def eval_sets(data_dir: Path, names: list[str], seq_len: int, max_tokens: int) -> dict:
    """Each domain's validation windows: one per document from its start (`document_windows`), the windows a
    run's evaluation and `warmstart eval` score, so every number a job compares is one quantity."""
    from warmstart.data.shards import open_data_dir
    from warmstart.eval.perplexity import document_windows

    domains = open_data_dir(data_dir)
    return {n: document_windows(domains[n], seq_len, max_tokens) for n in names}


def window_losses(checkpoint, sets: dict, fwd_fpt: float, device: str, batch_size: int = 8) -> tuple[dict, float]:
    """({domain: {"sums", "counts", "loss"}}: each validation window's summed token loss and scored tokens under
    the checkpoint, and the domain's mean; the forward FLOPs spent (positions run x `fwd_fpt`)). The windows are the
    unit of the paired tests (their tokens are correlated)."""
    import torch
    from transformers import AutoModelForCausalLM

    from warmstart.eval.perplexity import scored_width
    from warmstart.eval.run_eval import _device
    from warmstart.models.loss import LossModel

    dev = _device(device)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).to(dev)
    model.eval()
    loss_model = LossModel(model)
    out, positions = {}, 0
    with torch.no_grad():
        for name, (inputs, labels) in sets.items():
            sums, counts = np.zeros(len(inputs)), np.zeros(len(inputs), dtype=np.int64)
            for i in range(0, len(inputs), batch_size):
                by = labels[i : i + batch_size]
                width = scored_width(by != -100)
                x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch_size, :width])).to(dev)
                y = torch.from_numpy(np.ascontiguousarray(by[:, :width])).to(dev)
                tok = loss_model(x, y, reduction="none")[0]
                sums[i : i + len(x)] = tok.double().sum(dim=1).cpu().numpy()
                counts[i : i + len(x)] = (y != -100).sum(dim=1).cpu().numpy()
                positions += x.numel()
            out[name] = {"sums": sums.tolist(), "counts": counts.tolist(),
                         "loss": float(sums.sum() / max(1, counts.sum()))}
    return out, positions * fwd_fpt


def eval_positions(sets: dict, batch_size: int = 8) -> int:
    """Positions `window_losses` runs over `sets` (each batch cut after its last scored column): the evaluation's
    share of a probe plan is counted exactly, not estimated."""
    from warmstart.eval.perplexity import scored_width

    return sum(len(labels[i : i + batch_size]) * scored_width(labels[i : i + batch_size] != -100)
               for _, labels in sets.values() for i in range(0, len(labels), batch_size))


def undo(out: Path, was: str) -> None:
    """Leave `out` as a failed first call found it: `was` "missing" (removed) or "empty" (emptied)."""
    import shutil

    if was == "missing":
        shutil.rmtree(out, ignore_errors=True)
    elif was == "empty" and out.is_dir():
        for p in out.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()


def state_of(out: Path) -> str:
    return "missing" if not out.exists() else "empty" if not any(out.iterdir()) else "held"


def mean_loss(losses: dict, names: list[str]) -> float:
    """The mean over `names` of each domain's mean loss (as val/avg/loss averages domains)."""
    return float(np.mean([losses[n]["loss"] for n in names]))


@dataclass
class JobResult:
    """What a finished job hands its report (report/jobs.py): the job directory and what it decided and did."""

    kind: str  # adapt | derive
    out: Path
    decision: dict
    shift: dict  # the checkpoint's per-window losses before training (adapt) / the reference's (derive)
    run_summary: dict
    new: list[str]
    old: list[str]
    bound: float | None
    before_label: str = "checkpoint"
    search: dict | None = None  # derive: the block search's record (inherited.json "choice")
    extra: list[str] = field(default_factory=list)  # lines for the summary
    rounds: list[dict] | None = None  # derive --until-reference


def set_threads(cfg: JobConfig) -> None:
    """A fixed `cpu_threads` holds for the job's own measurements too (the runs set it themselves), so a job's
    numbers do not depend on the machine's load."""
    import torch

    if isinstance(cfg.cpu_threads, int):
        torch.set_num_threads(cfg.cpu_threads)
