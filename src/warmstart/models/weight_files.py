"""A Hugging Face checkpoint's safetensors files, read tensor by tensor (or slice by slice), never whole.

`from_pretrained` reads every tensor of a checkpoint into the model it builds; cutting half of a model's blocks
out of it, or filling one process's shards of it, needs only some of them. A safetensors file is a JSON header
naming each tensor's dtype, shape and byte range, then the bytes: a tensor (or rows of its first dimension) is
read straight from its range into memory of its own, with no memory map left behind, so what a reader holds
follows what it keeps, not the checkpoint's size. One file (`model.safetensors`) and sharded checkpoints
(`model.safetensors.index.json` naming each tensor's file) read the same way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch

from warmstart.errors import UserError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class WeightFiles:
    """The tensors of one checkpoint directory's safetensors files, by name; each file's header read once."""

    def __init__(self, directory: Path, where: dict[str, Path]):
        self.directory = directory
        self.where = where  # tensor name -> the file holding it
        self._headers: dict[Path, tuple[int, dict]] = {}
        self.bytes_read = 0  # tensor bytes read so far (what a sharded start reads: its own shards)

    @classmethod
    def find(cls, src) -> WeightFiles | None:
        """The safetensors weights of checkpoint directory `src`; None where it has none (a hub name, a
        `pytorch_model.bin` checkpoint): the caller loads those the whole way (`from_pretrained`)."""
        if not isinstance(src, Path) or not src.is_dir():
            return None
        index, single = src / INDEX, src / SINGLE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{index}: not a safetensors index (needs a 'weight_map' table); "
                                "re-save the checkpoint with save_pretrained") from None
            return cls(src, {name: src / file for name, file in weight_map.items()})
        if single.is_file():
            files = cls(src, {})
            files.where = dict.fromkeys(files._header(single)[1], single)
            return files
        return None

    def _header(self, path: Path) -> tuple[int, dict]:
        """(where the data starts, {name: {dtype, shape, data_offsets}}) of one safetensors file."""
        cached = self._headers.get(path)
        if cached is None:
            bad = UserError(f"{path}: not a safetensors file (its header does not read); copy the checkpoint again")
            try:
                with open(path, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    if not 2 <= n <= os.fstat(f.fileno()).st_size - 8:  # a length the file cannot hold: garbage
                        raise bad
                    header = json.loads(f.read(n))
                if not isinstance(header, dict):
                    raise bad
            except FileNotFoundError:
                raise UserError(f"{self.directory}: {path.name} is missing ({INDEX} names it); copy the "
                                "checkpoint again") from None
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
                raise bad from None
            header.pop("__metadata__", None)
            cached = self._headers[path] = (8 + n, header)
        return cached

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def _entry(self, name: str) -> tuple[Path, int, torch.dtype, list[int]]:
        path = self.where[name]
        start, header = self._header(path)
        entry = header.get(name)
        if entry is None:
            raise UserError(f"{path}: holds no tensor {name} ({INDEX} says it does); copy the checkpoint again")
        return path, start + entry["data_offsets"][0], _DTYPES[entry["dtype"]], list(entry["shape"])

    def shape(self, name: str) -> list[int]:
        return self._entry(name)[3]

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name)[2]

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name`, read now into memory of its own; converted to `dtype` where given (a bf16 checkpoint into
        a float32 model)."""
        shape = self.shape(name)
        if not shape:  # a scalar
            return self.get_rows(name, 0, 1, dtype).reshape(())
        return self.get_rows(name, 0, shape[0], dtype)

    def get_rows(self, name: str, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows start..stop of tensor `name` (its first dimension), reading only those bytes from the file (no
        memory map: what is read is all this process holds of it)."""
        path, offset, stored, shape = self._entry(name)
        shape = shape or [1]
        start, stop = max(0, min(start, shape[0])), max(0, min(stop, shape[0]))
        out = torch.empty([max(stop - start, 0), *shape[1:]], dtype=stored)
        row_bytes = math.prod(shape[1:]) * out.element_size()
        if out.numel():
            with open(path, "rb") as f:
                f.seek(offset + start * row_bytes)
                got = f.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()))
            self.bytes_read += got
            if got != out.numel() * out.element_size():
                raise UserError(f"{path}: {name} is cut short (the file is truncated); copy the checkpoint again")
        return out if dtype is None or out.dtype == dtype else out.to(dtype)

    def first_float_dtype(self) -> torch.dtype | None:
        """The dtype of the first floating-point tensor (what `dtype="auto"` takes when the config names none)."""
        for name in self.where:
            dtype = self.dtype(name)
            if dtype.is_floating_point:
                return dtype
        return None


# safetensors' dtype names -> torch's
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{state-dict key: the key of the tensor it is tied to} for every tied duplicate (a head sharing the
    embedding's weight); the first name of a tied group (the embedding's) is the one kept."""
    first: dict[int, str] = {}
    out = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(t) in first:
            out[name] = first[id(t)]
        else:
            first[id(t)] = name
    return out


def stored_names(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, str] | None:
    """{state-dict key: the name `save_pretrained` stores that tensor under} for `state` (a model's state dict,
    tied duplicates left out). transformers renames some families' weights between its modules and its files
    (GPT-NeoX's `lm_head` is stored as `embed_out`); a rename maps one to one. None where a stored tensor is made
    of several of the model's or the reverse (fused mixture-of-experts weights): no one-to-one names exist."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers that stores every tensor under its module's name
        return {k: k for k in state}
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    try:
        stored = revert_weight_conversion(model, dict(meta))
    except Exception:  # noqa: BLE001 - a conversion that cannot run on shapes alone: no one-to-one names
        return None
    key_of = {id(t): k for k, t in meta.items()}
    names: dict[str, str] = {}
    for name, t in stored.items():
        k = key_of.get(id(t))
        if k is None or k in names:
            return None
        names[k] = name
    return names if len(names) == len(meta) else None


def retie(model: torch.nn.Module, aliases: dict[str, str]) -> None:
    """Make tied tensors one object again (`tied_aliases` taken before): `load_state_dict(assign=True)` and
    `to_empty` give each module a tensor of its own."""
    for key, target in aliases.items():
        mod_name, _, attr = key.rpartition(".")
        tmod_name, _, tattr = target.rpartition(".")
        setattr(model.get_submodule(mod_name), attr, getattr(model.get_submodule(tmod_name), tattr))


def generation_config_from(model: torch.nn.Module, src) -> None:
    """The checkpoint's generation_config.json on `model`, as `from_pretrained` takes it (a model built from its
    config alone has defaults; saving it writes them)."""
    if not isinstance(src, Path) or not (src / "generation_config.json").is_file():
        return
    if getattr(model, "generation_config", None) is None:
        return
    from transformers import GenerationConfig

    with contextlib.suppress(OSError, ValueError):  # unreadable: from_pretrained keeps the defaults too
        model.generation_config = GenerationConfig.from_pretrained(str(src))


def shard_plan(sizes: list[tuple[str, int]], shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped, in order, into files of at most `shard_bytes` (a larger tensor has a file of its own)."""
    groups: list[list[str]] = []
    room = 0
    for name, nbytes in sizes:
        if not groups or nbytes > room:
            groups.append([])
            room = shard_bytes
        groups[-1].append(name)
        room -= nbytes
    return groups


def write_shards(out: Path | None, sizes: list[tuple[str, int]], fetch, shard_bytes: int) -> None:
    """Write tensors as Hugging Face safetensors: `model.safetensors` when they fit one file of `shard_bytes`,
    else `model-0000i-of-0000n.safetensors` files and `model.safetensors.index.json`. `fetch(name)` gives each
    tensor when its file is written (None on a process that does not write: `out` None), so at most one file's
    tensors are held at once; every process calls `fetch` for every name in the same order (it may be a
    collective: gathering a sharded parameter)."""
    from safetensors.torch import save_file

    groups = shard_plan(sizes, shard_bytes)
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        tensors = {name: fetch(name) for name in group}
        if out is None:
            continue
        file = SINGLE if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
        del tensors
    if out is not None and len(groups) > 1:
        index = {"metadata": {"total_size": sum(n for _, n in sizes)}, "weight_map": weight_map}
        (out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
