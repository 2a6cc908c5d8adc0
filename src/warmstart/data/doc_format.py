"""How a document is written into the token stream: the checkpoint's own pre-training format.

A prepared document is `prefix + encode(text) + suffix`:

- **prefix**: the tokens the tokenizer's own special-token template puts before a text (its post-processor with
  `add_special_tokens=True`): `<s>` for Llama-2/Mistral, `<|begin_of_text|>` for Llama-3, `<bos>` for Gemma,
  `[CLS]` for BERT, nothing for GPT-2, Pythia, Qwen and SmolLM. Recipe key `bos`: `auto` (the template's),
  `true` (the template's, else the tokenizer's BOS token alone), `false` (none).
- **text**: encoded with special-token matching off (`split_special_tokens=True`), so a web page that contains the
  literal string `<s>` or a README that mentions `<|endoftext|>` is encoded as those characters, never as a
  control token.
- **suffix**: one document-end token. Recipe key `doc_end`: `auto`, `none`, or a token string. The `auto` rule:
  1. the template's own suffix where it has one (BERT's `[SEP]`; a Llama tokenizer saved with `add_eos_token`);
  2. else the tokenizer's EOS, when it is a document token (base checkpoints: GPT-2/Qwen/SmolLM
     `<|endoftext|>`, Llama-3 `<|end_of_text|>`, Llama-2 `</s>`, Gemma `<eos>`);
  3. when the EOS ends a chat turn instead (instruct checkpoints: `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`,
     ... — a known turn-end token, or the EOS string appearing in the tokenizer's chat template), the first
     document token of rule 2's list that the vocabulary has, else the EOS itself; `prepare` says so, since which
     separator a chat-tuned checkpoint expects is an empirical question: `warmstart format probe` measures it.

The resolved format (ids and token strings, the settings and the rule that chose them) is recorded in every
domain's index.json (`document`), enters its fingerprint, is printed by `warmstart format show DATA_DIR`, and is
checked wherever data meets a model (`check_format`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from warmstart.errors import UserError

# Pre-training document-end tokens of the common families, in the order the `auto` rule tries them.
DOCUMENT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|end▁of▁sentence|>", "[SEP]")
# Tokens that end a chat turn, never a pre-training document.
TURN_END_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endofturn|>",
    "<|im_sep|>",
    "<|end_of_turn|>",
)
_PROBE_TEXT = "warmstart probe text"


@dataclass
class DocumentFormat:
    """The resolved format of every document of a prepared domain (see the module docstring)."""

    prefix: list[int]
    suffix: list[int]
    prefix_tokens: list[str] = field(default_factory=list)
    suffix_tokens: list[str] = field(default_factory=list)
    specials_as_text: bool = True
    bos: str = "auto"  # the recipe setting that chose the prefix
    doc_end: str = "auto"  # the recipe setting that chose the suffix
    rule: str = ""  # why this suffix, in words
    legacy: bool = False  # read from data prepared before formats were recorded

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DocumentFormat:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @property
    def explicit(self) -> bool:
        """True when the prepare recipe chose the format by hand (then a different default is no mismatch)."""
        return self.bos != "auto" or self.doc_end != "auto"

    def describe(self) -> str:
        """One line: `<s> + text + </s>`-style, with ids."""
        pre = " ".join(f"{t} ({i})" for t, i in zip(self.prefix_tokens, self.prefix, strict=True))
        suf = " ".join(f"{t} ({i})" for t, i in zip(self.suffix_tokens, self.suffix, strict=True))
        return " + ".join(p for p in (pre, "text", suf) if p)


def document_format_of_index(index: dict) -> DocumentFormat:
    """The format recorded in a domain's index.json; data prepared before formats were recorded (no
    `document` entry) was written as `text + EOS` with special-token strings matched as control tokens."""
    if isinstance(index.get("document"), dict):
        return DocumentFormat.from_json(index["document"])
    eos = index.get("tokenizer", {}).get("eos_id")
    return DocumentFormat(
        prefix=[],
        suffix=[int(eos)] if eos is not None else [],
        prefix_tokens=[],
        suffix_tokens=[str(index.get("tokenizer", {}).get("eos_token", f"id {eos}"))],
        specials_as_text=False,
        bos="auto",
        doc_end="auto",
        rule="prepared by an older warmstart: text + EOS, no BOS",
        legacy=True,
    )


# ----------------------------------------------------------------------------------------------- resolving
def template(tok) -> tuple[list[int], list[int]]:
    """(prefix ids, suffix ids) the tokenizer's special-token template adds around a single text."""
    plain = tok(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    full = tok(_PROBE_TEXT, add_special_tokens=True)["input_ids"]
    n = len(plain)
    for i in range(len(full) - n + 1):
        if full[i : i + n] == plain:
            return list(full[:i]), list(full[i + n :])
    raise UserError(
        f"{getattr(tok, 'name_or_path', 'tokenizer')}: its special-token template changes the text's own tokens; "
        "set bos and doc_end in the prepare recipe"
    )


def _token_id(tok, token: str, key: str) -> int:
    tid = tok.convert_tokens_to_ids(token)
    unk = tok.unk_token_id
    if tid is None or (unk is not None and tid == unk and token != tok.unk_token):
        raise UserError(f"{key}: token {token!r} is not in the tokenizer's vocabulary")
    return int(tid)


def is_turn_end(tok, token: str | None) -> bool:
    """True when `token` ends a chat turn: a known turn-end token, or the string that closes each message in
    the tokenizer's chat template."""
    if not token:
        return False
    if token in TURN_END_TOKENS:
        return True
    chat = getattr(tok, "chat_template", None)
    if isinstance(chat, dict):
        chat = " ".join(str(v) for v in chat.values())
    return bool(chat) and token in str(chat) and token not in DOCUMENT_TOKENS


def resolve_format(tok, bos: bool | str = "auto", doc_end: str = "auto") -> DocumentFormat:
    """The document format for `tok` under the recipe settings `bos` (auto/true/false) and `doc_end`
    (auto/none/a token string); raises `UserError` for a setting the tokenizer cannot satisfy."""
    bos_setting = str(bos).lower() if isinstance(bos, bool) else str(bos)
    if bos_setting not in ("auto", "true", "false"):
        raise UserError(f"bos: expected auto, true or false (got {bos!r})")
    prefix, suffix = template(tok)
    if bos_setting == "false":
        prefix = []
    elif bos_setting == "true" and not prefix:
        if tok.bos_token is None:
            raise UserError("bos: true, but the tokenizer has no BOS token; set bos: false or auto")
        prefix = [_token_id(tok, tok.bos_token, "bos")]

    if doc_end == "none":
        suffix, rule = [], "doc_end: none (documents follow each other directly)"
    elif doc_end != "auto":
        suffix, rule = [_token_id(tok, doc_end, "doc_end")], f"doc_end: {doc_end} (set in the recipe)"
    elif suffix:
        rule = "the tokenizer's template ends each text with it"
    else:
        eos = tok.eos_token or tok.sep_token
        if eos is None:
            raise UserError("the tokenizer has no EOS or SEP token; set doc_end in the prepare recipe")
        if is_turn_end(tok, eos):
            vocab = tok.get_vocab()
            doc = next((t for t in DOCUMENT_TOKENS if t in vocab and t != eos), None)
            if doc is not None:
                suffix = [int(vocab[doc])]
                rule = (
                    f"the tokenizer's EOS {eos} ends a chat turn, so documents end with its document token {doc}; "
                    "check with `warmstart format probe`"
                )
            else:
                suffix = [_token_id(tok, eos, "doc_end")]
                rule = (
                    f"the tokenizer's EOS {eos} ends a chat turn and it has no document token; using it anyway - "
                    "check with `warmstart format probe`"
                )
        else:
            suffix, rule = [_token_id(tok, eos, "doc_end")], "the tokenizer's EOS is its document token"
    return DocumentFormat(
        prefix=[int(i) for i in prefix],
        suffix=[int(i) for i in suffix],
        prefix_tokens=tok.convert_ids_to_tokens(list(prefix)),
        suffix_tokens=tok.convert_ids_to_tokens(list(suffix)),
        specials_as_text=True,
        bos=bos_setting,
        doc_end=doc_end,
        rule=rule,
    )


# ----------------------------------------------------------------------------------------------- encoding
PIECE_CHARS = 1 << 17  # a longer text is encoded in pieces of about this many characters
_CUT_WINDOW = 64  # characters each side of a cut that are encoded together and apart to check it
_CUT_TRIES = 16  # candidate cuts checked per piece before the piece is allowed to grow
# a cut goes before one space or newline between two letters: a pre-token boundary in the byte-level, Metaspace
# and WordPiece pre-tokenizers alike (no pre-token runs from a letter into a following space or newline)
_CUT = re.compile(r"(?<=[^\W\d_])(?=[ \n][^\W\d_])")


def _encode(tok, texts: list[str]) -> list[list[int]]:
    return tok(
        texts,
        add_special_tokens=False,
        split_special_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )["input_ids"]


def _cut_is_exact(tok, text: str, q: int) -> bool:
    """Whether encoding the text around `q` in two parts gives the tokens of encoding it as one."""
    a, b = max(0, q - _CUT_WINDOW), q + _CUT_WINDOW
    left, right, both = _encode(tok, [text[a:q], text[q:b], text[a:b]])
    return left + right == both


def piece_bounds(tok, text: str, piece_chars: int = PIECE_CHARS) -> list[int]:
    """[0, cut, ..., len(text)]: where to cut `text` so that encoding each piece alone and concatenating gives
    exactly the tokens of encoding it whole, each piece about `piece_chars` characters.

    A tokenizer's memory on one text grows much faster than its length (a 6 MB document peaked at 1.3 GB, the
    same text as 60 documents at 0.3 GB). A cut is taken only where `_CUT` finds a space or newline between
    letters and encoding a window around it together and apart agrees; a tokenizer that changes a piece's start
    (a Metaspace that prepends its marker to every text) fails every check, and its text stays whole.
    """
    bounds = [0]
    start = 0
    while len(text) - start > piece_chars:
        target = start + piece_chars
        found = None
        for lo in range(target - piece_chars // 2, len(text) - piece_chars // 2, piece_chars // 2):
            candidates = [m.start() for m in _CUT.finditer(text, lo, min(len(text), lo + piece_chars // 2 + 1))]
            found = next((q for q in reversed(candidates[-_CUT_TRIES:]) if _cut_is_exact(tok, text, q)), None)
            if found is not None:
                break
        if found is None:
            break
        bounds.append(found)
        start = found
    bounds.append(len(text))
    return bounds


def encode_pieces(tok, text: str) -> Iterator[list[int]]:
    """The tokens of `text` alone (as `encode_texts`), a piece at a time (`piece_bounds`): memory stays that of
    one piece, whatever the text's length."""
    if len(text) <= PIECE_CHARS:
        yield _encode(tok, [text])[0]
        return
    bounds = piece_bounds(tok, text, PIECE_CHARS)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        yield _encode(tok, [text[a:b]])[0]


def encode_texts(tok, texts: list[str]) -> list[list[int]]:
    """The tokens of each text alone: no template, special-token strings encoded as plain text; a text longer
    than PIECE_CHARS is encoded in pieces, to the same tokens."""
    if all(len(t) <= PIECE_CHARS for t in texts):
        return _encode(tok, texts)
    return [[i for ids in encode_pieces(tok, t) for i in ids] for t in texts]


def encode_document(tok, fmt: DocumentFormat, text: str) -> list[int]:
    """One document as `prepare` writes it: prefix + text tokens + suffix."""
    return [*fmt.prefix, *encode_texts(tok, [text])[0], *fmt.suffix]


# ----------------------------------------------------------------------------------------------- checking
def check_format(data_fmt: DocumentFormat, tok, where: str, allow_mismatch: bool = False, flag: str = "") -> str | None:
    """Refuse data whose document format is not the one `tok`'s checkpoint expects (raises `UserError`), or
    return a warning line to print (None when all is well).

    The expected format is `resolve_format(tok)` (the defaults). Data whose format was chosen by hand in its
    prepare recipe (`bos`/`doc_end` set) is accepted as the user's choice, with a note. With `allow_mismatch`
    a mismatch is a warning instead of an error.
    """
    expected = resolve_format(tok)
    rebuild = f"rebuild it with `warmstart prepare RECIPE --overwrite` (tokenizer {getattr(tok, 'name_or_path', '')})"
    problems = []
    if data_fmt.prefix != expected.prefix:
        have = " ".join(data_fmt.prefix_tokens) or "no BOS"
        want = " ".join(expected.prefix_tokens) or "no BOS"
        problems.append(f"documents start with {have}, the checkpoint's tokenizer starts them with {want}")
    if data_fmt.suffix != expected.suffix:
        have = " ".join(data_fmt.suffix_tokens) or "nothing"
        want = " ".join(expected.suffix_tokens) or "nothing"
        problems.append(f"documents end with {have}, the default for this tokenizer is {want}")
    if not problems:
        if data_fmt.legacy:
            return (
                f"{where}: prepared by an older warmstart (format not recorded; special-token strings inside "
                f"documents may have become control tokens); {rebuild}"
            )
        return None
    if data_fmt.explicit and not data_fmt.legacy:
        return None  # the recipe chose it (e.g. after `warmstart format probe`): the user's call
    msg = f"{where}: data not in the checkpoint's format: {'; '.join(problems)}"
    if allow_mismatch:
        return msg + " (used anyway)"
    raise UserError(f"{msg}; {rebuild}, or pass {flag or '--allow-format-mismatch'} to use it as is")
