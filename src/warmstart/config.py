"""Typed recipes: one YAML file per command, validated before any work starts.

Every section rejects unknown keys; an error names the dotted key path and the file. `--set a.b=c` overrides
are parsed as YAML scalars and validated by the same schema, so they are typed exactly like the file.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from warmstart.errors import UserError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignment is validated, and every number is finite.

    `.nan` and `.inf` are valid YAML floats; a NaN passes every `ge`/`lt` bound (each comparison is False) and an
    infinite tolerance, loss or multiplier would flow into a comparison, a fit or a step count and come out as a
    plausible result. No setting means anything with them (`null` is the word for "none" where a key has one)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------------- prepare
class SourceConfig(Section):
    """One input of a domain: a file, a directory, or a Hugging Face dataset."""

    path: str
    format: Literal["auto", "jsonl", "parquet", "text", "hf"] = "auto"
    text_field: str = Field("text", description="JSONL key / Parquet column / dataset column holding the text")
    glob: str = Field("**/*", description="files taken from a directory of plain text (one document per file)")
    split: str | None = Field(None, description="split of a Hugging Face DatasetDict (default: 'train')")


class SlurmConfig(Section):
    """`executor: slurm`: the array job's settings (datatrove's SlurmPipelineExecutor writes the script)."""

    partition: str
    time: str = Field("24:00:00", description="time limit of each array task (sbatch --time)")
    mem_per_cpu_gb: float = Field(2, gt=0)
    env_command: str | None = Field(
        None, description="shell line run before each task, e.g. `source venv/bin/activate`"
    )
    sbatch_args: dict[str, str] = Field(
        default_factory=dict, description="more sbatch options, e.g. {account: X}"
    )


class PrepareConfig(Section):
    """`warmstart prepare`: text -> tokenized train/val token arrays per domain."""

    tokenizer: str = Field(..., description="model directory, tokenizer.json, or hub name")
    out: str
    domains: dict[str, list[SourceConfig]]
    val_docs: int | None = Field(None, ge=0)
    val_fraction: float | None = Field(None, ge=0.0, lt=1.0)
    seed: int = 0
    bos: Literal["auto", "true", "false"] | bool = Field(
        "auto", description="BOS at each document start: auto = as the tokenizer's template adds it (data/doc_format.py)"
    )
    doc_end: str = Field(
        "auto", description="token after each document: auto (rule in data/doc_format.py), none, or a token string"
    )
    eos_token: str | None = Field(None, description="older name of doc_end (a token string)")
    dtype: Literal["auto", "uint16", "uint32"] = "auto"
    workers: int = Field(1, ge=1)
    batch_docs: int = Field(256, ge=1, description="documents per tokenization task")
    skip_bad_records: bool = False
    overwrite: bool = False
    executor: Literal["local", "ray", "slurm"] = Field(
        "local",
        description="local: worker processes here; ray / slurm: tasks on a cluster (warmstart[cluster])",
    )
    address: str | None = Field(
        None, description="executor ray: the cluster to join (default: start a local Ray)"
    )
    task_mb: float = Field(64, gt=0, description="executor ray/slurm: input megabytes per task")
    slurm: SlurmConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.executor == "slurm" and self.slurm is None:
            raise ValueError("executor slurm needs a slurm section (at least slurm.partition)")
        if self.address is not None and self.executor != "ray":
            raise ValueError(f"address is for executor ray, not {self.executor}")
        if self.val_docs is not None and self.val_fraction is not None:
            raise ValueError("give val_docs or val_fraction, not both")
        if self.eos_token is not None:
            if self.doc_end != "auto":
                raise ValueError("give doc_end or its older name eos_token, not both")
            object.__setattr__(self, "doc_end", self.eos_token)
            object.__setattr__(self, "eos_token", None)
        if not self.domains:
            raise ValueError("domains: at least one domain is needed")
        for name, sources in self.domains.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"domains: bad domain name {name!r} (a plain directory name is needed)")
            if not sources:
                raise ValueError(f"domains.{name}: no sources listed")
        return self


# ----------------------------------------------------------------------------------------------- train
class SubsetConfig(Section):
    """Restrict a domain to K tokens (then repeated for as many epochs as the budget needs)."""

    tokens: int = Field(..., gt=0)
    mode: Literal["first", "random", "resample"] = Field(
        "random", description="first K; a random K fixed for the run; or a fresh random K every epoch"
    )


class ReplayConfig(Section):
    """A fixed share of every batch drawn from old domains; the token budget is shared, not added."""

    fraction: float = Field(..., ge=0.0, lt=1.0)
    domains: dict[str, float] = Field(..., description="old domain -> relative weight within the replay share")


class DataConfig(Section):
    dir: str = Field(..., description="a directory written by `warmstart prepare`")
    weights: dict[str, float] = Field(default_factory=dict, description="domain -> weight (normalised)")
    weights_from: str | None = Field(None, description="a mixture.json whose weights to use")
    seq_len: int = Field(256, gt=0)
    subsets: dict[str, SubsetConfig] = Field(default_factory=dict)
    replay: ReplayConfig | None = None
    allow_format_mismatch: bool = Field(
        False, description="train on data whose document format (BOS, document end) is not the checkpoint's"
    )
    packing: Literal["documents", "stream"] = Field(
        "documents",
        description="documents: attention and positions restart at every document inside a window, and a window "
        "that begins mid-document gets the format's prefix (BOS); stream: the plain token stream, attention across "
        "documents (what warmstart 0.1 did; for models trained that way). Masked LMs always read the stream",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        for k, w in self.weights.items():
            if w < 0:
                raise ValueError(f"weights.{k}: must be >= 0")
        if self.weights and sum(self.weights.values()) <= 0:
            raise ValueError("weights: at least one weight must be positive")
        if self.replay is not None:
            overlap = set(self.replay.domains) & {k for k, w in self.weights.items() if w > 0}
            if overlap:
                raise ValueError(f"replay.domains: {sorted(overlap)} are also new-data domains")
        return self


class ModelConfig(Section):
    """The architecture of a model trained from scratch (unused when init.from gives a checkpoint)."""

    preset: str | None = Field(None, description="a tiny preset, e.g. 'llama-tiny' (see `warmstart presets`)")
    family: str | None = Field(None, description="gpt2 | gpt_neox | llama | mistral | qwen2 | opt")
    config: str | None = Field(None, description="a Hugging Face config.json")
    sizes: dict[str, Any] = Field(default_factory=dict, description="config overrides, e.g. num_hidden_layers")
    tokenizer: str | None = Field(None, description="tokenizer directory or tokenizer.json")
    objective: Literal["causal", "masked"] = Field("causal", description="masked: BERT-style MLM (15% masked)")
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="masked objective: share of positions predicted")


class DistillConfig(Section):
    """Train against a teacher's next-token distribution (models/distill.py): loss per token
    alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * next-token cross-entropy."""

    teacher: str = Field(..., description="the teacher: a HF checkpoint dir, hub name or warmstart run dir")
    temperature: float = Field(1.0, gt=0.0, description="T: both distributions are softened by 1/T")
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="weight of the KL term; 1 - alpha on next-token loss")


class InitConfig(Section):
    from_: str | None = Field(
        None, alias="from", description="weights only: a HF checkpoint dir, hub name, or a warmstart run dir"
    )
    keep_optimizer: bool = Field(False, description="re-warming from a warmstart run: keep its AdamW moments")
    charged_flops: float = Field(
        0.0, ge=0.0, description="one-off compute spent deciding this run's settings (a job's probes: `warmstart "
        "adapt`/`derive`), charged from step 0 like an inherited cut's block search",
    )


class OptimConfig(Section):
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, ge=0.0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        """AdamW's moment decays: each in [0, 1) (torch refuses others only when the optimizer is built)."""
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be >= 0 and < 1 (got {list(v)})")
        return v
    weight_decay: float = Field(0.1, ge=0.0)
    decay_embeddings: bool = False
    decay_norms_and_biases: bool = False
    grad_clip: float | None = Field(1.0, description="max global grad norm; null for none")
    fused: bool | None = Field(None, description="fused AdamW; default: on (CUDA and CPU)")


class ScheduleConfig(Section):
    """Learning rate per optimizer step; see warmstart.train.schedules for the closed forms."""

    kind: Literal["cosine", "constant", "wsd", "infinite"] = "cosine"
    max_lr: float = Field(3e-4, gt=0.0)
    min_lr: float | None = Field(None, ge=0.0, description="absolute floor; overrides min_lr_ratio")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmup_steps: int | None = Field(None, ge=0)
    warmup_fraction: float | None = Field(None, ge=0.0, le=1.0)
    decay_fraction: float = Field(0.2, ge=0.0, le=1.0, description="wsd: cooldown / infinite: final anneal")
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    cooldown_fraction: float = Field(0.1, ge=0.0, le=1.0, description="infinite: max_lr -> constant_lr")
    constant_lr_ratio: float = Field(0.25, gt=0.0, le=1.0, description="infinite: constant phase / max_lr")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ValueError("give warmup_steps or warmup_fraction, not both")
        if self.kind == "infinite" and self.cooldown_fraction + self.decay_fraction > 1.0:
            raise ValueError("cooldown_fraction + decay_fraction must be <= 1")
        return self


class TrainConfig(Section):
    tokens: int | None = Field(None, gt=0, description="token budget (global); or give steps")
    steps: int | None = Field(None, gt=0)
    batch_tokens: int = Field(8192, gt=0, description="global batch in tokens (a multiple of data.seq_len)")
    micro_batch_size: int = Field(8, gt=0, description="sequences per process per forward pass")
    log_every: int | None = Field(
        None, gt=0, description="log the training loss every N steps; default: 10, or steps // 10 on a run under "
        "100 steps (so a short run's training-loss curve has points)",
    )
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    save_shard_mb: float = Field(
        1024, gt=0, description="final/ is written in safetensors files of at most this many MB (Hugging Face's "
        "sharded layout above it); rank 0 holds one file's worth of gathered weights at a time",
    )
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp (whole model per process) or fsdp (FSDP2, sharded per block)"
    )
    cpu_threads: int | Literal["auto"] | None = Field(
        "auto", description="torch CPU threads per process on CPU: a number; auto (the free cores, fewer for a "
        "small model: warmstart.runtime.threads); null for torch's default (every core)",
    )

    @field_validator("cpu_threads")
    @classmethod
    def _positive_threads(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be > 0, auto or null")
        return v
    keep_heap: bool | Literal["auto"] = Field(
        "auto",
        description="on CPU, reuse freed activation memory instead of re-faulting it each step (glibc); auto: "
        "for models under 50M parameters, where the faults cost the most time for the least memory",
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each transformer block in backward instead of keeping its activations"
    )
    progress: bool = True
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="also log metrics to TensorBoard / W&B (offline); metrics.jsonl stays"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.tokens is None) == (self.steps is None):
            raise ValueError("give exactly one of train.tokens and train.steps")
        return self

    def log_interval(self, total_steps: int) -> int:
        """Steps between training-loss events: `log_every`, or by default 10 (steps // 10, at least 1, on a run
        under 100 steps)."""
        return self.log_every or max(1, min(10, total_steps // 10))


class EvalConfig(Section):
    every: int = Field(100, gt=0, description="evaluate every N steps (and at step 0 and the end)")
    dense_steps: int = Field(0, ge=0, description="also evaluate at every step before this one")
    max_tokens: int = Field(16384, gt=0, description="validation tokens per domain (the first ones)")
    batch_size: int = Field(16, gt=0)
    windows: Literal["packed", "documents"] | None = Field(
        None,
        description="documents (default for causal LMs): one window per document from its start (BOS first), the "
        "number `warmstart eval` of a checkpoint and a by-hand computation give; packed (default for masked LMs): "
        "consecutive windows of the val stream, read as training reads it (data.packing)",
    )
    domains: list[str] | None = Field(None, description="default: every domain in data.dir")
    tasks: list[str] = Field(default_factory=list, description="lm-eval task names (extra `lm-eval`), rank 0")
    tasks_every: int = Field(0, ge=0, description="run the tasks every N steps (a multiple of every); 0: at the end")
    tasks_num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; default: each task's own")
    tasks_limit: int | None = Field(None, gt=0, description="evaluate only the first N items of each task")

    @model_validator(mode="after")
    def _check_tasks(self) -> EvalConfig:
        if self.tasks_every and self.tasks_every % self.every:
            raise ValueError(f"tasks_every: {self.tasks_every} is not a multiple of every ({self.every})")
        if self.tasks and importlib.util.find_spec("lm_eval") is None:
            raise ValueError("tasks: needs lm-evaluation-harness; pip install 'warmstart[lm-eval]'")
        return self


def _check_batch_tokens(train: TrainConfig, data: DataConfig) -> None:
    if train.batch_tokens % data.seq_len:
        raise ValueError(f"train.batch_tokens: {train.batch_tokens} is not a multiple of data.seq_len {data.seq_len}")


class Recipe(Section):
    """`warmstart train`: one run directory, one model, one mixture, one schedule."""

    name: str
    out_dir: str = "runs"
    seed: int = 0
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    distill: DistillConfig | None = Field(None, description="learn from a teacher's logits (default: tokens only)")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        arch = [k for k in ("preset", "family", "config") if getattr(self.model, k)]
        if self.init.from_ is None and not arch:
            raise ValueError("model: give model.preset, model.family or model.config (or init.from)")
        if self.init.from_ is not None and arch:
            raise ValueError(f"model.{arch[0]}: the architecture comes from init.from; drop one of them")
        if len(arch) > 1:
            raise ValueError(f"model: give one of preset/family/config, not {arch}")
        _check_batch_tokens(self.train, self.data)
        if self.init.keep_optimizer and self.init.from_ is None:
            raise ValueError("init.keep_optimizer: needs init.from (a warmstart run directory)")
        if self.distill is not None and self.model.objective != "causal":
            raise ValueError("distill: distils next-token distributions; it needs model.objective: causal")
        if self.model.objective == "masked" and self.data.packing != "stream":
            self.data.packing = "stream"  # bidirectional attention over the window: there is nothing to restart
        if self.eval.windows is None:  # before and after compare: the same windows as `warmstart eval`
            self.eval.windows = "packed" if self.model.objective == "masked" else "documents"
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# ----------------------------------------------------------------------------------------------- inheritune
class InheritConfig(Section):
    """`warmstart inherit`: REF's embeddings + chosen blocks + final norm + head as a new HF checkpoint."""

    from_: str = Field(..., alias="from", description="a HF checkpoint dir, hub name, or a warmstart run dir")
    layers: int | None = Field(None, description="inherit the first N blocks (1..k-1)")
    blocks: str | list[int] | None = Field(None, description="or an ordered block list, e.g. '0-5,8'")
    out: str
    overwrite: bool = False
    rule: Literal["first", "angular", "auto"] = Field(
        "first", description="which N blocks: first (Inheritune), angular (drop the contiguous run that changes "
        "the hidden state least, keeping the final block), auto (the rule whose cut has the lowest sample loss)"
    )
    sample: str | None = Field(None, description="a prepared data dir whose train split the rule measures on")
    sample_tokens: int = Field(16384, gt=0, description="tokens of the sample (split evenly over its domains)")
    sample_domains: list[str] | None = Field(None, description="the sample's domains (default: all of them)")
    auto_candidates: int = Field(3, ge=1, description="auto: runs of smallest angular distance evaluated")
    auto_alpha: float = Field(0.01, ge=0.0, lt=0.5, allow_inf_nan=False, description="auto: drop a candidate once a "
                              "paired t-test over sample windows shows it worse at this level; 0: every candidate on "
                              "the whole sample")
    seq_len: int = Field(512, gt=1, description="sample windows: each document's first seq_len + 1 tokens")
    keep_last: int = Field(1, ge=1, description="angular: the final blocks that are never removed")

    @model_validator(mode="after")
    def _check(self) -> InheritConfig:
        if (self.layers is None) == (self.blocks is None):
            raise ValueError("give exactly one of --layers N (first N blocks) and --blocks (e.g. 0-5,8)")
        if self.rule != "first" and self.layers is None:
            raise ValueError(f"--rule {self.rule} chooses the blocks itself; give --layers N (how many), not --blocks")
        if self.rule != "first" and self.sample is None:
            raise ValueError(f"--rule {self.rule} measures the blocks on your data; give --sample DATA_DIR (a prepared "
                             "data directory, `warmstart prepare`)")
        return self


class ReferenceConfig(Section):
    """The model to match: a warmstart run dir (its final/ and summary.json) or a checkpoint and its loss."""

    from_: str = Field(..., alias="from", description="a warmstart run dir or a HF checkpoint dir")
    loss: float | None = Field(None, description="its validation loss; default: the run's summary.json")
    evaluate: bool = Field(False, description="compute its loss on this recipe's validation data instead")


class GrowConfig(Section):
    """Inheritune v2: n = k/2 blocks, train; while worse than the reference, n += step, re-inherit, train."""

    start_layers: int | None = Field(None, gt=0, description="default: half the reference's blocks")
    step: int = Field(2, gt=0)
    tolerance: float = Field(0.0, ge=0.0, description="matched when loss <= reference loss + tolerance")
    target: list[str] | None = Field(None, description="domains whose mean val loss is compared; default: avg")
    baseline: bool = Field(True, description="also train a random init of the final depth, same steps")
    rule: Literal["first", "angular", "auto"] = Field(
        "first", description="which blocks each round inherits (`warmstart inherit --rule`), measured on data.dir"
    )
    sample_tokens: int = Field(16384, gt=0, description="angular/auto: train-split tokens the rule measures on")
    auto_candidates: int = Field(3, ge=1, description="auto: runs of smallest angular distance evaluated")
    auto_alpha: float = Field(0.01, ge=0.0, lt=0.5, allow_inf_nan=False, description="auto: drop a candidate once a "
                              "paired t-test over sample windows shows it worse at this level; 0: every candidate on "
                              "the whole sample")


class GrowRecipe(Section):
    """`warmstart grow`: rounds of inherit + train() under OUT_DIR/NAME, with grow_summary.json."""

    name: str
    out_dir: str = "runs"
    seed: int = 0
    reference: ReferenceConfig
    grow: GrowConfig = Field(default_factory=GrowConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    distill: DistillConfig | None = Field(
        None, description="train every round against a teacher (e.g. the reference's checkpoint) instead of tokens"
    )

    @model_validator(mode="after")
    def _check(self) -> GrowRecipe:
        _check_batch_tokens(self.train, self.data)
        if self.grow.target is not None and not self.grow.target:
            raise ValueError("grow.target: list at least one domain (or leave it out for the average)")
        return self

    @property
    def grow_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# ----------------------------------------------------------------------------------------------- jobs
class JobConfig(Section):
    """What `warmstart adapt` and `warmstart derive` share: a checkpoint, the user's text, a token budget, and how
    the settings are measured on that text (recipes/jobs). Every key is also a flag of the command."""

    checkpoint: str = Field(..., description="a HF checkpoint dir, hub name, or a warmstart run dir")
    text: dict[str, list[str]] = Field(..., description="new domains: name -> text files or directories")
    tokens: int = Field(..., gt=0, description="the training budget in tokens (probes included)")
    out: str = Field(..., description="the job's directory (re-run the same command to resume)")
    probe_share: float = Field(0.1, gt=0.0, le=0.5, description="at most this share of the budget's FLOPs decides")
    seed: int = 0
    lrs: list[float] = Field([1e-4, 3e-4, 1e-3], description="candidate max LRs (at least 3, spanning >= 10x)")
    seq_len: int = Field(256, gt=1)
    batch_tokens: int = Field(4096, gt=0, description="tokens per optimizer step (a multiple of seq_len)")
    micro_batch_size: int = Field(8, gt=0)
    warmup_fraction: float = Field(0.01, ge=0.0, lt=1.0, description="re-warming: share of the run's steps (at least 2)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="re-decay: the final LR / max LR")
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="share of each domain's documents held out")
    eval_tokens: int = Field(16384, gt=0, description="validation tokens per domain (the same windows throughout)")
    alpha: float = Field(0.05, ge=0.0, lt=0.5, description="level of the paired t-test that drops a probe")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | Literal["auto"] | None = Field("auto", description="as train.cpu_threads")
    skip_bad_records: bool = Field(False, description="skip (and count) records that are not text, as prepare does")

    @model_validator(mode="after")
    def _check_job(self) -> JobConfig:
        if not self.text:
            raise ValueError("give at least one --text NAME=PATH")
        for name, paths in self.text.items():
            _check_domain(name, paths, "--text")
        lrs = sorted(self.lrs)
        if len(set(lrs)) != len(lrs):
            raise ValueError(f"--lrs: each LR once (got {self.lrs})")
        if len(set(lrs)) < 3 or any(v <= 0 for v in lrs) or lrs[-1] < 10 * lrs[0] * (1 - 1e-9):
            raise ValueError(f"--lrs: give at least 3 distinct LRs > 0 spanning at least 10x (got {self.lrs})")
        if self.batch_tokens % self.seq_len:
            raise ValueError(f"--batch-tokens {self.batch_tokens} is not a multiple of --seq-len {self.seq_len}")
        if isinstance(self.cpu_threads, int) and self.cpu_threads <= 0:
            raise ValueError("cpu_threads: must be > 0, auto or null")
        return self


def _check_domain(name: str, paths: list[str], flag: str) -> None:
    if not name or "/" in name or name.startswith(".") or "=" in name:
        raise ValueError(f"{flag} {name}=...: bad domain name (a plain directory name is needed)")
    if not paths or any(not p for p in paths):
        raise ValueError(f"{flag} {name}=: no path given (NAME=PATH[,PATH...])")


# the old text's loss may rise this much by default: a bound, not a measurement; bench/results/adapt.md did not pin
# it (the best candidate kept every bound there, and 512 validation tokens a domain measure forgetting to +-0.1)
DEFAULT_MAX_FORGETTING = 0.05
# beta of the best max LR's fall with the horizon, LR* ~ horizon^-beta (Bjorck et al. 2024): the least-squares fit
# through the origin of log(probe-best LR / full-budget-best LR) on log(run steps / probe steps) over all five cells
# of bench/results/adapt.md (0.1183; bench/adapt.py `horizon_fit`). A first fit on three cells, 0.2, chose worse than
# no correction on the two cells held out from it (0.028 and 0.064 nats above the best against 0.022 and 0.009): at
# 0.12 the default LRs (3x apart) do not move at that bench's probe / run ratios, so there it equals no correction
DEFAULT_HORIZON_EXPONENT = 0.12


class AdaptConfig(JobConfig):
    """`warmstart adapt`: continued pre-training of a checkpoint on new text, its max LR and replay share chosen
    by probes on that text (recipes/jobs/adapt.py)."""

    old: dict[str, list[str]] = Field(default_factory=dict, description="text the model must not forget")
    replay: list[float] = Field([0.0, 0.05, 0.25], description="candidate replay shares of old text (with --old)")
    max_forgetting: float | None = Field(
        None, ge=0.0, description="the most the old text's loss may rise, nats (default 0.05 with --old)"
    )
    horizon_exponent: float = Field(
        DEFAULT_HORIZON_EXPONENT, ge=0.0, le=1.0,
        description="beta of the probes' horizon correction, LR* ~ horizon^-beta (0: none; recipes/jobs/probes.py)"
    )

    @model_validator(mode="after")
    def _check_adapt(self) -> AdaptConfig:
        for name, paths in self.old.items():
            _check_domain(name, paths, "--old")
        both = sorted(set(self.text) & set(self.old))
        if both:
            raise ValueError(f"domain {both[0]!r} is both --text and --old; name them apart")
        if self.max_forgetting is not None and not self.old:
            raise ValueError("--max-forgetting needs --old NAME=PATH: forgetting is measured on the old text")
        if not self.replay or any(not 0.0 <= r < 1.0 for r in self.replay) or len(set(self.replay)) != len(self.replay):
            raise ValueError(f"--replay: distinct shares in [0, 1) needed (got {self.replay})")
        if not self.old and sorted(self.replay) != sorted(type(self).model_fields["replay"].default):
            raise ValueError("--replay needs --old NAME=PATH: replay mixes in old text")
        return self

    @property
    def forgetting_bound(self) -> float | None:
        """The bound the choice keeps (None without --old: forgetting cannot be measured)."""
        if not self.old:
            return None
        return DEFAULT_MAX_FORGETTING if self.max_forgetting is None else self.max_forgetting


class DeriveConfig(JobConfig):
    """`warmstart derive`: a smaller model of N of the checkpoint's blocks (the block search on a sample of the
    text), its LR chosen by probes, trained and compared with the checkpoint (recipes/jobs/derive.py)."""

    layers: int = Field(..., gt=0, description="blocks of the smaller model")
    lrs: list[float] = Field([3e-4, 1e-3, 3e-3], description="candidate max LRs (at least 3, spanning >= 10x)")
    distill: bool = Field(False, description="train against the checkpoint's next-token distribution")
    until_reference: bool = Field(False, description="Inheritune v2: +2 blocks per round until the checkpoint's loss")
    sample_tokens: int = Field(16384, gt=0, description="train tokens the block search measures on (charged)")


# ----------------------------------------------------------------------------------------------- mixture (DDO)
class DDOConfig(Section):
    """`warmstart mixture ddo`: AutoScale's Direct Data Optimization with small proxy runs at one token budget.

    The proxy recipe's token budget (train.tokens, or steps x batch_tokens) is the budget N; its data.weights must
    be empty (DDO sets them per run). See warmstart.recipes.autoscale for how multipliers map to tokens.
    """

    name: str
    out_dir: str = "mixtures"
    proxy: Recipe = Field(..., description="the proxy model's train recipe; its name and out_dir are set per run")
    domains: list[str] | None = Field(None, description="domains to mix (default: every domain in data.dir)")
    base_weights: dict[str, float] = Field(default_factory=dict, description="the base mixture (default uniform)")
    multipliers: list[float] = Field([0.2, 3.0], description="per-domain perturbations of the base amount")
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="domain -> [min weight, max weight] of the optimum"
    )
    max_epochs: float | None = Field(None, gt=0.0, description="cap: a domain's optimum <= its tokens x this")
    target: Literal["avg"] | dict[str, float] | list[str] = Field(
        "avg", description="avg over eval domains | {domain: weight} | [domains] (their average)"
    )

    @model_validator(mode="after")
    def _check(self) -> DDOConfig:
        if self.proxy.data.weights or self.proxy.data.weights_from:
            raise ValueError("proxy.data.weights: DDO sets the proxy weights; give base_weights instead")
        if len(self.multipliers) < 2:
            raise ValueError("multipliers: give at least two (3 points per domain with the base run)")
        if any(x <= 0 or x == 1 for x in self.multipliers) or len(set(self.multipliers)) != len(self.multipliers):
            raise ValueError(f"multipliers: must be distinct, > 0 and != 1 (got {self.multipliers})")
        for k, w in self.base_weights.items():
            if w <= 0:
                raise ValueError(f"base_weights.{k}: must be > 0 (every mixed domain needs a base amount)")
        for k, (lo, hi) in self.bounds.items():
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"bounds.{k}: need 0 <= min <= max <= 1 (got [{lo}, {hi}])")
        if isinstance(self.target, dict) and (not self.target or any(w < 0 for w in self.target.values())):
            raise ValueError("target: a weighted target needs non-negative weights, at least one")
        if isinstance(self.target, list) and not self.target:
            raise ValueError("target: list at least one domain")
        return self

    @property
    def mixture_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# ----------------------------------------------------------------------------------------------- loading
M = TypeVar("M", bound=BaseModel)


def _format_error(err: ValidationError, source: str, set_keys: list[str] | None = None,
                  names: dict[str, str] | None = None) -> str:
    """One line: where the value came from (the file, or `--set KEY` when a command-line override put it
    there), dotted key path (or the command-line flag `names` maps it to), what is wrong."""
    parts: list[tuple[str, str]] = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        loc = (names or {}).get(loc, loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        origin = next((f"--set {k}" for k in set_keys or [] if loc and (
            loc == k or loc.startswith(k + ".") or k.startswith(loc + "."))), source)
        same = origin == f"--set {loc}"  # `--set train.stepz: unknown key`, not the key twice
        parts.append((origin, f"{loc}: {msg}" if loc and not same else msg))
    if len({o for o, _ in parts}) == 1:
        return f"{parts[0][0]}: " + "; ".join(m for _, m in parts)
    return "; ".join(f"{o}: {m}" for o, m in parts)


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set tree[a][b][c] = value for key 'a.b.c', creating sections as needed."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"--set {key}: '{p}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def split_assignment(item: str, flag: str, example: str) -> tuple[str, str]:
    """`a.b.c=value` -> ("a.b.c", "value"), or a one-line error naming `flag` and showing `example`."""
    if "=" not in item:
        raise UserError(f"{flag} {item}: expected {example}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"{flag} {item}: bad key {key!r}")
    return key, raw


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping key written twice (YAML requires unique keys; PyYAML would keep the last one silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key written twice in one mapping.

    `weights: {prose: 0.9, code: 0.1, prose: 0.0}` or a `train:` section written twice is ambiguous; PyYAML
    resolves it by a silent last-one-wins rule. Keys brought in by a merge (`<<: *base`) may still be overridden.
    """

    def construct_document(self, node):
        _check_unique_keys(node, [], set())
        return super().construct_document(node)


def _check_unique_keys(node, path: list[str], visited: set[int]) -> None:
    """Raise DuplicateKeyError naming the key's dotted path (`domains.prose`) for a key written twice in one
    mapping, anywhere under `node` (block or flow style); merged keys (`<<: *base`) may be overridden."""
    if id(node) in visited:  # an alias: its node was checked where the anchor is
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # a complex key: the constructor says what is wrong
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            dotted = ".".join([*path, key_node.value])
            if key in seen:
                first = seen[key]
                lines = f"line {line}" if first == line else f"lines {first} and {line}"
                problem = f"key {dotted!r} written twice ({lines}); keep one"
                raise DuplicateKeyError(None, None, problem, key_node.start_mark)
            seen[key] = line
            _check_unique_keys(value_node, [*path, key_node.value], visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, [*path, str(i)], visited)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, except that a mapping key written twice raises `DuplicateKeyError` (a `yaml.YAMLError`).
    Every recipe, override, saved config and corpus file warmstart reads goes through this."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def apply_overrides(tree: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` strings in order; values are parsed as YAML (so 3e-4, true, [1, 2] are typed).

    A value whose mapping repeats a key is refused in one line. Code may layer overrides (a later one of the same
    key wins); what a user typed is checked with `check_unique_overrides` first."""
    tree = copy.deepcopy(tree)
    for item in overrides or []:
        key, raw = split_assignment(item, "--set", "KEY=VALUE, e.g. --set schedule.max_lr=3e-4")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except DuplicateKeyError as e:
            raise UserError(f"--set {item}: {e.problem}") from None
        except yaml.YAMLError:
            value = raw
        set_dotted(tree, key, value)
    return tree


def check_unique_overrides(overrides: list[str] | None) -> None:
    """A key set twice on one command line (`--set train.steps=2 --set train.steps=4`, or a flag and a `--set`
    of the same key) is refused in one line: which one was meant is unknowable."""
    given: dict[str, str] = {}
    for item in overrides or []:
        key, raw = split_assignment(item, "--set", "KEY=VALUE, e.g. --set schedule.max_lr=3e-4")
        if key in given:
            raise UserError(f"--set {key}: given twice ({given[key]!r} and {raw!r}); keep one")
        given[key] = raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        tree = load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as e:
        raise UserError(f"{path}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of sections, got {type(tree).__name__}")
    return tree


def validate(model: type[M], tree: dict, source: str = "recipe", names: dict[str, str] | None = None) -> M:
    """`model` from `tree`, or UserError in one line; `names` maps a key to the flag a command took it from."""
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise UserError(_format_error(e, source, names=names)) from None


def recipe_path(path: str | Path) -> Path:
    """`path` when it exists; otherwise, when it names a recipe shipped with warmstart (`recipes/NAME`, the
    paths docs/ uses, or a bare NAME; `warmstart.examples`), that packaged copy, said in one line on stderr, so
    the walkthrough runs from any directory. Anything else is returned as given (read_yaml then says 'not found')."""
    p = Path(path)
    if p.exists():
        return p
    from warmstart import examples
    from warmstart.errors import warn

    packaged = examples.find(p)
    if packaged is None:
        return p
    name = packaged.relative_to(examples.ROOT).as_posix()
    warn(f"{path}: not here; using the copy shipped with warmstart (`warmstart recipe copy {name}` to edit it)")
    return packaged


def load(model: type[M], path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> M:
    """Read a YAML recipe (or start from `base`; a packaged one by name: `recipe_path`), apply the command
    line's `--set` overrides (each key once), validate into `model`."""
    check_unique_overrides(overrides)
    label = "recipe"
    if path is not None:
        given, path = path, recipe_path(path)
        # a packaged copy is named as the user named it (the note before said which file that is)
        label = str(path) if Path(given) == path else f"{given} (the copy shipped with warmstart)"
    tree = read_yaml(path) if path is not None else dict(base or {})
    tree = apply_overrides(tree, overrides)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        keys = [split_assignment(o, "--set", "")[0] for o in overrides or []]
        raise UserError(_format_error(e, label, keys)) from None


# the keys of a recipe that name files or directories (each may also be a hub name, left as it is)
PATH_KEYS = ("data.dir", "data.weights_from", "init.from", "distill.teacher", "model.tokenizer", "model.config",
             "reference.from")


def absolute_paths(tree: dict, base: str | Path | None = None) -> dict:
    """A copy of a recipe tree whose `PATH_KEYS` that name an existing relative path (from `base`, default the
    working directory) are absolute, so that what a run records (config.yaml) reads the same from any directory
    a later command is started in; hub names and absolute paths stay as they are."""
    import os

    out = copy.deepcopy(tree)
    root = Path(base) if base is not None else Path.cwd()
    for key in PATH_KEYS:
        section, name = key.split(".")
        node = out.get(section)
        value = node.get(name) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute() and (root / value).exists():
            node[name] = os.path.abspath(root / value)
    return out


def with_absolute_paths(cfg: M) -> M:
    """`cfg` (a Recipe or another recipe model) with `absolute_paths` applied; the same object when none changes."""
    tree = cfg.model_dump(mode="json", by_alias=True)
    fixed = absolute_paths(tree)
    return cfg if fixed == tree else type(cfg).model_validate(fixed)


def to_yaml(cfg: BaseModel) -> str:
    """The fully resolved recipe, as written into a run directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> Recipe:
    return load(Recipe, path, overrides, base)
