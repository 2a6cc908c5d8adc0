"""How a model is laid out over the processes, kept apart from the loop and the model (torchtitan's `parallelize`).

The loop calls `parallelize`, `gradient_sync`, `unwrap`, `full_value` and `full_state_dict`; the model code is
never touched (the process group itself is `warmstart.runtime.distributed`). `train.parallel` chooses the
layout under torchrun:

- `ddp`: every process holds the whole model, gradients are all-reduced (DistributedDataParallel).
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) on each transformer block, then on the root (embeddings,
  final norm, head): parameters, gradients and optimizer states are sharded over the processes, each block's
  parameters all-gathered for its forward and backward only (Zhao et al. 2023, "PyTorch FSDP"; the per-block
  wrapping of torchtitan). On CUDA with bf16 precision the blocks compute in bf16 and reduce gradients in fp32.

One process (`WORLD_SIZE` 1) runs the plain model under either choice.
"""

from __future__ import annotations

import contextlib

import torch

from warmstart.errors import UserError
from warmstart.models.surgery import find_blocks, layer_count
from warmstart.runtime.distributed import Dist


def parallelize(model: torch.nn.Module, d: Dist, parallel: str = "ddp", bf16: bool = False) -> torch.nn.Module:
    """Place `model` on `d.device` and lay it out over the processes; returns the module to run forward on.

    parallel: "ddp" (a DistributedDataParallel wrapper) or "fsdp" (the model itself, sharded in place: its
    parameters become DTensors, so build the optimizer on them afterwards). With one process the model is only
    moved. `bf16` (FSDP on CUDA only): parameters all-gathered in bf16, gradients reduced in fp32.
    Raises UserError when the model has no list of `num_hidden_layers` blocks to shard.
    """
    if not d.enabled:
        return model.to(d.device)
    if parallel == "fsdp":
        return _fully_shard(model, d, bf16)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.local_rank] if d.device.type == "cuda" else None
    # gradients live in DDP's communication buckets instead of beside them: 4 bytes per parameter less
    return DDP(model.to(d.device), device_ids=ids, gradient_as_bucket_view=True)


def _fully_shard(model: torch.nn.Module, d: Dist, bf16: bool) -> torch.nn.Module:
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        raise UserError(f"train.parallel: fsdp needs torch >= 2.6 (FSDP2); this is torch {torch.__version__}") from None

    _, _, blocks = find_blocks(model, layer_count(model.config))
    if bf16 and d.device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    # fully_shard moves each block to the device as it shards it, so the whole fp32 model never sits on one GPU
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by the backward: keep them gathered (torchtitan)
        fully_shard(block, mp_policy=policy, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded by `parallelize` (FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2 shards nothing
        return False
    return isinstance(model, FSDPModule)


def gradient_sync(model: torch.nn.Module, sync: bool):
    """Context for one micro-batch's backward: reduce gradients over the processes only when `sync` (the last
    micro-batch of a step); earlier ones accumulate locally (DDP `no_sync`, FSDP `set_requires_gradient_sync`)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP):
        return contextlib.nullcontext() if sync else model.no_sync()
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a DDP wrapper (an FSDP model is its own, sharded in place)."""
    return getattr(model, "module", model)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly sharded one (e.g. `clip_grad_norm_`'s total norm of DTensor gradients)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Rank 0's full, unsharded CPU state dict of a sharded model (a collective: every rank calls it; the others
    get an empty dict); None for an unsharded model, whose own state dict is already whole."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # tied parameters (an output head sharing the embedding) come back as separate copies: make them one tensor
    # again, as in the model's own state dict, so the saved checkpoint stores and ties them the same way
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    for names in aliases.values():
        for name in names[1:]:
            if names[0] in sd and name in sd:
                sd[name] = sd[names[0]]
    return sd
