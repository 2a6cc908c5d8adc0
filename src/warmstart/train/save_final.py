"""`final/` written from the processes' shards, one safetensors file's worth of tensors at a time.

Gathering a sharded model's whole state dict onto rank 0 to write it costs rank 0 the whole model in host memory
at the end of every run (4 GB per billion fp32 parameters). Here each tensor is gathered when the file it goes
into is written (`DTensor.full_tensor`, a collective every process joins in the same order) and dropped once that
file is on disk, so rank 0 holds at most `train.save_shard_mb` of gathered weights. The files are Hugging Face's
sharded safetensors layout (`model.safetensors.index.json` + `model-0000i-of-0000n.safetensors`, or one
`model.safetensors` when the weights fit one file), which `from_pretrained` reads as it reads its own. Unsharded
models (DDP, one process) are written the same way by rank 0 alone.

Tied weights (a head sharing the embedding's matrix) are stored once, under the name `save_pretrained` keeps (the
first of the tied names, the embedding's), under the names `save_pretrained` stores them by (GPT-NeoX's head as
`embed_out`); config.json records the dtype and architecture as `save_pretrained` does. A family whose stored
tensors are fused or split from its modules' (mixture-of-experts) is gathered whole and written by
`save_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from warmstart.models.build import save_hf
from warmstart.models.weight_files import stored_names, tied_aliases, write_shards
from warmstart.runtime.distributed import Dist
from warmstart.train.parallelize import full_state_dict, is_sharded, unwrap

MB = 1 << 20


def _stored(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """{stored name: tensor (a DTensor shard under FSDP)} of what `save_pretrained` would store, tied duplicates
    left out, under the names it stores them by; None where a stored tensor is not one of the model's (fused or
    split weights)."""
    tied = tied_aliases(model)
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    names = stored_names(model, state)
    return None if names is None else {names[k]: v for k, v in state.items()}


def _write_config(model: torch.nn.Module, tokenizer, out: Path) -> None:
    """config.json (with the weights' dtype and the model's class, as `save_pretrained` records them), the
    generation config of a generating model, and the tokenizer."""
    dtype = next(model.parameters()).dtype
    model.config.dtype = str(dtype).split(".")[1]
    model.config.architectures = [type(model).__name__.removeprefix("FSDP")]
    model.config.save_pretrained(str(out))
    if getattr(model, "can_generate", lambda: False)() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def save_final(model: torch.nn.Module, tokenizer, out: Path | None, d: Dist, shard_mb: float) -> None:
    """Write `model` as a plain Hugging Face checkpoint into `out` (rank 0's directory; None on the others).
    Every process calls it: a sharded model's tensors are gathered one file at a time."""
    model = unwrap(model)
    state = _stored(model)
    if state is None:
        whole = full_state_dict(model)
        if d.is_main:
            save_hf(model, tokenizer, out, state_dict=whole)
        return
    gather = is_sharded(model)
    if not gather and not d.is_main:
        return
    if d.is_main:
        _write_config(model, tokenizer, out)

    def fetch(name: str) -> torch.Tensor | None:
        t = state[name].detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()  # every process takes part; rank 0 keeps the whole tensor
        return t.to("cpu") if d.is_main else None

    sizes = [(k, v.numel() * v.element_size()) for k, v in state.items()]
    write_shards(out if d.is_main else None, sizes, fetch, int(shard_mb * MB))
