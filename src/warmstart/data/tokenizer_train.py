"""Train a byte-level BPE (Hugging Face `tokenizers`) for from-scratch models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from warmstart.atomic import build_dir
from warmstart.errors import UserError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"  # so the same tokenizer serves masked-LM (BERT-style) models


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | Path, overwrite: bool = True) -> Path:
    """Learn a byte-level BPE of `vocab_size` tokens; save it as an AutoTokenizer-loadable directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise UserError(f"vocab_size {vocab_size}: a byte-level BPE needs at least 260 (256 bytes + specials)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, MASK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, mask_token=MASK
    )
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists; choose another --out or remove it")
    with build_dir(out, replace=True) as tmp:
        fast.save_pretrained(str(tmp))
    return out


def _texts(domains: dict) -> Iterator[str]:
    from warmstart.data.sources import iter_documents

    for sources in domains.values():
        for src in sources:
            yield from iter_documents(src)


def train_tokenizer(domains: dict, vocab_size: int, out: str | Path) -> Path:
    """Train on every document of the given domains (the `domains` section of a prepare recipe)."""
    return train_bpe(_texts(domains), vocab_size, out)
