"""The process group: torchrun's environment read once, and the few collectives the loop and evaluation need.

`setup` starts the group (nccl on CUDA, gloo on CPU) when `WORLD_SIZE` > 1; every helper is a no-op for one
process, so single-process code calls them unconditionally. How a model is laid out over the processes (DDP,
FSDP2) is `warmstart.train.parallelize`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from warmstart.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Dist:
    """Read torchrun's environment; start a process group (nccl on CUDA, gloo on CPU) when world > 1.

    Raises UserError when `device` is "cuda" and no CUDA device is available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """`t` summed over the processes, in place; returned for chaining."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj, d: Dist) -> list:
    """Every process's `obj`, in rank order (one process: `[obj]`)."""
    if not d.enabled:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def broadcast_object(obj, d: Dist):
    """Rank 0's value on every rank (used for decisions such as 'which checkpoint to resume')."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


# what a collective says when a process it waits on is gone (killed, its node lost): gloo, NCCL, the TCP store
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "remote process exited", "failed to recv", "Socket Timeout")


def lost_peer(e: BaseException) -> str | None:
    """The one line for a collective that failed because another process of the run stopped (a node killed or
    lost); None for any other error, or outside a distributed run."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not isinstance(e, RuntimeError):
        return None
    text = str(e)
    if not (isinstance(e, getattr(dist, "DistError", ())) or any(p in text for p in _PEER_LOST)):
        return None
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    first = first.split("] ", 1)[1] if first.startswith("[") and "] " in first else first  # gloo's source prefix
    first = first.split(". ", 1)[0].rstrip(".")  # gloo goes on with advice to its own developers
    return (f"another process of this distributed run stopped (rank {os.environ.get('RANK', '?')} of "
            f"{os.environ.get('WORLD_SIZE')} saw: {first}); the run directory keeps its newest checkpoint: "
            "start the job again with --resume, on any number of processes")
