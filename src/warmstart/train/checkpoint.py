"""Resumable checkpoints: written atomically, verified on load, the newest intact one wins.

    checkpoints/step-000500/
        model.safetensors     weights (shared tensors stored once)
        optimizer.pt          AdamW state (torch.load(weights_only=True))
        rng-rank<r>.pt        each rank's torch (and CUDA) RNG state
        state.json            step, tokens, sampler state, metrics.jsonl byte offset, log window
        manifest.json         size and sha256 of every file above; written last, so its presence means complete

The directory is built as `.tmp-step-000500` and renamed, so a kill at any point leaves no half checkpoint
under a real name; a checkpoint damaged later (truncated file, flipped bytes) fails its manifest check and the
previous one is used with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from warmstart.atomic import write_json

PREFIX = "step-"


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


def save(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    rank_rngs: list[dict],
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically (called on rank 0 with every rank's RNG state), prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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
    return final


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
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable manifest ({e})"
    for name, info in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != info["bytes"]:
            return f"{name} truncated ({f.stat().st_size} of {info['bytes']} bytes)"
        if _sha256(f) != info["sha256"]:
            return f"{name} corrupt (checksum mismatch)"
    return None


def newest_valid(root: Path) -> Path | None:
    """The newest checkpoint that passes verification; damaged newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"checkpoint {path} is damaged ({problem}); falling back to the previous one", stacklevel=2)
    return None


def load_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def load_into(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, rank: int, device: torch.device
) -> None:
    load_model(model, str(path / "model.safetensors"), device=str(device))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
