"""Layer surgery (Inheritune): a smaller model made of a reference model's embeddings, chosen blocks, final norm
and head, written as a plain Hugging Face checkpoint that loads with no missing or unexpected weights.

One generic path for every family: the blocks are the model's one `nn.ModuleList` whose length is the config's
layer count; it is replaced in place by the chosen blocks, so everything else (token and position embeddings,
final norm, tied or untied head) is kept exactly as in the reference.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from warmstart import atomic
from warmstart.errors import UserError
from warmstart.models.build import count_params
from warmstart.models.inherit_record import INHERITED_FILE, check_out, search_flops
from warmstart.models.locate import load_failure, resolve_checkpoint

# config keys that hold one entry per layer, besides any list key with "layer" in its name and length k
PER_LAYER_KEYS = ("layer_types", "no_rope_layers", "sliding_window_layers", "attention_types")
# config keys that list layer INDICES (not one entry per layer): renumbered, never sliced
INDEX_LIST_KEYS = ("mlp_only_layers", "moe_layers")
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "chat_template*",
)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@dataclass
class InheritResult:
    out: Path
    blocks: list[int]
    ref_layers: int
    params: int
    ref_params: int
    model_class: str
    parent_search_flops: float = 0.0  # a cut of a cut: the block search that made --from, carried into this one


def parse_blocks(spec: str | list[int], k: int, what: str = "--blocks") -> list[int]:
    """'0-5,8' or [0, 1, 8] -> an ordered list of distinct block indices in 0..k-1."""
    if isinstance(spec, str):
        out: list[int] = []
        parts = [p.strip() for p in spec.split(",")]
        if not spec.strip() or any(not p for p in parts):
            raise UserError(f"{what}: {spec!r} has an empty entry; give indices or ranges like 0-5,8")
        for part in parts:
            lo, sep, hi = part.partition("-")
            try:
                a, b = int(lo), int(hi) if sep else int(lo)
            except ValueError:
                raise UserError(f"{what}: {part!r} is not an index or a range like 0-5") from None
            if b < a:
                raise UserError(f"{what}: range {part!r} runs backwards; write it as {b}-{a}")
            out.extend(range(a, b + 1))
    else:
        out = [int(i) for i in spec]
    if not out:
        raise UserError(f"{what}: no blocks chosen")
    bad = [i for i in out if not 0 <= i < k]
    if bad:
        raise UserError(f"{what}: block {bad[0]} is out of range; the reference has blocks 0..{k - 1}")
    dup = sorted({i for i in out if out.count(i) > 1})
    if dup:
        raise UserError(f"{what}: block {dup[0]} is listed twice; each block can be inherited once")
    if len(out) >= k:
        raise UserError(f"{what}: chooses {len(out)} of {k} blocks; inherit fewer than all (1..{k - 1})")
    return out


def layer_count(config) -> int:
    k = getattr(config, "num_hidden_layers", None)
    if not isinstance(k, int):
        raise UserError(
            f"{type(config).__name__}: no num_hidden_layers in the config; cannot inherit its blocks"
        )
    return k


def find_blocks(model: torch.nn.Module, k: int) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """The (parent, attribute, ModuleList) holding the k transformer blocks; the largest such list if several."""
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == k and len({type(b) for b in mod}) == 1:
            n_params = sum(p.numel() for p in mod.parameters())
            if n_params:
                found.append((n_params, name, mod))
    if not found:
        raise UserError(
            f"{type(model).__name__}: no list of {k} blocks found (an nn.ModuleList of the config's "
            f"num_hidden_layers); this architecture does not expose its blocks as one list"
        )
    _, name, blocks = max(found, key=lambda f: f[0])
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attr, blocks


def auto_class(config):
    """Masked-LM reference -> AutoModelForMaskedLM, everything else -> AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForMaskedLM") for a in archs):
        return AutoModelForMaskedLM
    if not archs and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


def _slice_config(config, k: int, blocks: list[int]) -> list[str]:
    """Set the layer count to len(blocks) and slice every per-layer list; returns the keys sliced."""
    sliced = []
    for key, value in config.to_dict().items():
        if key in INDEX_LIST_KEYS:
            continue
        if isinstance(value, list) and len(value) == k and (key in PER_LAYER_KEYS or "layer" in key):
            setattr(config, key, [value[i] for i in blocks])
            sliced.append(key)
    config.num_hidden_layers = len(blocks)
    return sliced


def _remap_layer_indices(config, blocks: list[int]) -> None:
    """Settings that name layers by index, or pick a layer's kind from its index, follow the kept blocks.

    Mixture-of-experts configs (Qwen2-MoE, Qwen3-MoE) choose each block's MLP from its index:
    sparse iff `index not in mlp_only_layers` and `(index + 1) % decoder_sparse_step == 0`. A kept block must
    keep its MLP kind at its new position, and no stride can express an arbitrary pattern, so the pattern is
    written out: decoder_sparse_step = 1 and mlp_only_layers = the new positions of the dense blocks.
    (`_remap_check` refuses, before anything changes, the index-dependent settings that cannot follow.)
    """
    if hasattr(config, "mlp_only_layers") or hasattr(config, "decoder_sparse_step"):
        dense = set(getattr(config, "mlp_only_layers", None) or [])
        step = int(getattr(config, "decoder_sparse_step", 1) or 1)
        experts = int(getattr(config, "num_experts", 0) or 0)

        def sparse(i: int) -> bool:
            return i not in dense and experts > 0 and (i + 1) % step == 0

        config.mlp_only_layers = [pos for pos, i in enumerate(blocks) if not sparse(i)]
        config.decoder_sparse_step = 1


def _remap_check(config, blocks: list[int]) -> None:
    """UserError for index-dependent settings that cannot follow a non-prefix block choice."""
    for key in ("first_k_dense_replace", "moe_layer_freq", "interleave_moe_layer_step", "moe_layers"):
        if getattr(config, key, None) not in (None, 0, 1, []) and blocks != list(range(len(blocks))):
            raise UserError(
                f"--blocks: this model's {key} picks each block's kind by its index; inheriting blocks "
                f"{blocks} would change their kinds; use --layers N (a prefix)"
            )
    if blocks != list(range(len(blocks))) and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise UserError(
            "--blocks: this model scales attention by its block index (scale_attn_by_inverse_layer_idx), so only "
            "a prefix of its blocks keeps its function; use --layers N"
        )


def verify_written(path: Path, model: torch.nn.Module | None, auto, blocks: list[int]) -> None:
    """Reload the written checkpoint and require exactly the weights that were saved: none missing, none
    unexpected, none re-initialised or resized (every tensor equal to the in-memory one; with `model` None, to
    the one in the written files, read one at a time, so the cut is held once, not twice)."""
    try:
        reloaded, info = auto.from_pretrained(str(path), dtype="auto", output_loading_info=True)
    except Exception as e:  # a config that no longer builds this model
        raise UserError(f"inherit: blocks {blocks} do not load back as a model ({_first_line(e)})") from None
    problems = [
        f"{kind} {', '.join(sorted(keys)[:3])}"
        for kind, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys")),
                           ("resized", [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or []]))
        if keys
    ]
    got = reloaded.state_dict()
    if model is not None:
        want = model.state_dict()
    else:
        from warmstart.models.weight_files import WeightFiles, stored_names, tied_aliases

        files, tied = WeightFiles.find(path), tied_aliases(reloaded)
        names = stored_names(reloaded, {k: v for k, v in got.items() if k not in tied}) or {}
        want = _Lazy({k: lambda key, n=n: files.get(n) for k, n in names.items()})  # tied names stored once
    if not problems:
        differ = [k for k in want if k not in got or not _same(got[k], want[k])]
        if differ:
            problems.append(f"re-initialised {', '.join(differ[:3])}")
    if problems:
        raise UserError(
            f"inherit: blocks {blocks} would reload with weights {'; '.join(problems)} (a per-layer setting of "
            "this architecture does not follow the kept blocks); nothing written"
        )


def _named_one_to_one(model: torch.nn.Module) -> bool:
    """Whether each of the model's tensors is stored as one tensor of its own (no fused or split weights)."""
    from warmstart.models.weight_files import stored_names, tied_aliases

    tied = tied_aliases(model)
    return stored_names(model, {k: v for k, v in model.state_dict().items() if k not in tied}) is not None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


class _Lazy(dict):
    """{name: reader}: each value read when looked up (one tensor held at a time)."""

    def __getitem__(self, key):
        return super().__getitem__(key)(key)


def _renumber(blocks: torch.nn.ModuleList) -> None:
    """Attention modules keep their block index (KV-cache slot, per-layer settings): make it the new position."""
    for pos, block in enumerate(blocks):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = pos


def cut(model: torch.nn.Module, k: int, blocks: list[int]) -> None:
    """Make `model` (k blocks) the model of `blocks` in place: its block list, layer indices and per-layer
    config settings (sliced lists, renumbered index lists) follow the kept blocks. Raises UserError where an
    index-dependent setting cannot follow them."""
    _remap_check(model.config, blocks)
    parent, attr, old = find_blocks(model, k)
    new = torch.nn.ModuleList([old[i] for i in blocks])
    setattr(parent, attr, new)
    _renumber(new)
    _slice_config(model.config, k, blocks)
    _remap_layer_indices(model.config, blocks)


@contextlib.contextmanager
def cut_view(model: torch.nn.Module, k: int, blocks: list[int]):
    """`cut` for the duration of the block, then the reference again (same modules, same config object): lets
    several cuts be measured on one loaded reference without copying its weights."""
    saved = copy.deepcopy(model.config.__dict__)
    parent, attr, old = find_blocks(model, k)
    try:
        cut(model, k, blocks)
        yield model
    finally:
        setattr(parent, attr, old)
        _renumber(old)
        model.config.__dict__.clear()
        model.config.__dict__.update(saved)


SAVE_SHARD = "1GB"  # the cut is written in safetensors files of at most this size (one file below it)


def _block_list_name(model: torch.nn.Module, k: int) -> str:
    """The qualified name of the model's list of k blocks (`model.layers`, `transformer.h`, ...)."""
    _, _, blocks = find_blocks(model, k)
    return next(name for name, mod in model.named_modules() if mod is blocks)


def read_cut(src, config, auto, k: int, blocks: list[int]) -> tuple[torch.nn.Module, int] | None:
    """The cut model (and the reference's parameter count) read from REF's safetensors files: only the kept
    blocks' tensors, the embeddings, the final norm and the head are read, at the checkpoint's dtype, so the peak
    follows the cut, not the reference. The model is built on the meta device, cut there (`cut`), and each of its
    tensors read from the reference under its block's old index. None where REF has no safetensors files or names
    a tensor otherwise than the model does (a checkpoint transformers converts while loading): the caller then
    loads the whole reference (`from_pretrained`), as before."""
    from warmstart.models.weight_files import (
        WeightFiles,
        generation_config_from,
        retie,
        stored_names,
        tied_aliases,
    )

    files = WeightFiles.find(src)
    if files is None:
        return None
    raw = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    dtype = getattr(torch, raw, None) if isinstance(raw, str) else raw
    if not isinstance(dtype, torch.dtype):
        dtype = files.first_float_dtype() or torch.float32
    with torch.device("meta"):
        try:
            model = auto.from_config(copy.deepcopy(config), dtype=dtype)
        except Exception:  # noqa: BLE001 - a model only its own loader builds: load it the whole way
            return None
    ref_params = count_params(model)
    name = _block_list_name(model, k)
    ref_tied = tied_aliases(model)
    stored = stored_names(model, {k: v for k, v in model.state_dict().items() if k not in ref_tied})
    if stored is None:
        return None
    cut(model, k, blocks)
    model.config.dtype = dtype  # what `from_pretrained(dtype="auto")` records in the saved config
    aliases = tied_aliases(model)
    prefix = f"{name}."
    state: dict[str, torch.Tensor] = {}
    for key, meta in model.state_dict(keep_vars=True).items():
        if key in aliases:
            continue
        ref_key = key
        if key.startswith(prefix):
            pos, _, rest = key[len(prefix):].partition(".")
            ref_key = f"{prefix}{blocks[int(pos)]}.{rest}"
        src_key = stored.get(ref_key)
        if src_key not in files or files.shape(src_key) != list(meta.shape):
            return None
        state[key] = files.get(src_key, meta.dtype)
    for key, target in aliases.items():
        state[key] = state[target]
    model.load_state_dict(state, strict=True, assign=True)
    retie(model, aliases)
    generation_config_from(model, src)
    return model, ref_params


def _copy_tokenizer(ref_dir: Path | str, out: Path) -> bool:
    """Copy the reference's tokenizer files byte for byte (a hub reference: load and save its tokenizer)."""
    if isinstance(ref_dir, Path):
        files = {p for pat in TOKENIZER_FILES for p in ref_dir.glob(pat) if p.is_file()}
        for p in files:
            shutil.copy2(p, out / p.name)
        return bool(files)
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(ref_dir).save_pretrained(str(out))
    except (OSError, ValueError):
        return False
    return True


def inherit(
    ref: str | Path,
    out: str | Path,
    layers: int | None = None,
    blocks: str | list[int] | None = None,
    overwrite: bool = False,
    choice: dict | None = None,
) -> InheritResult:
    """Write REF's embeddings + chosen blocks (default: the first `layers`) + final norm + head to `out`, with
    `inherited.json` ({from: REF, checkpoint, blocks, of: REF's block count, choice}) recording where it came
    from; `choice` is how the blocks were chosen (rule, what was measured: eval/block_choice.py).

    When REF is itself an inherited cut whose blocks were searched for, its `search_flops` are added to this
    cut's (`choice.parent_search_flops`): the search was spent to make this model too, so runs from it are charged
    it, as runs from REF are."""
    from transformers import AutoConfig

    if (layers is None) == (blocks is None):
        raise UserError("inherit: give the number of layers (--layers N) or a block list (--blocks 0-5,8)")
    src = resolve_checkpoint(str(ref), "--from")
    out = check_out(out, overwrite, ref)
    parent = search_flops(src, "--from") if isinstance(src, Path) else 0.0
    if parent > 0:
        choice = {**(choice or {"rule": "blocks" if blocks is not None else "first"}), "parent_search_flops": parent}
        choice["search_flops"] = float(choice.get("search_flops", 0.0)) + parent
    try:
        config = AutoConfig.from_pretrained(str(src))
    except Exception as e:  # OSError/ValueError (or a validation error) for a missing or unreadable config
        raise UserError(f"--from: cannot read the config of {ref} ({_first_line(e)})") from None
    k = layer_count(config)
    if layers is not None:
        if not 1 <= layers <= k - 1:
            raise UserError(f"--layers: {layers} is outside 1..{k - 1} (the reference has {k} blocks)")
        chosen = list(range(layers))
    else:
        chosen = parse_blocks(blocks, k)
    _remap_check(config, chosen)
    from warmstart.models import memory
    from warmstart.models.weight_files import WeightFiles

    memory.check_cut(config, k, len(chosen), say=(choice or {}).get("rule", "first") in ("first", "blocks"),
                     whole=WeightFiles.find(src) is None)
    auto = auto_class(config)
    model, ref_params = read_cut(src, config, auto, k, chosen) or (None, 0)
    if model is None:  # no safetensors to read tensor by tensor (a hub name, pytorch_model.bin): the whole reference
        try:
            model = auto.from_pretrained(str(src), dtype="auto")
        except Exception as e:  # OSError/ValueError/KeyError, pickle.UnpicklingError for a weights file torch refuses
            raise UserError(f"--from: cannot load {ref} with {auto.__name__} ({load_failure(e)})") from None
        ref_params = count_params(model)
        cut(model, k, chosen)

    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory the user made for it
    with atomic.build_dir(out, replace=overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=SAVE_SHARD)
        params, class_name = count_params(model), type(model).__name__
        if _named_one_to_one(model):
            model = None  # the reload is checked against the written files: the cut is held once at a time
        _copy_tokenizer(src if isinstance(src, Path) else str(src), tmp)
        verify_written(tmp, model, auto, chosen)
        # provenance: what it was cut from (a report charges the reference's compute to runs started here)
        origin = str(Path(ref).resolve()) if Path(str(ref)).exists() else str(ref)
        provenance = {"from": origin, "checkpoint": str(src), "blocks": chosen, "of": k}
        if choice is not None:
            provenance["choice"] = choice
        atomic.write_text(tmp / INHERITED_FILE, json.dumps(provenance, indent=2) + "\n")
    return InheritResult(out, chosen, k, params, ref_params, class_name, parent)
