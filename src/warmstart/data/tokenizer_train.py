"""Train a byte-level BPE (Hugging Face `tokenizers`) for from-scratch models."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from warmstart.atomic import build_dir
from warmstart.errors import UserError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"  # so the same tokenizer serves masked-LM (BERT-style) models


# what `save_pretrained` of a fast tokenizer writes: a directory holding only these is a tokenizer directory
TOKENIZER_DIR_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.jinja", "chat_template.json",
})


def is_tokenizer_dir(path: Path) -> bool:
    """A directory holding tokenizer.json and nothing but the files a saved tokenizer consists of."""
    entries = list(path.iterdir())
    return (path / "tokenizer.json").is_file() and all(
        p.is_file() and p.name in TOKENIZER_DIR_FILES for p in entries
    )


def check_tokenizer_out(out: str | Path, overwrite: bool, what: str = "--out") -> Path:
    """Where a tokenizer may be written: a new or empty directory, or (with `overwrite`) an existing tokenizer
    directory; never a file or a folder holding anything else. Raises UserError naming `what`."""
    from warmstart.outputs import check_out_dir

    out = check_out_dir(out, what)
    if out.is_dir() and any(out.iterdir()):
        if not is_tokenizer_dir(out):
            raise UserError(
                f"{what}: {out} exists and holds files that are not a tokenizer; choose another directory"
            )
        if not overwrite:
            raise UserError(f"{what}: {out} holds a tokenizer; pass --overwrite to replace it")
    return out


def _check_vocab_size(vocab_size: int) -> None:
    if vocab_size < 260:
        raise UserError(f"vocab_size {vocab_size}: a byte-level BPE needs at least 260 (256 bytes + specials)")


# a newline between two non-space characters: the byte-level pre-tokenizer (GPT-2's split regex) makes that newline
# a pre-token of its own whether or not the text is cut right after it, so the pieces' pre-tokens are the text's
_TRAIN_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def training_pieces(text: str, piece_chars: int | None = None) -> Iterator[str]:
    """`text` as pieces of at least `piece_chars` characters (default: prepare's PIECE_CHARS), each cut after a
    newline between two non-space characters, where the byte-level pre-tokenizer splits anyway.

    The BPE trainer counts pre-tokens and never merges across them, so the pieces train exactly the tokenizer the
    whole text trains (tested), while its memory is that of one piece: the trainer's memory on one 20 MB document
    was 5.7x that on the same text as 100 documents. A text with no such newline stays whole."""
    from warmstart.data.doc_format import PIECE_CHARS

    size = piece_chars or PIECE_CHARS
    start = 0
    while len(text) - start > size:
        m = _TRAIN_CUT.search(text, start + size)
        if m is None:
            break
        yield text[start : m.start()]
        start = m.start()
    yield text[start:]


def _learn_bpe(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, mask_token=MASK)


def _save(fast, out: Path) -> Path:
    """Built as a temp directory beside `out` and renamed into place: a failure leaves the old one (or none)."""
    with build_dir(out, replace=True) as tmp:
        fast.save_pretrained(str(tmp))
    return out


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | Path, overwrite: bool = True) -> Path:
    """Learn a byte-level BPE of `vocab_size` tokens; save it as an AutoTokenizer-loadable directory.

    `out` is checked first (see `check_tokenizer_out`). Raises UserError for a vocab_size below 260.
    """
    _check_vocab_size(vocab_size)
    out = check_tokenizer_out(out, overwrite)
    return _save(_learn_bpe((p for t in texts for p in training_pieces(t)), vocab_size), out)


class _DomainTexts:
    """Every document of the domains, in order, counting each domain's documents as they stream past."""

    def __init__(self, domains: dict):
        self.domains = domains
        self.counts = dict.fromkeys(domains, 0)

    def __iter__(self) -> Iterator[str]:
        from warmstart.data.sources import iter_documents

        for name, sources in self.domains.items():
            for src in sources:
                for text in iter_documents(src):
                    self.counts[name] += 1
                    yield from training_pieces(text)  # memory bounded by a piece, whatever one document's size


def train_tokenizer(domains: dict, vocab_size: int, out: str | Path, overwrite: bool = False) -> Path:
    """Train on every document of the given domains (the `domains` section of a prepare recipe).

    A domain without documents is an error (as in `prepare`), found before anything is written.
    """
    _check_vocab_size(vocab_size)
    out = check_tokenizer_out(out, overwrite)
    texts = _DomainTexts(domains)
    fast = _learn_bpe(texts, vocab_size)
    empty = [n for n, c in texts.counts.items() if c == 0]
    if empty:
        sources = ", ".join(str(s.path) for s in domains[empty[0]])
        raise UserError(f"domain {empty[0]!r}: no documents in {sources}; a tokenizer needs text from each domain")
    return _save(fast, out)
