"""Build a causal LM from a preset / family / config.json, or load one from a checkpoint; save plain HF output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from warmstart.config import ModelConfig
from warmstart.data.tokenizer import load_tokenizer, tokenizer_identity
from warmstart.errors import UserError
from warmstart.models.locate import load_failure, resolve_checkpoint
from warmstart.models.presets import PRESETS, SIZE_KEYS, family_kwargs, map_sizes

__all__ = ["LoadedModel", "build_config", "build_model", "resolve_checkpoint"]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what the weights came from ("scratch:llama-tiny", a path, a hub name)
    # a model still on the meta device (build_model's `sharded`): shard it, then `start.materialise` it
    start: object | None = None


def _special_ids(tok) -> dict:
    out = {}
    for name in ("bos", "eos", "pad"):
        tid = getattr(tok, f"{name}_token_id", None)
        if tid is not None:
            out[f"{name}_token_id"] = tid
    return out


def build_config(cfg: ModelConfig, vocab_size: int, special_ids: dict | None = None, say: bool = True):
    """A Hugging Face config for a from-scratch model (`say`: warn when the file's vocabulary is raised)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    special_ids = special_ids or {}
    if cfg.config:
        path = Path(cfg.config)
        if not path.is_file():
            raise UserError(f"model.config: {cfg.config} not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"model.config: {cfg.config} is not valid JSON ({e})") from None
        family = raw.get("model_type")
        if family not in CONFIG_MAPPING:
            raise UserError(f"model.config: {cfg.config} has unknown model_type {family!r}")
        # the file's values win over warmstart's family defaults; model.sizes wins over both
        kwargs = {**raw, **map_sizes(family, cfg.sizes)}
        kwargs.pop("model_type", None)
        asked = int(kwargs.get("vocab_size") or 0)
        if say and 0 < asked < vocab_size:
            from warmstart.errors import warn

            warn(f"model.config: {cfg.config} has vocab_size {asked}, fewer than the tokenizer's {vocab_size} "
                 f"tokens; the model gets {vocab_size} embedding rows")
        vocab_size = max(asked, vocab_size)  # keep a padded embedding table
    else:
        if cfg.preset:
            if cfg.preset not in PRESETS:
                raise UserError(f"model.preset: unknown preset {cfg.preset!r} (have: {', '.join(PRESETS)})")
            family, sizes = PRESETS[cfg.preset]
            sizes = {**sizes, **cfg.sizes}
        else:
            family, sizes = cfg.family, cfg.sizes
            if family not in SIZE_KEYS:
                raise UserError(f"model.family: unknown family {family!r} (have: {', '.join(SIZE_KEYS)})")
        kwargs = family_kwargs(family, sizes)
    kwargs = {**special_ids, **kwargs, "vocab_size": vocab_size}
    try:
        config = AutoConfig.for_model(family, **kwargs)
    except Exception as e:  # TypeError/ValueError, or huggingface_hub's strict-dataclass validation errors
        raise UserError(f"model.sizes: invalid {family} config ({_innermost(e)})") from None
    check_sizes(config)
    return config


def _innermost(e: BaseException) -> str:
    """The first line of the root cause (transformers wraps a config's ValueError in a validation error)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# generic config attribute (every family maps these through its attribute_map) -> the generic size name
_SIZE_ATTRS = {"num_hidden_layers": "layers", "hidden_size": "hidden", "num_attention_heads": "heads",
               "num_key_value_heads": "kv_heads", "intermediate_size": "ffn"}


def check_sizes(config) -> None:
    """Refuse sizes that build no working model: non-positive counts, heads that do not split the hidden size
    (unless the config sets its own head_dim), query heads that are not a multiple of the key/value heads."""
    family = config.model_type
    sizes = {}
    for attr, name in _SIZE_ATTRS.items():
        v = getattr(config, attr, None)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"model.sizes.{name}: must be a whole number >= 1 (got {v!r})")
        sizes[name] = v
    hidden, heads, kv = sizes.get("hidden"), sizes.get("heads"), sizes.get("kv_heads")
    if hidden and heads and hidden % heads and not getattr(config, "head_dim", None):
        raise UserError(
            f"model.sizes.heads: {heads} heads do not split the hidden size {hidden} of this {family} model; "
            "use a divisor of hidden"
        )
    if heads and kv and heads % kv:
        raise UserError(f"model.sizes.kv_heads: {kv} key/value heads do not divide the {heads} query heads")


def context_length(config) -> int | None:
    """The longest sequence the model's positions cover (max_position_embeddings, n_positions, ...), or None."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_seq_len(config, seq_len: int, what: str, hint: str) -> None:
    """Refuse sequences longer than the model's positions (they would train or score silently out of range)."""
    limit = context_length(config)
    if limit is not None and seq_len > limit:
        raise UserError(
            f"{what}: {seq_len} is longer than the model's {limit} positions "
            f"({type(config).__name__}.max_position_embeddings); {hint}"
        )


def auto_class(objective: str):
    """AutoModelForCausalLM, or AutoModelForMaskedLM for the masked (BERT-style) objective."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM


POSITION_SIZE = "max_positions"  # the one model.sizes key that also applies to an init.from checkpoint


def _checkpoint_config(src, init_from: str, sizes: dict):
    """The checkpoint's config; `model.sizes.max_positions` (asked for explicitly) extends its context, and is
    then what the run's saved config says. Other sizes cannot change a trained architecture."""
    from transformers import AutoConfig

    other = sorted(k for k in sizes if k != POSITION_SIZE)
    if other:
        raise UserError(f"model.sizes.{other[0]}: the architecture comes from init.from; only "
                        f"model.sizes.{POSITION_SIZE} (a longer context) can be set with it")
    try:
        config = AutoConfig.from_pretrained(str(src))
    except Exception as e:  # OSError/ValueError for a missing or unreadable config.json
        raise UserError(f"init.from: cannot read the config of {init_from} ({_innermost(e)})") from None
    if POSITION_SIZE in sizes:
        for key, value in map_sizes(config.model_type, {POSITION_SIZE: sizes[POSITION_SIZE]}).items():
            setattr(config, key, value)
    return config


def model_config(cfg: ModelConfig, init_from: str | None):
    """The Hugging Face config `build_model` will build or load, without any weights (for the memory forecast)."""
    if init_from:
        return _checkpoint_config(resolve_checkpoint(init_from, "init.from"), init_from, cfg.sizes)
    if not cfg.tokenizer:
        raise UserError("model.tokenizer: a from-scratch model needs a tokenizer (directory or tokenizer.json)")
    tok = load_tokenizer(cfg.tokenizer)
    return build_config(cfg, vocab_size=len(tok), special_ids=_special_ids(tok), say=False)


def build_model(cfg: ModelConfig, init_from: str | None, seed: int, seq_len: int | None = None,
                sharded: bool = False) -> LoadedModel:
    """From scratch (seeded init) or from a checkpoint (weights loaded, fp32 master copy).

    With `seq_len`, a model whose positions are fewer is refused before its weights are built or loaded.
    `sharded` (FSDP over several processes): a checkpoint with safetensors files comes back on the meta device
    with `start` set, to be filled shard by shard once sharded (models/sharded_load.py); no process reads it whole.
    """
    cls = auto_class(cfg.objective)
    kind = "masked LM" if cfg.objective == "masked" else "causal LM"
    if init_from:
        src = resolve_checkpoint(init_from, "init.from")
        config = _checkpoint_config(src, init_from, cfg.sizes)
        if seq_len is not None:
            check_seq_len(config, seq_len, "data.seq_len", "lower data.seq_len, or extend the context with "
                          f"--set model.sizes.{POSITION_SIZE}=N (rotary-position models only)")
        tok = load_tokenizer(cfg.tokenizer or str(src))
        if sharded:
            from warmstart.models.sharded_load import MetaStart

            start = MetaStart.plan(cls, config, src, torch.float32)
            if start is not None:
                _check_objective(start.model, cfg, tok)
                return LoadedModel(start.model, tok, str(src), start=start)
        try:
            model = cls.from_pretrained(str(src), config=config, dtype=torch.float32)
        except Exception as e:  # transformers raises OSError/ValueError/KeyError/UnpicklingError for bad files
            raise UserError(f"init.from: cannot load {init_from} as a {kind} ({load_failure(e)})") from None
    else:
        if not cfg.tokenizer:
            raise UserError("model.tokenizer: a from-scratch model needs a tokenizer (directory or tokenizer.json)")
        tok = load_tokenizer(cfg.tokenizer)
        config = build_config(cfg, vocab_size=len(tok), special_ids=_special_ids(tok))
        if seq_len is not None:
            check_seq_len(config, seq_len, "data.seq_len",
                          f"lower data.seq_len or raise it with --set model.sizes.{POSITION_SIZE}={seq_len}")
        torch.manual_seed(seed)
        try:
            model = cls.from_config(config, dtype=torch.float32)
        except ValueError:
            raise UserError(
                f"model.objective: {config.model_type} has no {kind} class; use a "
                f"{'BERT-style' if cfg.objective == 'masked' else 'decoder'} family"
            ) from None
        except (TypeError, RuntimeError) as e:  # sizes the config accepted but the modules cannot be built with
            raise UserError(f"model.sizes: cannot build this {config.model_type} model ({_innermost(e)})") from None
    _check_objective(model, cfg, tok)
    source = str(src) if init_from else f"scratch:{cfg.preset or cfg.family or cfg.config}"
    return LoadedModel(model, tok, source)


def _check_objective(model: torch.nn.Module, cfg: ModelConfig, tok) -> None:
    if cfg.objective == "masked" and tok.mask_token_id is None:
        raise UserError("model.objective: masked needs a tokenizer with a mask token (mask_token)")


def check_data_compatible(
    tokenizer, data_tokenizer: dict, max_token_id: int | None, vocab_size: int, data_dir: str,
    what: str = "data.dir",
) -> None:
    """Refuse data prepared with another tokenizer, or ids the embedding table cannot look up (`what` names the
    argument the data came from: data.dir in a recipe, --data on the command line)."""
    ident = tokenizer_identity(tokenizer)
    if ident["vocab_hash"] != data_tokenizer.get("vocab_hash"):
        raise UserError(
            f"{what}: {data_dir} was prepared with tokenizer {data_tokenizer.get('name')!r} "
            f"(vocab hash {data_tokenizer.get('vocab_hash', '')[:12]}), but the model's tokenizer "
            f"{ident['name']!r} differs (hash {ident['vocab_hash'][:12]}); re-run `warmstart prepare` with it"
        )
    check_token_ids(max_token_id, vocab_size, what)


def embedding_rows(model: torch.nn.Module) -> int:
    """The rows of the model's input embedding table: every token id it reads must be below this."""
    return int(model.get_input_embeddings().weight.shape[0])


def check_token_ids(max_id: int | None, rows: int, what: str, which: str = "") -> None:
    """Refuse (UserError, one line) an id the embedding table cannot look up, before any forward pass would die
    on it with `IndexError: index out of range in self` (a tokenizer with special tokens added past the
    embedding). `what` names the input, `which` says where the id comes from (e.g. " (the tokenizer's '</s>')")."""
    if max_id is not None and max_id >= rows:
        raise UserError(
            f"{what}: token id {max_id}{which} is beyond the model's vocabulary ({rows} embedding rows); "
            "the model's embedding table must cover the tokenizer (use the tokenizer it was trained with, or "
            "resize its embeddings)"
        )


def check_data_format(
    tokenizer, domains: dict, data_dir: str, allow_mismatch: bool, flag: str, say: bool = True
) -> None:
    """Refuse (`UserError`) data whose recorded document format (BOS, document end, specials as text) is not the
    checkpoint's (`data.doc_format.check_format`); print one warning line per distinct format otherwise due.

    `domains`: {name: DomainData}; `flag` names the override in the refusal; `say`: False on non-main ranks.
    """
    import json

    from warmstart.data.doc_format import check_format
    from warmstart.errors import warn

    groups: dict[str, list[str]] = {}
    for name, dom in domains.items():
        groups.setdefault(json.dumps(dom.document_format.to_json(), sort_keys=True), []).append(name)
    for names in groups.values():
        fmt = domains[names[0]].document_format
        msg = check_format(fmt, tokenizer, f"{data_dir} ({', '.join(sorted(names))})", allow_mismatch, flag)
        if msg and say:
            warn(msg)


def save_hf(model: torch.nn.Module, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """A plain Hugging Face checkpoint: config.json + model.safetensors + tokenizer files.

    `state_dict`: the weights to write instead of the model's own (a sharded model's gathered full state dict).
    """
    model.save_pretrained(str(out), safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(str(out))


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each transformer block in the backward pass (non-reentrant torch.utils.checkpoint, RNG state
    kept), so a block's activations are not stored: memory per layer falls to its input, for ~1/3 more compute."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"train.activation_checkpointing: {type(model).__name__} does not support it")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def no_kv_cache(model: torch.nn.Module) -> torch.nn.Module:
    """Scoring never generates: without this a forward of a (B, T) batch also keeps every layer's keys and values
    (a KV cache of layers x B x T x 2 x kv width, 0.75 GB for SmolLM2 at 16 x 1024) until the forward returns."""
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters used in matrix products per token: all but embedding lookups (token, position, type),
    plus a tied LM head, whose matrix is an embedding table but is multiplied on every token."""
    emb = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = count_params(model) - sum(emb.values())
    head = model.get_output_embeddings()
    if head is not None and id(head.weight) in emb:
        n += head.weight.numel()
    return n


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6N (forward + backward of the matmuls) + 12 * layers * d_model * seq_len
    (attention scores and values, forward + backward), the PaLM appendix-B accounting."""
    c = model.config
    layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    d = getattr(c, "hidden_size", None) or c.n_embd
    return 6.0 * matmul_params(model) + 12.0 * layers * d * seq_len


def forward_flops_per_token(model: torch.nn.Module, seq_len: int, head: bool = True) -> float:
    """Forward FLOPs per token: a third of `flops_per_token` (2N + 4 * layers * d_model * seq_len); head=False
    leaves out the output layer's matmul (2 * vocab * d_model), for a pass that stops at the final hidden
    states (the block search's angular pass)."""
    fwd = flops_per_token(model, seq_len) / 3.0
    out = model.get_output_embeddings()
    if not head and out is not None:
        fwd -= 2.0 * out.weight.numel()
    return fwd
