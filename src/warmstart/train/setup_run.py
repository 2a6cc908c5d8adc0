"""Building a run before its first step: data, model, layout, optimizer, evaluation sets, restored state.

`setup_run` does every check that can fail on bad input before any compute (data against the model's
tokenizer and document format, batch shape, schedule, eval domains and tasks), then returns a `Run`: the
objects the step loop (`warmstart.train.loop`) reads and nothing else. It writes config.yaml last, so a run that
fails here leaves no run directory behind it (OLMo-core's `Config.build()` beside each component; torchtitan's
`parallelize` apart from the model).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from warmstart import jsonfile, signals
from warmstart.config import DataConfig, Recipe, to_yaml
from warmstart.data.sampler import MixtureSampler
from warmstart.data.shards import open_data_dir
from warmstart.data.validation import evaluable_domains, skipped_note
from warmstart.errors import UserError, warn
from warmstart.eval.perplexity import eval_windows, scored_targets
from warmstart.models.build import (
    build_model,
    check_data_compatible,
    check_data_format,
    count_params,
    enable_activation_checkpointing,
    flops_per_token,
    forward_flops_per_token,
    model_config,
    resolve_checkpoint,
)
from warmstart.models.distill import DistillLoss
from warmstart.models.inherit_record import search_flops
from warmstart.models.loss import LossModel
from warmstart.models.packing import DocumentAttention
from warmstart.runtime import rundir, threads
from warmstart.runtime.distributed import Dist, all_reduce_sum, barrier
from warmstart.runtime.metrics import MetricsLog
from warmstart.train import checkpoint as ckpt
from warmstart.train.host_allocator import keep_heap, wanted
from warmstart.train.objectives import Objective, eval_pairs
from warmstart.train.optim import build_optimizer
from warmstart.train.parallelize import parallelize, unwrap
from warmstart.train.run_plan import Plan
from warmstart.train.schedules import lr_at, vanished_phases
from warmstart.train.throughput import peak_flops


@dataclass
class Run:
    """Everything the step loop needs, built once by `setup_run`."""

    recipe: Recipe
    d: Dist
    total_steps: int
    gseqs: int  # sequences per optimizer step, all processes together
    micro: int  # sequences per forward on this process
    accum: int  # micro-batches per step on this process
    sampler: MixtureSampler
    model: torch.nn.Module  # the (possibly sharded) model the optimizer steps
    ddp_model: torch.nn.Module  # the module gradients are synchronised through (DDP wrapper or `model`)
    fwd_model: torch.nn.Module  # what forward runs (`ddp_model`, compiled when train.compile)
    loss_model: LossModel
    train_loss: LossModel | DistillLoss  # what a training step calls: loss_model, or the distillation loss
    tokenizer: object
    optimizer: torch.optim.Optimizer
    objective: Objective
    autocast: contextlib.AbstractContextManager
    val_sets: dict
    attention: DocumentAttention | None  # data.packing: documents (None: the plain stream)
    metrics: MetricsLog
    flops_per_token: float  # the student's training FLOPs + the teacher's forward FLOPs, per token
    n_params: int
    source: str  # where the weights came from
    peak_flops: float | None
    teacher_flops_per_token: float = 0.0
    init_flops: float = 0.0  # one-off compute of the start: an inherited cut's block search (charged at step 0)
    step: int = 0
    window: dict = field(default_factory=lambda: {"loss": 0.0, "steps": 0})  # the log window carried by a resume
    resumed_from: Path | None = None
    elapsed_before: float = 0.0  # wall time of this run's earlier processes
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start


def resolve_weights(data: DataConfig) -> DataConfig:
    """`data.weights_from: mixture.json` -> explicit weights (a mixture file is just a weights table)."""
    if not data.weights_from:
        return data
    path = Path(data.weights_from)
    if not path.is_file():
        raise UserError(f"data.weights_from: {path} not found")
    try:
        weights = jsonfile.loads(path.read_text())["weights"]
    except jsonfile.DuplicateKeyError as e:
        raise UserError(f"data.weights_from: {path}: {e}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"data.weights_from: {path} is not a mixture file (needs a 'weights' table)") from None
    if data.weights:
        raise UserError("data.weights_from: give weights or weights_from, not both")
    return data.model_copy(update={"weights": {k: float(v) for k, v in weights.items()}, "weights_from": None})


def batch_shape(recipe: Recipe, d: Dist) -> tuple[int, int, int]:
    """(global sequences per step, micro batch, gradient-accumulation steps) per process; UserError when the
    batch does not split evenly over the processes and micro-batches."""
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


def wants_bf16(recipe: Recipe, device: torch.device) -> bool:
    return recipe.train.precision == "bf16" or (recipe.train.precision == "auto" and device.type == "cuda")


def _autocast(recipe: Recipe, device: torch.device):
    if not wants_bf16(recipe, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _open_data(recipe: Recipe, data_cfg: DataConfig, d: Dist) -> tuple[dict, list[str], MixtureSampler]:
    """The data directory's domains, the evaluated ones, and the sampler; UserError for an unknown domain."""
    domains = open_data_dir(data_cfg.dir)
    eval_names = recipe.eval.domains if recipe.eval.domains is not None else list(domains)
    for name in eval_names:
        if name not in domains:
            raise UserError(f"eval.domains: no domain {name!r} in {data_cfg.dir} (have: {', '.join(domains)})")
    listed = eval_names
    eval_names = evaluable_domains(
        domains, eval_names, recipe.eval.domains is not None, "eval.domains", recipe.eval.windows
    )
    if d.is_main and len(eval_names) < len(listed):
        skipped = [n for n in listed if n not in eval_names]
        then = "training without validation for it (and without it in val/avg/loss)"
        print(f"note: {skipped_note(domains, skipped, recipe.eval.windows, then)}")
    if recipe.eval.tasks:  # on every rank, so none waits at a barrier for one that failed
        from warmstart.eval.tasks import task_manager

        task_manager(recipe.eval.tasks)  # unknown task names fail now, before the model is even loaded
        if recipe.train.parallel == "fsdp" and d.enabled:
            raise UserError("eval.tasks: lm-eval tasks run on rank 0 alone, which a sharded model (train.parallel: "
                            "fsdp) cannot do; use parallel: ddp, or run `warmstart eval` on final/")
    sampler = MixtureSampler.from_config(data_cfg, domains, seed=recipe.seed)
    replayed = {n for n, w in (data_cfg.replay.domains if data_cfg.replay else {}).items() if w > 0}
    unused = [n for n, w in data_cfg.weights.items() if w == 0 and n not in replayed]
    if d.is_main and unused:  # a listed domain that is never read: said once, in case it was not meant
        print(f"note: data.weights gives {', '.join(unused)} weight 0: not trained on"
              + (" (still evaluated)" if set(unused) & set(eval_names) else ""))
    return domains, eval_names, sampler


def _check_data_meets_model(tok, vocab: int, domains: dict, used: list[str], data_cfg: DataConfig, d: Dist) -> None:
    """Every domain the run reads has the model's tokenizer, ids inside its vocabulary and its document format."""
    max_id = max(int(domains[n].index["splits"][s].get("max_token_id") or 0) for n in set(used) for s in ("train", "val"))
    check_data_compatible(tok, domains[used[0]].tokenizer, max_id, vocab, data_cfg.dir)
    check_data_format(tok, {n: domains[n] for n in sorted(set(used))}, data_cfg.dir,
                      data_cfg.allow_format_mismatch, "--set data.allow_format_mismatch=true", d.is_main)
    for n in set(used):
        if domains[n].tokenizer.get("vocab_hash") != domains[used[0]].tokenizer.get("vocab_hash"):
            raise UserError(f"data.dir: domain {n!r} was prepared with a different tokenizer than the others")


def disk_line(disk: dict) -> str:
    """What the run will leave on disk (`checkpoint.disk_estimate`), said before it starts."""
    h = ckpt.human_bytes
    return (f"disk: ~{h(disk['total_bytes'])} when done: {disk['checkpoints']} checkpoint(s) of ~"
            f"{h(disk['checkpoint_bytes'])} (weights + AdamW state, for --resume and init.keep_optimizer; "
            f"train.checkpoint_every / keep_checkpoints) + final/ ~{h(disk['final_bytes'])}")


def setup_run(recipe: Recipe, d: Dist, plan: Plan, allow_config_change: bool) -> Run:
    """Build the run `plan` calls for ("fresh", "restart" or "resume"); writes config.yaml when all is in place.

    Raises UserError (nothing written) for data that does not meet the model, a batch that does not split, a
    schedule whose phases do not fit, unknown eval domains or tasks, or an `init.keep_optimizer` source without
    optimizer state.
    """
    t_start = time.perf_counter()
    total_steps = rundir.planned_steps(recipe)
    data_cfg = resolve_weights(recipe.data)
    gseqs, micro, accum = batch_shape(recipe, d)
    lr_at(recipe.schedule, 0, total_steps)  # schedule errors (phases that do not fit) before any heavy work
    domains, eval_names, sampler = _open_data(recipe, data_cfg, d)
    used = [n for n, w in sampler.weights.items() if w > 0] + list(eval_names)

    forecast_memory(recipe, d, micro, accum)
    loaded = build_model(recipe.model, recipe.init.from_, seed=recipe.seed, seq_len=data_cfg.seq_len,
                         sharded=_sharded(recipe, d))
    model, tok = loaded.model, loaded.tokenizer
    vocab = model.get_input_embeddings().weight.shape[0]
    _check_data_meets_model(tok, vocab, domains, used, data_cfg, d)
    fpt, n_params = flops_per_token(model, data_cfg.seq_len), count_params(model)
    if d.device.type == "cpu":  # before the first step's buffers: they are what the setting is about
        keep_heap(wanted(recipe.train.keep_heap, n_params))
    threads_line = ""
    if d.device.type == "cpu" or isinstance(recipe.train.cpu_threads, int):
        threads_line = threads.apply(recipe.train.cpu_threads, n_params, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    model.train()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if recipe.train.activation_checkpointing:
        enable_activation_checkpointing(model)
    disk = ckpt.disk_estimate(model, total_steps, recipe.train.checkpoint_every, recipe.train.keep_checkpoints)
    ddp_model = parallelize(model, d, recipe.train.parallel, bf16=wants_bf16(recipe, d.device))
    model = unwrap(ddp_model)  # FSDP shards in place: the optimizer is built on the sharded parameters
    if loaded.start is not None:  # built on the meta device: each process reads its own shards now
        loaded.start.materialise(model, d.device)
    optimizer = build_optimizer(model, recipe.optim, lr=lr_at(recipe.schedule, 0, total_steps), device=d.device)
    # forward passes return the loss, never the full logits (models/loss.py); after the optimizer is built, since
    # its one check forward is the first forward, where FSDP2 settles its sharded parameters
    loss_model = LossModel(model)
    train_loss, teacher_fpt = loss_model, 0.0
    if recipe.distill is not None:
        train_loss, teacher_fpt = _teacher(recipe, loss_model, d, data_cfg.seq_len, tok)
    fpt += teacher_fpt
    search_fl = search_flops(resolve_checkpoint(recipe.init.from_, "init.from")) if recipe.init.from_ else 0.0
    init_fl = search_fl + recipe.init.charged_flops  # + what a job spent choosing this run's settings (recipes/jobs)
    objective = Objective(recipe.model.objective, tok, recipe.seed, recipe.model.mask_prob,
                          packing=data_cfg.packing)
    if objective.kind == "masked" and recipe.eval.windows == "documents":
        raise UserError("eval.windows: documents is for causal LMs; use packed with model.objective: masked")
    # documents packing: how this model is told where documents start (refused in one line if it cannot be)
    attention = DocumentAttention(model) if objective.packing == "documents" else None
    val_sets = {n: eval_windows(domains[n], data_cfg.seq_len, recipe.eval.max_tokens, recipe.eval.windows,
                                objective.packing)
                for n in eval_names}
    if objective.kind == "masked":
        val_sets = {n: eval_pairs(v, objective, key=zlib.crc32(n.encode())) for n, v in val_sets.items()}

    run = Run(
        recipe=recipe, d=d, total_steps=total_steps, gseqs=gseqs, micro=micro, accum=accum, sampler=sampler,
        model=model, ddp_model=ddp_model, fwd_model=torch.compile(ddp_model) if recipe.train.compile else ddp_model,
        loss_model=loss_model, train_loss=train_loss, teacher_flops_per_token=teacher_fpt, tokenizer=tok,
        optimizer=optimizer, objective=objective, autocast=_autocast(recipe, d.device), val_sets=val_sets,
        attention=attention,
        metrics=MetricsLog(rundir.metrics_path(recipe.run_dir), enabled=d.is_main,
                           trackers=list(recipe.train.trackers)),
        flops_per_token=fpt, n_params=n_params, source=loaded.source, peak_flops=peak_flops(d.device),
        init_flops=init_fl, t_start=t_start,
    )
    _restore(run, plan, allow_config_change)
    if threads_line and recipe.train.cpu_threads == "auto" and run.resumed_from is not None:
        # _restore kept the count the run started with: say that, not the count this start would have chosen
        threads_line = (f"threads: {torch.get_num_threads()} (auto, kept from the run's start; "
                        "train.cpu_threads to set it)")
    barrier(d)
    if d.is_main:
        recipe.run_dir.mkdir(parents=True, exist_ok=True)
        changed = eval_changes(rundir.read_config(recipe.run_dir), recipe) if run.resumed_from is not None else {}
        rundir.write_config(recipe.run_dir, to_yaml(recipe))
        if changed:  # the curve goes on in another quantity: said now, and marked where report and gap read it
            said = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            warn(f"EVALUATION CHANGED after step {run.step} ({said}): validation losses from here on are not the "
                 "same quantity as before; report and gap name the change")
            run.metrics.write({"event": "eval_change", "step": run.step,
                               "tokens": run.step * recipe.train.batch_tokens, "changed": said})
        signals.pause_point("startup")
        print(f"run {recipe.run_dir}: {loaded.source}, {n_params / 1e6:.2f}M params, {total_steps} steps x "
              f"{recipe.train.batch_tokens} tokens, {d.world} process(es) on {d.device.type}")
        print(disk_line(disk))
        if threads_line:
            print(threads_line)
        if init_fl:
            parts = ([f"{search_fl:.3g} of the block search(es) behind this cut (inherited.json)"] if search_fl else [])
            parts += [f"{recipe.init.charged_flops:.3g} spent deciding this run's settings (init.charged_flops)"] \
                if recipe.init.charged_flops else []
            print(f"flops: {init_fl:.3g} FLOPs charged from step 0: {' + '.join(parts)}")
        print(eval_line(recipe, {n: scored_targets(v) for n, v in val_sets.items()}))
        # a share or a fraction asked for that rounds away on this run: said, not silently dropped
        for line in vanished_phases(recipe.schedule, total_steps) + sampler.vanishing_shares(total_steps * gseqs):
            warn(line)
        if "micro_batch_size" in recipe.train.model_fields_set and micro < recipe.train.micro_batch_size:
            warn(f"train.micro_batch_size: {recipe.train.micro_batch_size} is more than the {micro} sequences each "
                 f"process gets per step; micro-batches of {micro}")
    return run


def _streams(init_from: str | None) -> bool:
    """Whether a sharded start reads its shards from safetensors files; a from-scratch model is initialised whole
    on every process (its seeded init is then the one-process run's), as is a checkpoint without them."""
    from warmstart.models.weight_files import WeightFiles

    return init_from is not None and WeightFiles.find(resolve_checkpoint(init_from, "init.from")) is not None


def _sharded(recipe: Recipe, d: Dist) -> bool:
    """Whether the run shards its model over several processes (FSDP): it then starts on the meta device."""
    return recipe.train.parallel == "fsdp" and d.enabled


def forecast_memory(recipe: Recipe, d: Dist, micro: int, accum: int) -> None:
    """Say the run's expected peak memory per process before any weights load; refuse (UserError, on every rank
    alike) when it exceeds what the host or the GPU has (models/memory.py)."""
    from transformers import AutoConfig

    from warmstart.models import memory

    config = model_config(recipe.model, recipe.init.from_)
    try:
        model = memory.meta_model(config, recipe.model.objective)
    except (ValueError, TypeError, RuntimeError):  # no such class or sizes it cannot build: build_model says which
        return
    teacher = None
    if recipe.distill is not None:
        src = resolve_checkpoint(recipe.distill.teacher, "distill.teacher")
        try:
            teacher = memory.meta_model(AutoConfig.from_pretrained(str(src)))
        except Exception as e:  # an unreadable config: loading it says the same in `_teacher`
            raise UserError(f"distill.teacher: cannot read the config of {recipe.distill.teacher} ({e})") from None
    cuda = d.device.type == "cuda"
    forecast = memory.forecast_train(
        model, micro=micro, seq_len=recipe.data.seq_len, accum=accum,
        checkpointing=recipe.train.activation_checkpointing, parallel=recipe.train.parallel, world=d.world,
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")), eval_batch=recipe.eval.batch_size,
        eval_seq=recipe.data.seq_len, cuda=cuda, bf16=wants_bf16(recipe, d.device), teacher=teacher,
        whole_first=_sharded(recipe, d) and not _streams(recipe.init.from_))
    if d.is_main:
        print(forecast.line(), flush=True)
    line = memory.verdict(forecast, torch.cuda.mem_get_info(d.device)[0] if cuda else None)
    refused = torch.tensor([1.0 if line else 0.0], device=d.device)
    all_reduce_sum(refused, d)  # one rank short of memory stops them all, before any collective waits on it
    if refused.item():
        raise UserError(line or "memory: another process of this run does not fit in its memory; see its line")


EVAL_KEYS = ("data.dir", "data.packing", "data.seq_len", "model.tokenizer", "eval.windows", "eval.max_tokens",
             "eval.domains")


def eval_changes(old: dict | None, recipe: Recipe) -> dict[str, tuple]:
    """{key: (was, now)} of the settings that make a validation loss what it is (`EVAL_KEYS`; packing only for
    packed windows) that differ between a run's recorded config.yaml and the recipe it resumes with."""
    import yaml

    from warmstart.config import absolute_paths

    if not old:
        return {}
    was, now = absolute_paths(old), yaml.safe_load(to_yaml(recipe))
    out = {}
    for key in EVAL_KEYS:
        section, name = key.split(".")
        a, b = (was.get(section) or {}).get(name), (now.get(section) or {}).get(name)
        if key == "data.packing" and now["eval"]["windows"] != "packed":
            continue
        a = a if a is not None else {"eval.windows": "packed", "data.packing": "stream"}.get(key)  # before the keys
        if a != b:
            out[key] = (a, b)
    return out


def eval_line(recipe: Recipe, targets: dict[str, int]) -> str:
    """What every in-loop evaluation scores, per domain, said once at the start: a domain whose validation split
    holds fewer targets than eval.max_tokens (document windows score each document's first seq_len + 1 tokens
    only) is named, since val/avg/loss weighs every domain equally whatever its count."""
    m = recipe.eval.max_tokens
    short = [n for n, k in targets.items() if k < m]
    what = "document" if recipe.eval.windows == "documents" else f"packed ({recipe.data.packing})"
    line = (f"eval: {', '.join(f'{n} {k:,}' for n, k in targets.items())} targets per evaluation ({what} windows, "
            f"seq_len {recipe.data.seq_len}, eval.max_tokens {m:,})")
    if short:
        line += (f"; {', '.join(short)}: fewer than eval.max_tokens, all that "
                 f"{'its' if len(short) == 1 else 'their'} validation split gives")
    return line


def _check_teacher_tokenizer(src, student_tok) -> None:
    """A teacher and its student compare next-token distributions id by id: the same number of rows is not enough,
    the ids must mean the same tokens (the vocabulary hash). A teacher directory with no tokenizer files cannot be
    checked beyond its rows (DistillLoss), and that is said."""
    from warmstart.data.tokenizer import load_tokenizer, tokenizer_identity

    try:
        teacher_tok = load_tokenizer(str(src))
    except UserError:
        warn(f"distill.teacher: {src} has no tokenizer to compare with the student's; assuming the same vocabulary")
        return
    t, s = tokenizer_identity(teacher_tok), tokenizer_identity(student_tok)
    if t["vocab_hash"] != s["vocab_hash"]:
        raise UserError(
            f"distill.teacher: its tokenizer (vocab hash {t['vocab_hash'][:12]}, {t['vocab_size']} tokens) is not the "
            f"student's (vocab hash {s['vocab_hash'][:12]}, {s['vocab_size']} tokens); distillation compares "
            "next-token distributions id by id, so both need the same tokenizer"
        )


def _teacher(recipe: Recipe, student: LossModel, d: Dist, seq_len: int, student_tok) -> tuple[DistillLoss, float]:
    """The distillation loss with `distill.teacher` loaded frozen (eval mode, no gradient; bf16 where the run
    computes in bf16), laid out like the student (FSDP: sharded per block too), and its forward FLOPs per token
    (a third of `flops_per_token`'s training FLOPs: 2N + the attention's forward share)."""
    from warmstart.models.build import auto_class
    from warmstart.models.locate import load_failure

    src = resolve_checkpoint(recipe.distill.teacher, "distill.teacher")
    _check_teacher_tokenizer(src, student_tok)
    bf16 = wants_bf16(recipe, d.device) and d.device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    start = _teacher_start(src, dtype) if _sharded(recipe, d) else None
    try:
        teacher = start.model if start is not None else auto_class("causal").from_pretrained(str(src), dtype=dtype)
    except Exception as e:  # OSError/ValueError/KeyError/UnpicklingError for bad files, as build_model
        raise UserError(f"distill.teacher: cannot load {recipe.distill.teacher} as a causal LM ({load_failure(e)})") from None
    if hasattr(teacher.config, "use_cache"):
        teacher.config.use_cache = False
    teacher.eval().requires_grad_(False)
    fwd_fpt = forward_flops_per_token(teacher, seq_len)
    runner = parallelize(teacher, d, "fsdp", bf16=bf16) if recipe.train.parallel == "fsdp" else teacher.to(d.device)
    if start is not None:  # sharded on the meta device: each process reads its own shards of the teacher
        start.materialise(teacher, d.device)
    packing = None
    if recipe.data.packing == "documents" and recipe.model.objective == "causal":
        try:  # the teacher must see each document alone too, or it teaches attention across documents
            packing = DocumentAttention(unwrap(runner))
        except UserError as e:
            raise UserError(f"distill.teacher: {e}") from None
    loss = DistillLoss(student, teacher, recipe.distill.temperature, recipe.distill.alpha, teacher_runner=runner,
                       teacher_packing=packing)
    if d.is_main:
        print(f"distilling from {src} (T={recipe.distill.temperature}, alpha={recipe.distill.alpha}; "
              f"{fwd_fpt / 1e6:.1f} MFLOPs per token charged for its forward)")
    return loss, fwd_fpt


def _teacher_start(src, dtype: torch.dtype):
    """The teacher on the meta device, to be filled shard by shard (models/sharded_load.py); None where its
    checkpoint must load the whole way."""
    from transformers import AutoConfig

    from warmstart.models.build import auto_class
    from warmstart.models.sharded_load import MetaStart

    try:
        config = AutoConfig.from_pretrained(str(src))
    except Exception:  # noqa: BLE001 - from_pretrained says what is wrong with it, in _teacher
        return None
    return MetaStart.plan(auto_class("causal"), config, src, dtype)


def _restore(run: Run, plan: Plan, allow_config_change: bool) -> None:
    """Resume: weights, optimizer, sampler, step, log window and metrics offset from the plan's checkpoint.
    Otherwise: drop an earlier attempt's events (restart), and take AdamW's moments when init.keep_optimizer."""
    recipe = run.recipe
    if plan.checkpoint is not None:
        state = ckpt.load_state(plan.checkpoint)
        run.elapsed_before = float(state.get("elapsed_s", 0.0))
        ckpt.load_into(plan.checkpoint, run.model, run.optimizer, run.d.rank)
        run.sampler.load_state_dict(state["sampler"], strict=not allow_config_change)
        run.step, run.window, run.resumed_from = state["step"], state["window"], plan.checkpoint
        # the block search charged at the run's start, not what the init's inherited.json says now (a cut
        # re-made into the same directory would change it mid-run)
        run.init_flops = float(state.get("init_flops", run.init_flops))
        if recipe.train.cpu_threads == "auto" and run.d.device.type == "cpu" and state.get("cpu_threads"):
            # the load may differ now; the run's numbers should not: keep the thread count it started with
            torch.set_num_threads(int(state["cpu_threads"]))
        run.metrics.truncate(state["metrics_offset"])
        if run.d.is_main:
            print(f"resuming {run.run_dir} from {plan.checkpoint.name}")
        return
    if plan.action == "restart":
        run.metrics.truncate(0)  # the earlier attempt's events: it stopped before its first checkpoint
    if recipe.init.keep_optimizer:
        _load_optimizer_moments(recipe.init.from_, run.model, run.optimizer)


def _load_optimizer_moments(init_from: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Re-warming that keeps AdamW's moments: take them from the source run's newest checkpoint."""
    checkpoints = rundir.checkpoints_dir(init_from)
    path = ckpt.newest_valid(checkpoints) if checkpoints.is_dir() else None
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
