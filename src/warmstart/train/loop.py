"""The one training loop. Pre-training, continued pre-training, re-warming and every recipe call `train()`.

A run is a directory (`recipe.run_dir`): config.yaml, metrics.jsonl, checkpoints/, final/, summary.json, held
by one process at a time (warmstart.train.rundir). `init.from` starts a NEW run from a checkpoint's weights
(fresh optimizer and schedule: re-warming); `resume=True` continues THIS run from its newest intact checkpoint
with everything restored, finishes a run stopped after its last checkpoint, and does nothing to a finished one.
SIGTERM/SIGINT in the step loop: checkpoint and stop (exit 128+signum); anywhere else: stop at once, leaving no
temp files (warmstart.signals).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from warmstart import atomic, signals
from warmstart.config import DataConfig, Recipe, to_yaml
from warmstart.data.sampler import MixtureSampler
from warmstart.data.shards import open_data_dir
from warmstart.data.validation import evaluable_domains
from warmstart.errors import UserError
from warmstart.eval.perplexity import eval_windows, evaluate, perplexity
from warmstart.models.build import (
    build_model,
    check_data_compatible,
    check_data_format,
    count_params,
    enable_activation_checkpointing,
    flops_per_token,
    resolve_checkpoint,
    save_hf,
)
from warmstart.models.loss import LossModel
from warmstart.train import checkpoint as ckpt
from warmstart.train import rundir
from warmstart.train.distributed import (
    Dist,
    all_reduce_sum,
    barrier,
    full_state_dict,
    full_value,
    gradient_sync,
    parallelize,
    setup,
    teardown,
    unwrap,
)
from warmstart.train.host_allocator import keep_heap
from warmstart.train.metrics import MetricsLog
from warmstart.train.objectives import Objective, eval_pairs
from warmstart.train.optim import build_optimizer
from warmstart.train.schedules import lr_at
from warmstart.train.throughput import peak_flops

# recipe keys that may change between a run and its resume without --allow-config-change
RESUME_FREE_KEYS = {
    "out_dir",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.progress",
    "train.device",
    "train.compile",
    "train.micro_batch_size",
    "train.trackers",
    "train.cpu_threads",
    "train.keep_heap",
    "train.activation_checkpointing",
    "train.parallel",  # a layout, not the math: checkpoints load into any layout
}


@dataclass
class RunResult:
    run_dir: Path
    step: int
    total_steps: int
    interrupted_by: int | None = None
    final_dir: Path | None = None
    last_eval: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 128 + self.interrupted_by if self.interrupted_by else 0


# ----------------------------------------------------------------------------------------------- helpers
def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _resolved(tree: dict) -> dict:
    """A recipe with today's defaults filled in, so keys added by a newer warmstart do not count as changes."""
    try:
        return yaml.safe_load(to_yaml(Recipe.model_validate(tree)))
    except ValueError:
        return tree


def config_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring the ones a resume may change freely."""
    a, b = _flatten(_resolved(old)), _flatten(_resolved(new))
    return sorted(
        k
        for k in set(a) | set(b)
        if a.get(k) != b.get(k) and k not in RESUME_FREE_KEYS and not k.startswith("eval.")
    )


def resolve_weights(data: DataConfig) -> DataConfig:
    """`data.weights_from: mixture.json` -> explicit weights (a mixture file is just a weights table)."""
    if not data.weights_from:
        return data
    path = Path(data.weights_from)
    if not path.is_file():
        raise UserError(f"data.weights_from: {path} not found")
    try:
        weights = json.loads(path.read_text())["weights"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"data.weights_from: {path} is not a mixture file (needs a 'weights' table)") from None
    if data.weights:
        raise UserError("data.weights_from: give weights or weights_from, not both")
    return data.model_copy(update={"weights": {k: float(v) for k, v in weights.items()}, "weights_from": None})


def _batch_shape(recipe: Recipe, d: Dist) -> tuple[int, int, int]:
    """(global sequences per step, micro batch, gradient-accumulation steps) per process."""
    gseqs = recipe.train.batch_tokens // recipe.data.seq_len
    if gseqs % d.world:
        raise UserError(
            f"train.batch_tokens: {gseqs} sequences per step do not split over {d.world} processes; "
            f"use a multiple of {d.world * recipe.data.seq_len} tokens"
        )
    per_rank = gseqs // d.world
    micro = min(recipe.train.micro_batch_size, per_rank)
    if per_rank % micro:
        raise UserError(
            f"train.micro_batch_size: {micro} does not divide the {per_rank} sequences each process gets per step"
        )
    return gseqs, micro, per_rank // micro


def _wants_bf16(recipe: Recipe, device: torch.device) -> bool:
    return recipe.train.precision == "bf16" or (recipe.train.precision == "auto" and device.type == "cuda")


def _autocast(recipe: Recipe, device: torch.device):
    if not _wants_bf16(recipe, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _gather_rngs(d: Dist) -> list[dict]:
    mine = ckpt.rng_state()
    if not d.enabled:
        return [mine]
    out: list = [None] * d.world
    dist.all_gather_object(out, mine)
    return out


def _prepare_run_dir(recipe: Recipe, d: Dist, resume: bool, allow_config_change: bool, existed: bool) -> rundir.Plan:
    """Decide (on rank 0, lock held) what this call does with the run directory; every rank gets the plan."""

    def decide() -> rundir.Plan:
        old = rundir.read_config(recipe.run_dir)
        changed = config_changes(old, yaml.safe_load(to_yaml(recipe))) if old is not None else []
        return rundir.plan(recipe, resume, changed, allow_config_change, existed)

    return rundir.on_main(d, decide)


# ----------------------------------------------------------------------------------------------- the loop
def train(recipe: Recipe, resume: bool = False, allow_config_change: bool = False) -> RunResult:
    """Run (or resume) one training run described by `recipe`; returns where it wrote and how it ended.

    Raises UserError (nothing written) for bad input or a run directory in use or not resumable, and
    `signals.Interrupted` for a SIGTERM/SIGINT outside the step loop (after cleaning up).
    """
    try:
        with signals.handling():
            d = setup(recipe.train.device)
            try:
                if recipe.train.cpu_threads:
                    torch.set_num_threads(recipe.train.cpu_threads)
                if d.device.type == "cpu":
                    keep_heap(recipe.train.keep_heap)
                with rundir.held(recipe.run_dir, d) as lock:
                    plan = _prepare_run_dir(recipe, d, resume, allow_config_change, existed=not lock.created_dir)
                    return _train(recipe, d, plan, allow_config_change)
            finally:
                teardown(d)
    except signals.Interrupted as e:
        if (recipe.run_dir / rundir.CONFIG).is_file():
            e.note = e.note or f"{recipe.run_dir}: continue it with --resume"
        raise


def _train(recipe: Recipe, d: Dist, plan: rundir.Plan, allow_config_change: bool) -> RunResult:
    t_start = time.perf_counter()
    run_dir = recipe.run_dir
    total_steps = rundir.planned_steps(recipe)
    if plan.action == "finished":
        steps = plan.summary["steps"]
        if d.is_main:
            print(f"{run_dir}: already finished (step {steps}); nothing to do")
        return RunResult(run_dir, steps, total_steps, final_dir=run_dir / rundir.FINAL,
                         last_eval=plan.summary["final_eval"])
    if plan.note and d.is_main:
        print(plan.note)
    resume_from = plan.checkpoint
    data_cfg = resolve_weights(recipe.data)
    gseqs, micro, accum = _batch_shape(recipe, d)
    lr_at(recipe.schedule, 0, total_steps)  # schedule errors (phases that do not fit) before any heavy work

    # data: every domain the run reads, checked against the model's tokenizer before any compute
    domains = open_data_dir(data_cfg.dir)
    eval_names = recipe.eval.domains if recipe.eval.domains is not None else list(domains)
    for name in eval_names:
        if name not in domains:
            raise UserError(f"eval.domains: no domain {name!r} in {data_cfg.dir} (have: {', '.join(domains)})")
    listed = eval_names
    eval_names = evaluable_domains(domains, eval_names, recipe.eval.domains is not None, "eval.domains")
    if d.is_main and len(eval_names) < len(listed):
        skipped = ", ".join(n for n in listed if n not in eval_names)
        print(f"note: no validation documents in {skipped}; training without validation for it")
    if recipe.eval.tasks:  # on every rank, so none waits at a barrier for one that failed
        from warmstart.eval.tasks import task_manager

        task_manager(recipe.eval.tasks)  # unknown task names fail now, before the model is even loaded
        if recipe.train.parallel == "fsdp" and d.enabled:
            raise UserError("eval.tasks: lm-eval tasks run on rank 0 alone, which a sharded model (train.parallel: "
                            "fsdp) cannot do; use parallel: ddp, or run `warmstart eval` on final/")
    sampler = MixtureSampler.from_config(data_cfg, domains, seed=recipe.seed)
    used = [n for n, w in sampler.weights.items() if w > 0] + list(eval_names)

    loaded = build_model(recipe.model, recipe.init.from_, seed=recipe.seed, seq_len=data_cfg.seq_len)
    model, tok = loaded.model, loaded.tokenizer
    vocab = model.get_input_embeddings().weight.shape[0]
    max_id = max(int(domains[n].index["splits"][s].get("max_token_id") or 0) for n in set(used) for s in ("train", "val"))
    check_data_compatible(tok, domains[used[0]].tokenizer, max_id, vocab, data_cfg.dir)
    check_data_format(tok, {n: domains[n] for n in sorted(set(used))}, data_cfg.dir,
                      data_cfg.allow_format_mismatch, "--set data.allow_format_mismatch=true", d.is_main)
    for n in set(used):
        if domains[n].tokenizer.get("vocab_hash") != domains[used[0]].tokenizer.get("vocab_hash"):
            raise UserError(f"data.dir: domain {n!r} was prepared with a different tokenizer than the others")

    seq_len = data_cfg.seq_len
    fpt = flops_per_token(model, seq_len)
    n_params = count_params(model)

    model.train()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if recipe.train.activation_checkpointing:
        enable_activation_checkpointing(model)
    ddp_model = parallelize(model, d, recipe.train.parallel, bf16=_wants_bf16(recipe, d.device))
    model = unwrap(ddp_model)  # FSDP shards in place: the optimizer is built on the sharded parameters
    optimizer = build_optimizer(model, recipe.optim, lr=lr_at(recipe.schedule, 0, total_steps), device=d.device)
    # forward passes return the loss, never the full logits (models/loss.py); after the optimizer is built, since
    # its one check forward is the first forward, where FSDP2 settles its sharded parameters
    loss_model = LossModel(model)
    fwd_model = torch.compile(ddp_model) if recipe.train.compile else ddp_model
    autocast = _autocast(recipe, d.device)
    objective = Objective(recipe.model.objective, tok, vocab, recipe.seed, recipe.model.mask_prob)
    if objective.kind == "masked" and recipe.eval.windows == "documents":
        raise UserError("eval.windows: documents is for causal LMs; use packed with model.objective: masked")
    val_sets = {n: eval_windows(domains[n], seq_len, recipe.eval.max_tokens, recipe.eval.windows) for n in eval_names}
    if objective.kind == "masked":
        val_sets = {n: eval_pairs(v, objective, key=zlib.crc32(n.encode())) for n, v in val_sets.items()}

    metrics = MetricsLog(run_dir / rundir.METRICS, enabled=d.is_main, trackers=list(recipe.train.trackers))
    step, window, elapsed_before = 0, {"loss": 0.0, "steps": 0}, 0.0
    if resume_from is not None:
        state = ckpt.load_state(resume_from)
        elapsed_before = float(state.get("elapsed_s", 0.0))  # wall time of the earlier processes of this run
        ckpt.load_into(resume_from, model, optimizer, d.rank)
        sampler.load_state_dict(state["sampler"], strict=not allow_config_change)
        step, window = state["step"], state["window"]
        metrics.truncate(state["metrics_offset"])
        if d.is_main:
            print(f"resuming {run_dir} from {resume_from.name}")
    else:
        if plan.action == "restart":
            metrics.truncate(0)  # the earlier attempt's events: it stopped before its first checkpoint
        if recipe.init.keep_optimizer:
            _load_optimizer_moments(recipe.init.from_, model, optimizer)
    barrier(d)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / rundir.CONFIG, to_yaml(recipe))
        signals.pause_point("startup")

    peak = peak_flops(d.device)
    log_every, eval_every, dense = recipe.train.log_every, recipe.eval.every, recipe.eval.dense_steps

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def event(kind: str, s: int, **values) -> dict:
        tokens = s * recipe.train.batch_tokens
        return {"event": kind, "step": s, "tokens": tokens, "flops": fpt * tokens,
                "lr": lr_at(recipe.schedule, max(s - 1, 0), total_steps), **values}

    def run_eval(s: int) -> dict:
        losses = evaluate(loss_model, val_sets, recipe.eval.batch_size, d, autocast, causal=objective.kind == "causal")
        values = {}
        for n, loss in losses.items():
            values[f"val/{n}/loss"] = loss
            values[f"val/{n}/ppl"] = perplexity(loss)
        if losses:
            values["val/avg/loss"] = float(np.mean(list(losses.values())))
        te = recipe.eval.tasks_every
        if recipe.eval.tasks and d.is_main and (s == total_steps or (te and s % te == 0)):
            from warmstart.eval.tasks import run_tasks  # lm-eval task accuracies ride on the same eval event

            accs = run_tasks(model, tok, recipe.eval.tasks, recipe.eval.tasks_num_fewshot,
                             recipe.eval.tasks_limit, d.device)
            values.update({f"task/{k}": v for k, v in accs.items()})
        metrics.write(event("eval", s, **values))
        return values

    def save_checkpoint(s: int) -> None:
        rngs = _gather_rngs(d)
        loss_sum = all_reduce_sum(win_loss.clone(), d)  # the log window so far: sum of global step losses
        state = {}
        if d.is_main:
            metrics.sync()
            state = {
                "step": s,
                "tokens": s * recipe.train.batch_tokens,
                "sampler": sampler.state_dict(),
                "metrics_offset": metrics.offset(),
                "window": {"loss": float(loss_sum.item()), "steps": window["steps"]},
                "elapsed_s": elapsed(),
                "world": d.world,
            }
        ckpt.save(run_dir / "checkpoints", s, model, optimizer, state, rngs, recipe.train.keep_checkpoints, d)

    if d.is_main:
        print(
            f"run {run_dir}: {loaded.source}, {n_params / 1e6:.2f}M params, {total_steps} steps x "
            f"{recipe.train.batch_tokens} tokens, {d.world} process(es) on {d.device.type}"
        )
    last_eval: dict = {}
    if step == 0 and resume_from is None:
        last_eval = run_eval(0)
    elif step >= total_steps:  # resumed from the last step's checkpoint: its final eval is in metrics.jsonl
        last_eval = rundir.logged_eval(run_dir, step) or run_eval(step)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not (recipe.train.progress and d.is_main),
               unit="step", dynamic_ncols=True, leave=False)
    # the window holds the sum of the steps' global mean losses (each rank adds its share, loss / world), so it
    # carries over a resume on any number of processes: rank 0 takes the resumed sum, the others start at zero
    win_loss = torch.tensor(window["loss"] if d.is_main else 0.0, dtype=torch.float64, device=d.device)
    t_window, tok_window = time.perf_counter(), 0
    with signals.deferred() as stop:
        while step < total_steps:
            lr = lr_at(recipe.schedule, step, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            plan = sampler.next_indices(gseqs)
            first = d.rank * micro * accum  # this process's rows of the global batch
            noise = objective.noise((step,), (gseqs, seq_len))
            step_loss = torch.zeros((), dtype=torch.float64, device=d.device)
            batches = []
            for k in range(accum):
                rows = slice(first + k * micro, first + (k + 1) * micro)
                x = torch.from_numpy(sampler.read(plan[rows])).to(d.device)
                batches.append(objective.split(x, noise, rows))
            divisor = objective.loss_divisor([labels for _, labels in batches], d)
            for k, (inputs, labels) in enumerate(batches):
                with gradient_sync(ddp_model, k == accum - 1):
                    with autocast:
                        loss_sum, n = loss_model(inputs, labels, runner=fwd_model)
                    loss = loss_sum / divisor if divisor else loss_sum / n / accum
                    loss.backward()
                step_loss += loss.detach().double()
            if recipe.optim.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip)
            else:
                grad_norm = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tok_window += recipe.train.batch_tokens
            win_loss += step_loss / d.world
            window["steps"] += 1
            bar.update(1)

            if step % log_every == 0 or step == total_steps:
                all_reduce_sum(win_loss, d)
                train_loss = win_loss.item() / window["steps"]
                dt = time.perf_counter() - t_window
                tps = tok_window / dt if dt > 0 else float("nan")
                values = {"train/loss": train_loss, "tokens_per_s": tps, "elapsed_s": elapsed()}
                if grad_norm is not None:
                    values["grad_norm"] = float(full_value(grad_norm))
                if peak:
                    values["mfu"] = fpt * tps / (peak * d.world)
                metrics.write(event("train", step, **values))
                bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                win_loss.zero_()
                window = {"loss": 0.0, "steps": 0}
                t_window, tok_window = time.perf_counter(), 0
            if step % eval_every == 0 or step < dense or step == total_steps:
                last_eval = run_eval(step)

            stop_now = stop.signum is not None
            if d.enabled:
                flag = torch.tensor([1 if stop_now else 0], device=d.device)
                all_reduce_sum(flag, d)
                stop_now = bool(flag.item())
            ce = recipe.train.checkpoint_every
            if step == total_steps or stop_now or (ce and step % ce == 0):
                save_checkpoint(step)
            if stop_now:
                bar.close()
                if d.is_main:
                    print(f"stopped by signal at step {step}; checkpoint saved. Continue with --resume")
                return RunResult(run_dir, step, total_steps, interrupted_by=stop.take(), last_eval=last_eval)
    bar.close()

    final_dir = run_dir / rundir.FINAL
    whole = full_state_dict(model)  # a sharded model is gathered onto rank 0 (every rank takes part)
    if d.is_main:
        signals.pause_point("before_final")
        with atomic.build_dir(final_dir, replace=True) as tmp:
            save_hf(model, tok, tmp, state_dict=whole)
            signals.pause_point("final_save")
        summary = {
            "run_dir": str(run_dir),
            "steps": step,
            "tokens": step * recipe.train.batch_tokens,
            "flops": fpt * step * recipe.train.batch_tokens,
            "params": n_params,
            "flops_per_token": fpt,
            "elapsed_s": elapsed(),
            "final_eval": last_eval,
            "init": loaded.source,
            "weights": sampler.weights,  # the effective mixture (weights_from and replay resolved)
            "sequences_per_domain": sampler.counts,
        }
        atomic.write_json(run_dir / rundir.SUMMARY, summary)
        losses = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in last_eval.items() if k.endswith("/loss"))
        print(f"finished {run_dir} (step {step}); val loss: {losses}; model: {final_dir}")
    barrier(d)
    return RunResult(run_dir, step, total_steps, final_dir=final_dir, last_eval=last_eval)


def _load_optimizer_moments(init_from: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Re-warming that keeps AdamW's moments: take them from the source run's newest checkpoint."""
    src = Path(init_from)
    path = ckpt.newest_valid(src / "checkpoints") if (src / "checkpoints").is_dir() else None
    if path is None:
        resolved = resolve_checkpoint(init_from)
        raise UserError(
            f"init.keep_optimizer: {init_from} has no warmstart checkpoint with optimizer state "
            f"(weights came from {resolved}); set keep_optimizer: false"
        )
    try:
        with warnings.catch_warnings():  # torch warns about a pickle's protocol before refusing it; the error says it
            warnings.simplefilter("ignore")
            ckpt.load_optimizer(path, model, optimizer)
    except pickle.UnpicklingError:  # weights_only refuses anything but tensors and plain containers
        raise UserError(
            f"init.keep_optimizer: {path} holds optimizer state that is more than tensors (an unsafe pickle, not "
            "loaded); set keep_optimizer: false"
        ) from None
