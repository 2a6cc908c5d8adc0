"""The peak memory a command will need, forecast before its model is loaded, and the refusal when it will not fit.

A user should learn that a run does not fit from one line at its start, not from the out-of-memory killer minutes
in. The forecast adds, per process (bytes):
- runtime: this process's resident memory when the forecast is made (Python, torch, transformers, the data index);
- weights: every parameter at the dtype it is held in (float32 master weights; a bf16 teacher on CUDA: 2 B);
  under FSDP a process holds 1/N of them: it starts on the meta device and reads only its shards from the
  checkpoint's safetensors files (a checkpoint without them is built whole first, `from_pretrained`);
- gradients (4 B per trainable parameter, 1/N under FSDP) and AdamW's two float32 moments (8 B, 1/N under FSDP);
- activations: the live tensors of one micro-batch's forward and backward through the backbone, found by running
  the model's own forward and backward on the meta device (no memory, no arithmetic) under a dispatch mode that
  adds up every tensor while it is alive -- so activation checkpointing, grouped-query attention, the family's MLP
  and fused attention (which keeps q, k, v, the output and its log-sum-exp, not the T x T scores) are counted as
  the model really runs them; on CUDA with bf16 autocast the backbone runs in bf16;
- the loss's head (models/loss.py): one block of float32 logits (at most 256 MiB), the hidden-state gradient
  (tokens x d) and the output weight's gradient (vocabulary x d), formed in the forward pass; distillation keeps
  six such blocks (models/distill.py) and the teacher's final hidden states;
- evaluation: the same meta forward without autograd at eval.batch_size x seq_len, plus one logits block;
- a distillation teacher: its weights and its forward (no autograd) per micro-batch.
Mixed into a peak: max(end of forward, backward, evaluation between steps), each over what persists (weights,
AdamW, gradients while micro-batches accumulate).

Not counted: the allocator's slack (glibc keeps freed pages; `train.keep_heap` more so), pages of token shards the
sampler has touched (file-backed, reclaimable), CUDA's context (about 0.5 GB per GPU, added on CUDA).
bench/results/memory-forecast.md measures the forecast against `/usr/bin/time -v`.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from warmstart.errors import UserError
from warmstart.models.loss import BLOCK_BYTES, block_rows

GB = 1e9
CUDA_CONTEXT = 0.5 * GB  # the CUDA runtime and its kernels, per GPU process (measured on H100s: 0.4-0.6 GB)
SKIP_ENV = "WARMSTART_SKIP_MEMORY_CHECK"
FIXED_PARTS = {"runtime", "weights", "AdamW", "teacher", "whole model before sharding", "reference",
               "the cut's weights", "the cut, serialised", "CUDA context"}
SKIP_FLAG = "--skip-memory-check"


# ------------------------------------------------------------------------------------------ meta simulation
class _LiveBytes(TorchDispatchMode):
    """Adds up the bytes of every storage an op creates while a tensor refers to it; `peak` is the most at once."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage id -> [bytes, tensors referring to it]
        self.now = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.now -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.live:
                self.live[key][1] += 1
            else:
                self.live[key] = [storage.nbytes(), 1]
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)
            weakref.finalize(t, self._release, key)
        return out


def _fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
    """On the meta device torch picks SDPA's math path (it keeps the T x T scores); CPU and CUDA run a fused
    kernel that keeps only q, k, v, the output and the log-sum-exp. The meta pass calls the fused op itself."""
    out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
    return out


@contextlib.contextmanager
def _meta_attention():
    """Fused attention on the meta device; and transformers' check for packed sequences in the position ids (a
    data-dependent `.all()`, which meta tensors cannot answer) gives what it gives for one sequence per row."""
    import transformers.masking_utils as masking

    original, packed = F.scaled_dot_product_attention, getattr(masking, "find_packed_sequence_indices", None)
    F.scaled_dot_product_attention = _fused_attention
    if packed is not None:
        masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        if packed is not None:
            masking.find_packed_sequence_indices = packed


def meta_model(config, objective: str = "causal", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model of `config` on the meta device: its parameters have shapes and dtypes but no memory. Built from a
    copy: `from_config` records its dtype in the config it is given, which the caller may load with later."""
    import copy

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(copy.deepcopy(config), dtype=dtype)


@dataclass
class PassBytes:
    forward: int  # most bytes alive at once up to the end of the forward (activations kept for the backward)
    total: int  # most bytes alive at once over the forward and the backward (gradients of parameters included)


def backbone_pass(model: torch.nn.Module, batch: int, seq_len: int, train: bool,
                  checkpointing: bool = False, dtype: torch.dtype | None = None) -> PassBytes:
    """Bytes alive in one pass of `model`'s backbone (no output layer: the blockwise loss is counted apart) over a
    (batch, seq_len) batch, simulated on the meta device. `model` must be a `meta_model`; `dtype`: the autocast
    dtype the backbone runs in (None: its weights' dtype). Where a family's forward asks the meta device for a
    value (a data-dependent check), `rule_of_thumb` stands in."""
    try:
        return _simulate(model, batch, seq_len, train, checkpointing, dtype)
    except Exception:  # noqa: BLE001 - a family whose forward meta tensors cannot run: estimate by rule instead
        for p in model.parameters():
            p.grad = None
        return rule_of_thumb(model, batch, seq_len, train, checkpointing, dtype)


def rule_of_thumb(model, batch: int, seq_len: int, train: bool, checkpointing: bool = False,
                  dtype: torch.dtype | None = None) -> PassBytes:
    """Activations by rule where the meta pass cannot run: per token and block, 12 hidden + 6 FFN values kept for
    the backward (within 15% of the meta pass on LLaMA blocks with fused attention; Korthikanti et al. 2022 count
    34 hidden-widths of 16-bit values for GPT blocks with 4x FFN), the block's input alone under checkpointing;
    without autograd one block's 4 hidden + 3 FFN values live at once."""
    c = model.config
    h = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0)
    ffn = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * h
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 1)
    size = torch.tensor([], dtype=dtype).element_size() if dtype is not None else 4
    tokens = batch * seq_len
    if not train:
        live = tokens * size * (4 * h + 3 * ffn)
        return PassBytes(live, live)
    per_block = (2 * h) if checkpointing else (12 * h + 6 * ffn)
    forward = tokens * layers * size * per_block + tokens * size * (12 * h + 6 * ffn) * checkpointing
    grads = 4 * sum(p.numel() for p in model.parameters())
    return PassBytes(int(forward), int(forward + grads))


def _simulate(model, batch, seq_len, train, checkpointing, dtype) -> PassBytes:
    backbone = model.base_model
    if checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train(train)
    x = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    mode = _LiveBytes()
    grad = contextlib.nullcontext() if train else torch.no_grad()
    cast = torch.autocast("cpu", dtype=dtype) if dtype not in (None, torch.float32) else contextlib.nullcontext()
    with _meta_attention(), mode, grad, cast:
        no_cache = {"use_cache": False} if hasattr(model.config, "use_cache") else {}  # models/build.no_kv_cache
        hidden = backbone(input_ids=x, **no_cache)[0]
        forward = mode.peak
        if train:
            hidden.float().sum().backward()
    for p in model.parameters():
        p.grad = None
    return PassBytes(forward, mode.peak)


# ------------------------------------------------------------------------------------------ the forecast
@dataclass
class Forecast:
    """A command's expected peak, per process, by term (bytes), and where it must fit."""

    what: str  # the command, e.g. "train", "eval"
    parts: dict[str, float]
    where: str = "host"  # "host" or "GPU"
    processes: int = 1  # processes sharing this host (torchrun's local world size)
    lower: list[str] = field(default_factory=list)  # the settings to lower, most effective first
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def fixed(self) -> float:
        """What no batch or sequence setting changes: the runtime, the weights, AdamW, a teacher, a reference."""
        return float(sum(v for k, v in self.parts.items() if k in FIXED_PARTS))

    def line(self) -> str:
        terms = ", ".join(f"{k} {v / GB:.2f}" for k, v in self.parts.items() if v >= 0.005 * GB)
        per = f" per process x {self.processes} on this host" if self.processes > 1 else ""
        note = f"; {'; '.join(self.notes)}" if self.notes else ""
        return f"memory: {self.what} expects a peak of {self.total / GB:.2f} GB {self.where} memory{per} ({terms} GB){note}"


def rss_now() -> int:
    """This process's resident set (bytes), from /proc/self/status; 0 where /proc is not there."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def host_available() -> float | None:
    """Bytes this process could still take: MemAvailable, capped by a cgroup (v2 or v1) limit. None: unknown."""
    avail = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            raw = Path(limit_file).read_text(encoding="ascii").strip()
            if raw != "max" and int(raw) < 1 << 60:
                room = int(raw) - int(Path(usage_file).read_text(encoding="ascii").strip())
                avail = room if avail is None else min(avail, room)
            break
    return float(avail) if avail is not None else None


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "") not in ("", "0")


def verdict(forecast: Forecast, available: float | None = None) -> str | None:
    """The refusal line when the forecast exceeds what the host (or GPU) has, else None.

    The host's room is what it has available now plus what this process already holds (the forecast counts it);
    the processes of a torchrun on this host share it. `available`: the room in bytes where the caller knows it
    (a GPU's free memory). `--skip-memory-check` (WARMSTART_SKIP_MEMORY_CHECK=1) runs anyway.
    """
    if available is None:
        free = host_available() if forecast.where == "host" else None
        if free is None:
            return None
        available = free + rss_now() * forecast.processes
    need = forecast.total * forecast.processes
    if need <= available:
        return None
    if skip_requested():
        print(f"memory: {need / GB:.2f} GB > {available / GB:.2f} GB available; running anyway ({SKIP_FLAG})",
              flush=True)
        return None
    head = (f"memory: {forecast.what} needs about {need / GB:.2f} GB of {forecast.where} memory but "
            f"{available / GB:.2f} GB is available")
    fixed = forecast.fixed * forecast.processes
    if fixed > available or not forecast.lower:  # no batch setting can help
        where = ("train.parallel: fsdp over more processes or GPUs, " if forecast.what == "train" else "")
        return (f"{head}, and the model alone (weights, optimizer state, teacher or reference) takes "
                f"{fixed / GB:.2f} GB; use {where}a smaller model or a machine with more memory, or pass "
                f"{SKIP_FLAG} if you know better")
    return f"{head}; lower {', '.join(forecast.lower)}, or pass {SKIP_FLAG} if you know better"


def check(forecast: Forecast, say: bool = True, available: float | None = None) -> None:
    """Print the forecast's line (when `say`), then raise UserError with `verdict`'s line when it does not fit."""
    if say:
        print(forecast.line(), flush=True)
    line = verdict(forecast, available)
    if line:
        raise UserError(line)


def _param_bytes(model: torch.nn.Module, dtype_bytes: int | None = None) -> tuple[int, int]:
    """(bytes of every distinct parameter, count of distinct parameters): tied weights once."""
    seen = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    n = sum(seen.values())
    return n * (dtype_bytes or 4), n


def _head(model: torch.nn.Module) -> tuple[int, int]:
    """(vocabulary rows, hidden width) of the output layer."""
    w = model.get_output_embeddings().weight
    return int(w.shape[0]), int(w.shape[1])


def loss_head_bytes(vocab: int, width: int, tokens: int, train: bool, buffers: int = 1) -> float:
    """The blockwise loss's own memory (models/loss.py, models/distill.py): `buffers` float32 (rows, vocab) logits
    blocks (rows: min(tokens, 256 MiB / buffers / 4 V)), the selected hidden rows (tokens x width), and when
    training the hidden-state gradient (tokens x width) and the output weight's gradient (vocab x width)."""
    rows = min(tokens, block_rows(vocab, BLOCK_BYTES // buffers))
    out = buffers * rows * vocab * 4 + tokens * width * 4
    if train:
        out += tokens * width * 4 + vocab * width * 4
    return float(out)


def eval_bytes(model: torch.nn.Module, batch: int, seq_len: int, dtype: torch.dtype | None = None) -> float:
    """One evaluation batch without autograd: the backbone's live tensors and the loss head's block."""
    vocab, width = _head(model)
    return backbone_pass(model, batch, seq_len, train=False, dtype=dtype).total + loss_head_bytes(
        vocab, width, batch * seq_len, train=False)


def forecast_forward(what: str, model: torch.nn.Module, batch: int, seq_len: int, lower: list[str],
                     weights_bytes: float | None = None, extra: dict[str, float] | None = None) -> Forecast:
    """A command that only runs forward passes (eval, quality score, format probe, the block search)."""
    wb = _param_bytes(model)[0] if weights_bytes is None else weights_bytes
    parts = {"runtime": float(rss_now()), "weights": float(wb), **(extra or {}),
             f"forward ({batch} x {seq_len})": eval_bytes(model, batch, seq_len)}
    return Forecast(what, parts, lower=lower)


def forecast_train(model: torch.nn.Module, *, micro: int, seq_len: int, accum: int, checkpointing: bool,
                   parallel: str, world: int, local_world: int, eval_batch: int, eval_seq: int, cuda: bool,
                   bf16: bool, teacher: torch.nn.Module | None = None, what: str = "train",
                   whole_first: bool = False) -> Forecast:
    """The training run's peak per process (see the module docstring). `model`, `teacher`: meta models.
    `whole_first`: under FSDP, each process builds the whole model before sharding it (a checkpoint without
    safetensors files); otherwise a sharded start holds only its shards (models/sharded_load.py)."""
    weights, n = _param_bytes(model)
    shard = world if parallel == "fsdp" else 1
    act_dtype = torch.bfloat16 if (cuda and bf16) else None
    step = backbone_pass(model, micro, seq_len, train=True, checkpointing=checkpointing, dtype=act_dtype)
    vocab, width = _head(model)
    tokens = micro * seq_len
    head = loss_head_bytes(vocab, width, tokens, train=True, buffers=6 if teacher is not None else 1)
    grads = 4.0 * n / shard
    parts = {"runtime": 0.0 if cuda else float(rss_now()), "weights": weights / shard, "AdamW": 8.0 * n / shard}
    teacher_hidden = 0.0
    teacher_pass = 0.0
    if teacher is not None:
        parts["teacher"] = _param_bytes(teacher, 2 if (cuda and bf16) else 4)[0] / shard
        teacher_hidden = tokens * _head(teacher)[1] * 4.0
        teacher_pass = backbone_pass(teacher, micro, seq_len, train=False, dtype=act_dtype).total
    held = grads if accum > 1 else 0.0  # gradients are set to None after each step, kept while accumulating
    end_of_forward = held + max(teacher_pass, teacher_hidden + step.forward + head)
    backward = teacher_hidden + step.total + vocab * width * 4.0  # every gradient formed, the head's included
    evaluation = eval_bytes(model, eval_batch, eval_seq, dtype=act_dtype)
    if max(end_of_forward, backward) >= evaluation:
        ck = "on" if checkpointing else "off"
        parts[f"step ({micro} x {seq_len} tokens, checkpointing {ck}: activations, loss, gradients)"] = max(
            end_of_forward, backward)
    else:
        parts[f"evaluation ({eval_batch} x {eval_seq})"] = evaluation
    if (whole_first and parallel == "fsdp" and world > 1
            and weights > sum(v for k, v in parts.items() if k != "runtime")):
        # every process builds the whole model before sharding it (`from_pretrained` on each rank)
        parts = {"runtime": parts["runtime"], "whole model before sharding": float(weights)}
    if cuda:
        parts["CUDA context"] = CUDA_CONTEXT
    lower = ["train.micro_batch_size", "data.seq_len"]
    if not checkpointing:
        lower.append("train.activation_checkpointing: true")
    lower.append("eval.batch_size")
    if parallel != "fsdp" and world > 1:
        lower.append("train.parallel: fsdp")
    return Forecast(what, parts, where="GPU" if cuda else "host", processes=1 if cuda else local_world, lower=lower)


def _dtype_bytes(config) -> int:
    """Bytes per weight of a checkpoint loaded at its own dtype (`dtype="auto"`): its config's dtype, else 4."""
    raw = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(raw, str):
        raw = getattr(torch, raw, None)
    return raw.itemsize if isinstance(raw, torch.dtype) else 4


def check_forward(what: str, src, batch: int, seq_len: int, lower: list[str], device: torch.device | str = "cpu",
                  objective: str = "causal", at_own_dtype: bool = False, extra: dict[str, float] | None = None,
                  say: bool = True, full_logits: int = 0) -> Forecast:
    """Forecast and check a command that loads checkpoint `src` and runs forward passes of (batch, seq_len)
    without autograd (eval, quality score, format probe, the block search); UserError when it does not fit.
    `at_own_dtype`: the weights load at the checkpoint's dtype (inherit), else float32; `extra`: more terms;
    `full_logits`: float32 (batch, seq_len, vocabulary) copies a command holds at once (format probe's
    cross-entropy over the model's own logits: the logits, their log-softmax and a contiguous transpose)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(src))
    except Exception:  # an unreadable config: the load that follows says so in its own words
        return Forecast(what, {})
    model = meta_model(config, objective)
    weights = _param_bytes(model, _dtype_bytes(config) if at_own_dtype else 4)[0]
    cuda = torch.device(device).type == "cuda"
    if full_logits:
        extra = {**(extra or {}), "full logits": float(full_logits * batch * seq_len * _head(model)[0] * 4)}
    fc = forecast_forward(what, model, batch, seq_len, lower, weights_bytes=weights, extra=extra)
    available = None
    if cuda:
        fc.parts["runtime"] = 0.0
        fc.parts["CUDA context"] = CUDA_CONTEXT
        fc.where = "GPU"
        available = float(torch.cuda.mem_get_info(torch.device(device))[0])
    check(fc, say=say, available=available)
    return fc


def _block_list(model: torch.nn.Module, k: int) -> torch.nn.ModuleList | None:
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == k:
            return m
    return None


def check_cut(config, k: int, kept: int, say: bool = True, search: tuple[int, int] | None = None,
              whole: bool = False) -> Forecast:
    """Forecast and check `inherit`: only the kept tensors are read from the reference's safetensors files, at the
    checkpoint's dtype (`surgery.read_cut`), and the written cut is reloaded to verify it after the in-memory copy
    is dropped, so the peak is the cut (`kept` of `k` blocks) once. `whole`: a reference without safetensors
    files (a hub name, pytorch_model.bin) is loaded whole first. `search`: (batch, seq_len) of the block search's
    forward passes in float32 (angular, auto), which read the whole reference. UserError when it does not fit."""
    model = meta_model(config)
    per = _dtype_bytes(config) if search is None else 4
    ref = _param_bytes(model, per)[0]
    blocks = _block_list(model, k)
    block_bytes = _param_bytes(blocks, per)[0] if blocks is not None else 0
    cut = ref - block_bytes * (k - kept) / max(k, 1)
    parts = {"runtime": float(rss_now())}
    if search is None:
        parts.update({"the reference, loaded whole": float(ref)} if whole else {"the cut's weights": float(cut)})
    else:
        parts.update({"reference": float(ref),
                      f"block search forward ({search[0]} x {search[1]})": eval_bytes(model, *search)})
    # `inherit`, and `grow` through it: named by what it does, with the settings of both
    fc = Forecast("cutting the reference", parts,
                  lower=["the blocks kept (inherit --layers, grow.start_layers)"] if search is None else
                  ["the block search's window length (inherit --seq-len)"])
    check(fc, say=say)
    return fc
