"""Model families and tiny presets, in one vocabulary of sizes mapped onto each family's config keys."""

from __future__ import annotations

from typing import Any

# generic size name -> the family's Hugging Face config key
SIZE_KEYS: dict[str, dict[str, str]] = {
    "gpt2": {
        "layers": "n_layer",
        "hidden": "n_embd",
        "heads": "n_head",
        "ffn": "n_inner",
        "max_positions": "n_positions",
    },
    "gpt_neox": {
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
        "max_positions": "max_position_embeddings",
    },
    "llama": {
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "max_positions": "max_position_embeddings",
    },
    "opt": {
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "ffn": "ffn_dim",
        "max_positions": "max_position_embeddings",
    },
}
SIZE_KEYS["bert"] = SIZE_KEYS["gpt_neox"]  # same key names: layers, hidden, heads, ffn, positions
SIZE_KEYS["mistral"] = SIZE_KEYS["llama"]
SIZE_KEYS["qwen2"] = SIZE_KEYS["llama"]

# dropout off: pre-training on a single pass (or a few epochs) does not need it, and resume stays exact
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True},
    "gpt_neox": {"hidden_dropout": 0.0, "attention_dropout": 0.0, "tie_word_embeddings": False},
    "llama": {"attention_dropout": 0.0, "tie_word_embeddings": True},
    "mistral": {"attention_dropout": 0.0, "tie_word_embeddings": True, "sliding_window": None},
    "qwen2": {"attention_dropout": 0.0, "tie_word_embeddings": True, "use_sliding_window": False},
    "opt": {"dropout": 0.0, "attention_dropout": 0.0, "tie_word_embeddings": True},
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "tie_word_embeddings": True},
}

_TINY = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "max_positions": 512}
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-tiny": ("gpt2", dict(_TINY)),
    "neox-tiny": ("gpt_neox", dict(_TINY)),
    "llama-tiny": ("llama", {**_TINY, "kv_heads": 2, "ffn": 172}),
    "mistral-tiny": ("mistral", {**_TINY, "kv_heads": 2, "ffn": 172}),
    "qwen2-tiny": ("qwen2", {**_TINY, "kv_heads": 2, "ffn": 172}),
    "opt-tiny": ("opt", dict(_TINY)),
    "bert-tiny": ("bert", dict(_TINY)),  # a masked LM: use with model.objective: masked
    # the quickstart's reference model: big enough to learn the demo corpus, small enough for 2 CPU cores
    "llama-small": ("llama", {"layers": 4, "hidden": 128, "heads": 4, "kv_heads": 2, "ffn": 344, "max_positions": 1024}),
    # a ~400M-parameter LLaMA-style model for GPU throughput / MFU benchmarks (vocab from the tokenizer)
    "llama-400m": (
        "llama",
        {"layers": 24, "hidden": 1024, "heads": 16, "kv_heads": 16, "ffn": 3584, "max_positions": 4096},
    ),
}


def map_sizes(family: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Translate generic size names to the family's config keys; unknown names pass through unchanged."""
    keys = SIZE_KEYS.get(family, {})
    out = {keys.get(k, k): v for k, v in sizes.items()}
    if family == "opt" and "hidden_size" in out:
        out.setdefault("word_embed_proj_dim", out["hidden_size"])
    return out


def family_kwargs(family: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """A from-scratch config: the family's warmstart defaults (no dropout, ...) overridden by `sizes`."""
    return {**FAMILY_DEFAULTS.get(family, {}), **map_sizes(family, sizes)}
