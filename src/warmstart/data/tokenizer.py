"""Loading a Hugging Face tokenizer from a directory, a tokenizer.json or a hub name, and its identity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from warmstart.errors import UserError


def load_tokenizer(spec: str):
    """A `PreTrainedTokenizerFast` for a model directory, a tokenizer.json file, or a hub name."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(spec)
    try:
        if p.is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(p))
        if p.is_dir():
            return AutoTokenizer.from_pretrained(str(p))
        if p.suffix == ".json" or spec.startswith((".", "/")):
            raise UserError(f"{spec}: tokenizer not found (no such file or directory)")
        return AutoTokenizer.from_pretrained(spec)
    except UserError:
        raise
    except Exception as e:  # transformers raises many types (OSError, ValueError, json errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{spec}: cannot load tokenizer ({first})") from None


def vocab_hash(tok) -> str:
    """sha256 of the token -> id map (added tokens included): equal hashes mean identical token ids."""
    vocab = tok.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def tokenizer_identity(tok, name: str | None = None) -> dict:
    """What the data index records and what training compares against the model's tokenizer."""
    return {
        "name": name or getattr(tok, "name_or_path", "") or "",
        "vocab_hash": vocab_hash(tok),
        "vocab_size": len(tok),
    }


def eos_id(tok, eos_token: str | None = None) -> int:
    """The id appended after every document: the given token, else the tokenizer's EOS, else its SEP."""
    token = eos_token or tok.eos_token or tok.sep_token
    if token is None:
        raise UserError("tokenizer has no eos or sep token; set eos_token in the prepare recipe")
    tid = tok.convert_tokens_to_ids(token)
    if tid is None or (tok.unk_token_id is not None and tid == tok.unk_token_id and token != tok.unk_token):
        raise UserError(f"eos_token {token!r} is not in the tokenizer's vocabulary")
    return int(tid)
