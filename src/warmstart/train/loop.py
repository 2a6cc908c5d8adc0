"""The one training loop. Pre-training, continued pre-training, re-warming and every recipe call `train()`.

A run is a directory (`recipe.run_dir`, laid out by `warmstart.runtime.rundir`), held by one process at a time.
`init.from` starts a NEW run from a checkpoint's weights (fresh optimizer and schedule: re-warming);
`resume=True` continues THIS run from its newest intact checkpoint with everything restored, finishes a run
stopped after its last checkpoint, and does nothing to a finished one (`warmstart.train.run_plan`).
Building the run is `warmstart.train.setup_run`; this module is the step loop and what it calls per step.
SIGTERM/SIGINT in the step loop: checkpoint and stop (exit 128+signum); anywhere else: stop at once, leaving no
temp files (warmstart.signals).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from warmstart import atomic, signals
from warmstart.config import Recipe, with_absolute_paths
from warmstart.eval.perplexity import evaluate, perplexity, scored_targets
from warmstart.progress import bar as progress_bar
from warmstart.runtime import rundir
from warmstart.runtime.distributed import Dist, all_gather_objects, all_reduce_sum, barrier, setup, teardown
from warmstart.runtime.metrics import logged_eval
from warmstart.train import checkpoint as ckpt
from warmstart.train.parallelize import full_value, gradient_sync
from warmstart.train.run_plan import decide
from warmstart.train.save_final import save_final
from warmstart.train.schedules import lr_at
from warmstart.train.setup_run import Run, setup_run


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


def train(recipe: Recipe, resume: bool = False, allow_config_change: bool = False) -> RunResult:
    """Run (or resume) one training run described by `recipe`; returns where it wrote and how it ended.

    Raises UserError (nothing written) for bad input or a run directory in use or not resumable, and
    `signals.Interrupted` for a SIGTERM/SIGINT outside the step loop (after cleaning up).
    """
    recipe = with_absolute_paths(recipe)  # config.yaml's paths read the same from any working directory
    try:
        with signals.handling():
            d = setup(recipe.train.device)
            if d.is_main:
                rundir.say_unclean_stop(recipe.run_dir)  # before the lock is taken: its file tells
            try:
                with rundir.held(recipe.run_dir, d) as lock:
                    plan = decide(recipe, d, resume, allow_config_change, existed=not lock.created_dir)
                    total = rundir.planned_steps(recipe)
                    if plan.action == "finished":
                        if d.is_main:
                            print(f"{recipe.run_dir}: already finished (step {plan.summary['steps']}); nothing to do")
                        return RunResult(recipe.run_dir, plan.summary["steps"], total,
                                         final_dir=rundir.final_dir(recipe.run_dir),
                                         last_eval=plan.summary["final_eval"])
                    if plan.note and d.is_main:
                        print(plan.note)
                    return fit(setup_run(recipe, d, plan, allow_config_change))
            finally:
                teardown(d)
    except signals.Interrupted as e:
        if rundir.config_path(recipe.run_dir).is_file():
            e.note = e.note or f"{recipe.run_dir}: continue it with --resume"
        raise


def fit(run: Run) -> RunResult:
    """The step loop: step, log, evaluate, checkpoint, and stop cleanly on a signal; then write final/."""
    recipe, d, total = run.recipe, run.d, run.total_steps
    last_eval = _first_eval(run)
    bar = progress_bar(total, initial=run.step, enabled=recipe.train.progress and d.is_main, desc=recipe.name,
                       unit="step", leave=False)
    # the window holds the sum of the steps' global mean losses (each rank adds its share, loss / world), so it
    # carries over a resume on any number of processes: rank 0 takes the resumed sum, the others start at zero
    win_loss = torch.tensor(run.window["loss"] if d.is_main else 0.0, dtype=torch.float64, device=d.device)
    t_window, tok_window = time.perf_counter(), 0
    log_every = recipe.train.log_interval(total)
    with signals.deferred() as stop:
        while run.step < total:
            lr = lr_at(recipe.schedule, run.step, total)
            step_loss, grad_norm = train_step(run, lr)
            run.step += 1
            step = run.step
            tok_window += recipe.train.batch_tokens
            win_loss += step_loss / d.world
            run.window["steps"] += 1
            bar.update(1)

            if step % log_every == 0 or step == total:
                loss, tps = log_train(run, win_loss, grad_norm, tok_window, time.perf_counter() - t_window)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
                t_window, tok_window = time.perf_counter(), 0
            if step % recipe.eval.every == 0 or step < recipe.eval.dense_steps or step == total:
                last_eval = evaluate_run(run, step)

            stop_now = _all_agree_to_stop(stop.signum is not None, d)
            every = recipe.train.checkpoint_every
            if step == total or stop_now or (every and step % every == 0):
                save_checkpoint(run, win_loss)
            if stop_now:
                bar.close()
                if d.is_main:
                    print(f"stopped by signal at step {step}; checkpoint saved. Continue with --resume")
                return RunResult(run.run_dir, step, total, interrupted_by=stop.take(), last_eval=last_eval)
    bar.close()
    return finish(run, last_eval)


# ----------------------------------------------------------------------------------------------- one step
def train_step(run: Run, lr: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over the global batch: this process's rows in micro-batches (gradients synchronised
    on the last), clipping, AdamW. Returns this process's share of the step's mean loss and the gradient norm."""
    recipe, d, seq_len = run.recipe, run.d, run.recipe.data.seq_len
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    indices = run.sampler.next_indices(run.gseqs)
    first = d.rank * run.micro * run.accum  # this process's rows of the global batch
    noise = run.objective.noise((run.step,), (run.gseqs, seq_len))
    batches = []
    for k in range(run.accum):
        rows = slice(first + k * run.micro, first + (k + 1) * run.micro)
        if run.attention is not None:  # data.packing: documents
            x = tuple(torch.from_numpy(a).to(d.device) for a in run.sampler.read_packed(indices[rows]))
        else:
            x = torch.from_numpy(run.sampler.read(indices[rows])).to(d.device)
        batches.append(run.objective.split(x, noise, rows))
    divisor = run.objective.loss_divisor([b[1] for b in batches], d)
    step_loss = torch.zeros((), dtype=torch.float64, device=d.device)
    for k, (inputs, labels, *positions) in enumerate(batches):
        forward = run.attention.kwargs(positions[0]) if positions else {}
        with gradient_sync(run.ddp_model, k == run.accum - 1):
            with run.autocast:
                loss_sum, n = run.train_loss(inputs, labels, runner=run.fwd_model, **forward)
            loss = loss_sum / divisor if divisor else loss_sum / n / run.accum
            loss.backward()
        step_loss += loss.detach().double()
    grad_norm = None
    if recipe.optim.grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), recipe.optim.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def _event(run: Run, kind: str, step: int, **values) -> dict:
    """A metrics.jsonl event at `step`: tokens and FLOPs spent so far (FLOPs include the start's one-off
    `init_flops`, an inherited cut's block search), and the LR the step trained with."""
    tokens = step * run.recipe.train.batch_tokens
    return {"event": kind, "step": step, "tokens": tokens, "flops": run.init_flops + run.flops_per_token * tokens,
            "lr": lr_at(run.recipe.schedule, max(step - 1, 0), run.total_steps), **values}


def log_train(run: Run, win_loss: torch.Tensor, grad_norm, tokens: int, seconds: float) -> tuple[float, float]:
    """Write the log window's train event (mean loss over its steps, tokens/s, MFU where the peak is known) and
    start a new window; returns (mean loss, tokens/s)."""
    all_reduce_sum(win_loss, run.d)
    train_loss = win_loss.item() / run.window["steps"]
    tps = tokens / seconds if seconds > 0 else float("nan")
    values = {"train/loss": train_loss, "tokens_per_s": tps, "elapsed_s": run.elapsed()}
    if grad_norm is not None:
        values["grad_norm"] = float(full_value(grad_norm))
    if run.peak_flops:
        values["mfu"] = run.flops_per_token * tps / (run.peak_flops * run.d.world)
    run.metrics.write(_event(run, "train", run.step, **values))
    win_loss.zero_()
    run.window = {"loss": 0.0, "steps": 0}
    return train_loss, tps


def evaluate_run(run: Run, step: int) -> dict:
    """Per-domain validation loss and perplexity (+ their mean, + lm-eval tasks when due), logged as one event."""
    recipe, d = run.recipe, run.d
    losses = evaluate(run.loss_model, run.val_sets, recipe.eval.batch_size, d, run.autocast,
                      causal=run.objective.kind == "causal", attention=run.attention)
    values = {}
    for n, loss in losses.items():
        values[f"val/{n}/loss"] = loss
        values[f"val/{n}/ppl"] = perplexity(loss)
        values[f"val/{n}/tokens"] = scored_targets(run.val_sets[n])  # what `warmstart eval` reports beside it
    if losses:
        values["val/avg/loss"] = float(np.mean(list(losses.values())))
        # which quantity the losses are: the windows, and how packed windows were read (data.packing)
        values["windows"] = recipe.eval.windows
        values["packing"] = run.objective.packing
    te = recipe.eval.tasks_every
    if recipe.eval.tasks and d.is_main and (step == run.total_steps or (te and step % te == 0)):
        from warmstart.eval.tasks import run_tasks  # lm-eval task accuracies ride on the same eval event

        accs = run_tasks(run.model, run.tokenizer, recipe.eval.tasks, recipe.eval.tasks_num_fewshot,
                         recipe.eval.tasks_limit, d.device)
        values.update({f"task/{k}": v for k, v in accs.items()})
    run.metrics.write(_event(run, "eval", step, **values))
    return values


def _first_eval(run: Run) -> dict:
    """Step 0's evaluation (before any update); for a run resumed at its last step, the final eval it logged."""
    if run.step == 0 and run.resumed_from is None:
        return evaluate_run(run, 0)
    if run.step >= run.total_steps:
        return logged_eval(run.run_dir, run.step) or evaluate_run(run, run.step)
    return {}


def _all_agree_to_stop(mine: bool, d: Dist) -> bool:
    """Whether any process got a signal: all stop at the same step, so their checkpoints agree."""
    if not d.enabled:
        return mine
    flag = torch.tensor([1 if mine else 0], device=d.device)
    all_reduce_sum(flag, d)
    return bool(flag.item())


def save_checkpoint(run: Run, win_loss: torch.Tensor) -> None:
    """Everything a resume needs at `run.step`: model, optimizer, sampler, RNGs, metrics offset, log window."""
    d = run.d
    rngs = all_gather_objects(ckpt.rng_state(), d)
    loss_sum = all_reduce_sum(win_loss.clone(), d)  # the log window so far: sum of global step losses
    state = {}
    if d.is_main:
        run.metrics.sync()
        state = {
            "step": run.step,
            "tokens": run.step * run.recipe.train.batch_tokens,
            "sampler": run.sampler.state_dict(),
            "metrics_offset": run.metrics.offset(),
            "window": {"loss": float(loss_sum.item()), "steps": run.window["steps"]},
            "elapsed_s": run.elapsed(),
            "world": d.world,
            "init_flops": run.init_flops,  # a resume keeps the charge the run started with
            "cpu_threads": torch.get_num_threads(),  # a resume with cpu_threads: auto computes with the same
        }
    ckpt.save(rundir.checkpoints_dir(run.run_dir), run.step, run.model, run.optimizer, state, rngs,
              run.recipe.train.keep_checkpoints, d)


def finish(run: Run, last_eval: dict) -> RunResult:
    """final/ (a plain Hugging Face checkpoint in safetensors files of at most train.save_shard_mb, gathered one
    file at a time when sharded: train/save_final.py), then summary.json."""
    recipe, d, step = run.recipe, run.d, run.step
    final_dir = rundir.final_dir(run.run_dir)
    if d.is_main:
        signals.pause_point("before_final")
    # every process takes part (a sharded model is gathered one file at a time); rank 0 writes
    with atomic.build_dir(final_dir, replace=True) if d.is_main else contextlib.nullcontext() as tmp:
        save_final(run.model, run.tokenizer, tmp, d, recipe.train.save_shard_mb)
        if d.is_main:
            signals.pause_point("final_save")
    if d.is_main:
        tokens = step * recipe.train.batch_tokens
        rundir.write_summary(run.run_dir, {
            "run_dir": str(run.run_dir),
            "steps": step,
            "tokens": tokens,
            "flops": run.init_flops + run.flops_per_token * tokens,
            "init_flops": run.init_flops,  # the block search of an inherited cut, charged once
            "params": run.n_params,
            "flops_per_token": run.flops_per_token,
            "teacher_flops_per_token": run.teacher_flops_per_token,
            "elapsed_s": run.elapsed(),
            "final_eval": last_eval,
            "init": run.source,
            "weights": run.sampler.weights,  # the effective mixture (weights_from and replay resolved)
            "sequences_per_domain": run.sampler.counts,
        })
        losses = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in last_eval.items() if k.endswith("/loss"))
        print(f"finished {run.run_dir} (step {step}); val loss: {losses}; model: {final_dir}")
    barrier(d)
    return RunResult(run.run_dir, step, run.total_steps, final_dir=final_dir, last_eval=last_eval)
