"""Resumable checkpoints: written atomically, verified on load, the newest intact one wins.

    checkpoints/step-000500/
        .metadata, __<r>_0.distcp   model and AdamW state through torch.distributed.checkpoint (DCP), each
                                    process writing its own shard; the metadata maps every tensor's pieces
        rng-rank<r>.pt        each rank's torch (and CUDA) RNG state
        state.json            step, tokens, sampler state, metrics.jsonl byte offset, log window, process count
        manifest.json         size and sha256 of every file above; written last, so its presence means complete

The state is taken with `torch.distributed.checkpoint.state_dict.get_state_dict`, keyed by parameter name
whatever the layout, so a checkpoint written by N processes (DDP or FSDP) loads into M processes of either kind,
or into one: DCP re-slices each tensor into the loading layout. Single-process and DDP runs use the same format.

The directory is built as `.tmp-step-000500` and renamed, so a kill at any point leaves no half checkpoint
under a real name; a checkpoint damaged later (truncated file, flipped bytes, no manifest) fails its check and
the previous one is used with a warning. Every process writes its shard into the same directory: on several nodes
`checkpoints/` must be on a filesystem they share.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from warmstart.atomic import write_json
from warmstart.errors import UserError, warn
from warmstart.runtime.distributed import Dist, barrier
from warmstart.signals import pause_point

PREFIX = "step-"


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's `.metadata` is a pickle; a crafted one could run code. Only DCP's own metadata classes, torch
    sizes, dtypes and layouts, and paths may be named in it."""

    _TORCH = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
              ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._TORCH:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.distributed.checkpoint.") and not name.startswith("__"):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


class _SafeReader(dcp.FileSystemReader):
    """A `FileSystemReader` that unpickles `.metadata` with `_MetadataUnpickler`."""

    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """DCP loads non-tensor items (optimizer settings) with `torch.load(weights_only=False)`; check each with
    `weights_only=True` first, which refuses anything but plain data."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)
        value.seek(0)
        super().load_bytes(read_item, value)


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _state_bytes(*trees) -> int:
    """Bytes of every tensor in nested dicts / lists (this rank's share of a checkpoint)."""
    total = 0
    stack = list(trees)
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _disk_errno(e: BaseException) -> int | None:
    """ENOSPC / EDQUOT found in `e`, its causes, or the per-rank failures DCP wraps in a CheckpointException."""
    seen, stack = set(), [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in DISK_ERRNOS:
            return x.errno
        if isinstance(x, CheckpointException):
            stack.extend(exc for exc, _ in x.failures.values())
        stack.extend((x.__cause__, x.__context__))
    return None


def _disk_full(tmp: Path, need: int, final: Path, e: BaseException) -> OSError | None:
    """After a failed checkpoint write: the half-written `tmp` removed, and an OSError (ENOSPC or EDQUOT) naming the
    checkpoint and the space it needs when the disk or the quota cannot hold it (the CLI says it in one line; the run
    resumes from its last whole checkpoint), else None (another failure, raised as it was). torch's writer reports a
    full disk as a RuntimeError from its zip writer ("unexpected pos ..."), not as an OSError, so the free space
    decides too; a quota or inode limit shows as the errno inside DCP's CheckpointException."""
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(tmp.parent).free
    code = _disk_errno(e)
    if code is None and free >= need:
        return None
    what = "the disk quota is used up" if code == errno.EDQUOT else "no space left on the device"
    return OSError(code or errno.ENOSPC, f"{what} for checkpoint {final.name}: it needs about {human_bytes(need)}, "
                   f"{human_bytes(free)} is free; free space and run the same command again: it resumes from the last "
                   "whole checkpoint", str(final))


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every call without a process group; one process is a case warmstart means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def save(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    rank_rngs: list[dict],
    keep: int,
    d: Dist,
) -> Path:
    """Write checkpoint `step` atomically and prune old ones; a collective, called on every rank.

    `model` is the unwrapped (or FSDP-sharded) model, `state` the JSON state (used from rank 0), `rank_rngs` every
    rank's RNG state (gathered on rank 0). Returns the checkpoint's directory.
    """
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if d.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(d)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        with _single_process_quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not d.enabled)
    except (RuntimeError, CheckpointException, OSError) as e:
        full = _disk_full(tmp, _state_bytes(model_sd, optim_sd), final, e)
        if full is None:
            raise
        raise full from e
    barrier(d)  # every shard is written (and fsynced by DCP) before rank 0 seals the directory
    if d.is_main:
        pause_point(f"checkpoint_write:{step}")
        for r, rng in enumerate(rank_rngs):
            torch.save(rng, tmp / f"rng-rank{r}.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        for p in files:
            _fsync(p)
        write_json(tmp / "manifest.json", {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files})
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        prune(root, keep)
    barrier(d)
    return final


def checkpoint_steps(total_steps: int, every: int) -> list[int]:
    """The steps a run of `total_steps` checkpoints at: every `every` steps (0: none) and at its end."""
    return sorted({*(range(every, total_steps + 1, every) if every else ()), total_steps})


def disk_estimate(model: torch.nn.Module, total_steps: int, every: int, keep: int) -> dict:
    """Bytes a run leaves on disk, said before it starts: `keep` (or fewer) checkpoints, each the state dict (a
    tied matrix under both its names, as torch.distributed.checkpoint writes it) and AdamW's two moments, about
    3x the parameters' bytes; plus `final/` (the weights, a tied matrix once).

    Returns {checkpoints (how many stay), checkpoint_bytes (each), final_bytes, total_bytes}, a lower bound: the
    files' headers and RNG state add a fixed few hundred kB (tests/test_checkpoint_safety.py measures both)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    n = min(keep, len(checkpoint_steps(total_steps, every)))
    ckpt = state + moments
    return {"checkpoints": n, "checkpoint_bytes": ckpt, "final_bytes": weights, "total_bytes": n * ckpt + weights}


def human_bytes(n: float) -> str:
    """1.6e9 -> '1.6 GB' (decimal units, as `du --si` and file managers say)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} TB"  # pragma: no cover


def prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoints (a manifest present), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "manifest.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def verify(path: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(manifest, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for v in manifest.values()
    ):
        return "corrupt manifest (not a table of file sizes and checksums)"
    for name, info in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != info["bytes"]:
            return f"{name} truncated ({f.stat().st_size} of {info['bytes']} bytes)"
        if _sha256(f) != info["sha256"]:
            return f"{name} corrupt (checksum mismatch)"
    return None


def scan(root: Path) -> Iterator[tuple[Path, str | None]]:
    """Every checkpoint folder under `root`, newest first, with what is wrong with it (None: intact).

    Verified lazily, one at a time, so a caller that stops at the first intact one reads no older one.
    """
    if not root.is_dir():
        return
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    for path in sorted(found, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True):
        if not (path / "manifest.json").exists():
            yield path, "no manifest.json: incomplete or damaged"
        else:
            yield path, verify(path)


def newest_valid(root: Path) -> Path | None:
    """The newest checkpoint that passes verification; damaged newer ones are skipped with a warning."""
    for path, problem in scan(root):
        if problem is None:
            return path
        warn(f"checkpoint {path} is damaged ({problem}); skipped")
    return None


def _check_format(path: Path) -> None:
    if not (path / ".metadata").is_file() and (path / "model.safetensors").is_file():
        raise UserError(
            f"{path}: a checkpoint of an older warmstart (model.safetensors + optimizer.pt); this version reads "
            "torch.distributed.checkpoint checkpoints only: finish the run with the version that started it"
        )


def load_state(path: Path) -> dict:
    """The checkpoint's state.json. Raises UserError for a checkpoint in the older single-file format."""
    _check_format(path)
    return json.loads((path / "state.json").read_text())


def _load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, weights: bool) -> None:
    """Load the model's weights (if `weights`) and the optimizer's state (if given) into this process's layout.
    The optimizer keeps its own hyperparameters: lr, betas and weight decay come from the recipe, only the
    moments and step counts from the file."""
    _check_format(path)
    if optimizer is None:
        sd = {"model": get_model_state_dict(model)}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)  # initialises AdamW's state (a step at lr 0)
        sd = {"model": model_sd, "optim": optim_sd} if weights else {"optim": optim_sd}
    unsafe = f"{path}: refused to load a checkpoint that names code to run"
    try:
        with open(path / ".metadata", "rb") as f:
            _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{unsafe} ({e})") from None
    try:
        with _single_process_quiet():
            dcp.load(sd, storage_reader=_SafeReader(str(path)), planner=_SafePlanner(),
                     no_dist=not dist.is_initialized())
    except CheckpointException as e:
        if "Weights only load failed" in str(e) or "not allowed in checkpoint metadata" in str(e):
            raise UserError(f"{unsafe} (an optimizer item is not plain data)") from None
        raise
    if weights:
        set_model_state_dict(model, sd["model"])
    if optimizer is not None:
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        set_optimizer_state_dict(model, optimizer, sd["optim"])
        for group, h in zip(optimizer.param_groups, hyper, strict=True):
            group.update(h)


def load_into(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, rank: int) -> None:
    """Restore weights (and AdamW state unless `optimizer` is None) of any layout into `model`'s own layout and
    placement (a collective under torchrun), plus this rank's RNG state when the checkpoint has one for it."""
    _load(path, model, optimizer, weights=True)
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))


def load_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """AdamW's moments and step counts only (re-warming with `init.keep_optimizer`), into any layout.
    Raises UserError when the checkpoint's optimizer state does not fit `model`."""
    try:
        _load(path, model, optimizer, weights=False)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"init.keep_optimizer: optimizer state of {path} does not fit this model ({first})") from None
