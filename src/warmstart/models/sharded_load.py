"""Starting a sharded (FSDP) model from a checkpoint without any process holding the whole model.

`from_pretrained` on every process builds the whole model in host memory before `fully_shard` keeps 1/N of it:
N processes of a node pay N whole models at start-up (an 8B model on 8 GPUs: 8 x 32 GB). Here (as torchtitan and
accelerate's `cpu_ram_efficient_loading` do) the model is built on the meta device (shapes, no memory), sharded,
then each process allocates only its own shards (`to_empty`) and reads into them only the rows of each tensor it
holds, straight from the checkpoint's safetensors files (`weight_files.WeightFiles`): a bf16 checkpoint is read
as bf16 and converted one shard at a time. Tied weights are one parameter before sharding and stay one; the
non-persistent buffers (a rotary embedding's `inv_freq`, which no checkpoint stores) are computed again by the
model's own initialiser, as `from_pretrained` does after its own meta-device build.

`MetaStart.plan` says whether a checkpoint can start this way: every tensor the model holds must be in its
safetensors files, under the name transformers stores it by (a renamed weight, e.g. GPT-NeoX's head, is read by
its stored name); a family whose stored tensors are fused or split from the model's (mixture-of-experts), or a
checkpoint without safetensors files, loads the whole way, as before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from warmstart.models.weight_files import (
    WeightFiles,
    generation_config_from,
    retie,
    stored_names,
    tied_aliases,
)


@dataclass
class MetaStart:
    """A model on the meta device and the checkpoint files its tensors are read from, once it is sharded."""

    model: torch.nn.Module
    files: WeightFiles
    src: Path
    names: dict[str, str]  # state-dict key -> the tensor's name in the files

    @classmethod
    def plan(cls, auto, config, src, dtype: torch.dtype) -> MetaStart | None:
        """The meta model of `config` (class `auto`) at `dtype`, when every tensor it holds is in `src`'s
        safetensors files; None otherwise (the caller loads the whole way)."""
        files = WeightFiles.find(src)
        if files is None:
            return None
        with torch.device("meta"):
            try:
                model = auto.from_config(copy.deepcopy(config), dtype=dtype)
            except Exception:  # noqa: BLE001 - a model only its own loader builds: the whole way
                return None
        tied = tied_aliases(model)
        state = {k: v for k, v in model.state_dict().items() if k not in tied}
        names = stored_names(model, state)
        if names is None:
            return None
        for k, v in state.items():
            if names[k] not in files or files.shape(names[k]) != list(v.shape):
                return None
        generation_config_from(model, src)
        return cls(model, files, src, names)

    def materialise(self, model: torch.nn.Module, device: torch.device) -> None:
        """`model` (this plan's model, sharded in place by `fully_shard`) given memory for its own shards only,
        filled from the checkpoint; its non-persistent buffers computed again."""
        tied = tied_aliases(model)
        model.to_empty(device=device)  # a new tensor per module: a tied pair becomes two, made one again
        retie(model, tied)
        _init_buffers(model)
        with torch.no_grad():
            for name, t in model.state_dict(keep_vars=True).items():
                if name in tied:
                    continue
                _fill(t, self.files, self.names[name])


def _init_buffers(model: torch.nn.Module) -> None:
    """Recompute the non-persistent buffers `to_empty` left uninitialised, with the model's own per-module
    initialiser (`_init_weights`), on the modules that own them (their parameters are filled afterwards)."""
    owners = {}
    for module in model.modules():
        if any(name in module._non_persistent_buffers_set for name, _ in module.named_buffers(recurse=False)):
            owners[id(module)] = module
    init = getattr(model, "_init_weights", None)
    with torch.no_grad():
        for module in owners.values():
            if init is not None:
                init(module)


def _shard_rows(t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(this process's local tensor, first row, last row + 1) of `t`: a DTensor sharded on its first dimension
    (FSDP2), or a plain tensor (all its rows)."""
    if not hasattr(t, "to_local"):
        return t, 0, t.shape[0] if t.dim() else 1
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    local = t.to_local()
    start = offset[0] if len(offset) else 0
    return local, start, start + (shape[0] if len(shape) else 1)


def _fill(t: torch.Tensor, files: WeightFiles, name: str) -> None:
    """Copy this process's rows of tensor `name` from the checkpoint into `t` (its dtype: read, then converted)."""
    local, start, stop = _shard_rows(t)
    if local.numel() == 0:
        return
    rows = files.get_rows(name, start, stop, dtype=local.dtype)
    local.copy_(rows.reshape(local.shape))
