"""`warmstart format probe`: which document format does a checkpoint expect? Measured, not guessed.

A checkpoint was pre-trained on documents in one format (BOS or not; which token between documents), and a
continued run on data in another format starts from a false loss. Which separator a chat-tuned checkpoint
expects differs between checkpoints, so the probe measures it: for a sample of documents, the checkpoint's mean
token loss under every candidate format

    context = [document-end candidate] + [BOS candidate] + text tokens

where the document-end candidates are the tokenizer's EOS, every pre-training document token it has
(`<|endoftext|>`, `<|end_of_text|>`, `</s>`, `<eos>`, ...; data/doc_format.py), its template's suffix, and none; the
BOS candidates are with (the template's prefix, else the BOS token) and without. The end token stands where the
previous document's end stands in the packed stream. Every candidate is scored on the same targets: the text
tokens 2 .. T+1 of each document (the first text token has no context in the bare candidate).

Because the targets are the same, each candidate's difference to the default format (the tokenizer's own,
`resolve_format`) is a paired one: per document, the candidate's summed loss minus the default's; the table gives
the token-weighted mean difference D = sum(delta_i) / sum(n_i) and its standard error over documents (the ratio
estimator's, sqrt(m / (m - 1) * sum((delta_i - D n_i)^2)) / sum(n_i) for m documents; Cochran, Sampling
Techniques, 1977, sec. 6.4). A candidate replaces the default only when it is better by more than twice its
standard error over at least `MIN_DOCS` documents (fewer decide nothing, and the probe says so); otherwise the
default is kept and the probe says whether the sample could tell them apart (a larger `--docs` decides). `--write-recipe` writes the decision into a prepare recipe as `bos` / `doc_end`
(`auto` for both when the default is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from warmstart.data.doc_format import DOCUMENT_TOKENS, encode_texts, resolve_format, template
from warmstart.errors import UserError


@dataclass
class Candidate:
    bos: bool
    end: str | None  # the document-end token string, None for none
    prefix: list[int]
    end_ids: list[int]

    @property
    def label(self) -> str:
        return f"{'BOS + ' if self.bos else ''}text, after {self.end or 'nothing'}"


CLEAR = 2.0  # a candidate must beat the default by more than this many standard errors
# below this many documents nothing is decided: the standard error is a large-sample estimate (with m - 1 degrees
# of freedom, the 2-SE rule's real level is far from 5%: Student's 97.5% quantile is 12.7 at 1, 3.2 at 3, 2.3 at 9)
# and with one document there is none at all
MIN_DOCS = 10


@dataclass
class ProbeRow:
    candidate: Candidate
    loss: float  # mean token cross-entropy, nats
    tokens: int
    doc_loss: np.ndarray | None = None  # (m,) summed loss per document, nats
    doc_tokens: np.ndarray | None = None  # (m,) scored targets per document
    diff: float = 0.0  # mean loss minus the default's on the same targets (0 for the default itself)
    se: float | None = None  # standard error of `diff` over documents (None for the default)
    default: bool = False


def paired_difference(cand: np.ndarray, base: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
    """(D, its standard error): the token-weighted mean loss difference of per-document summed losses `cand` and
    `base` (m,) over the same `tokens` (m,) per document; the ratio estimator's SE over documents (None when
    m < 2: one document has no spread to estimate it from)."""
    delta, n = np.asarray(cand, float) - np.asarray(base, float), np.asarray(tokens, float)
    m, total = len(delta), n.sum()
    d = float(delta.sum() / total)
    if m < 2:
        return d, None
    return d, float(np.sqrt(m / (m - 1) * np.sum((delta - d * n) ** 2)) / total)


def decide(rows: list[ProbeRow]) -> tuple[ProbeRow, str]:
    """The format to use and why, in one line: the best candidate when it beats the default by more than
    `CLEAR` standard errors on at least `MIN_DOCS` documents, else the default (and, under `MIN_DOCS`, that
    the sample is too small to tell the candidates apart)."""
    default = next(r for r in rows if r.default)
    best = min(rows, key=lambda r: r.loss)
    m = len(default.doc_loss) if default.doc_loss is not None else MIN_DOCS
    if m < MIN_DOCS:
        lead = "the default format scores lowest" if best is default else (
            f"the best candidate ({best.candidate.label}) differs from the default by {best.diff:+.4f} nats")
        return default, (
            f"{lead}, but {m} document{'s' if m != 1 else ''} {'are' if m != 1 else 'is'} too few to tell the "
            f"candidates apart (a standard error needs at least {MIN_DOCS}); keeping the default (--docs "
            f"{MIN_DOCS} or more decides)")
    if best is default:
        return default, "the default format scores lowest"
    if best.se is not None and best.diff < -CLEAR * best.se:
        return best, f"better than the default by {-best.diff:.4f} nats (> {CLEAR:g} standard errors, {best.se:.4f})"
    return default, (
        f"the best candidate ({best.candidate.label}) differs from the default by {best.diff:+.4f} "
        f"+- {best.se:.4f} nats: the sample cannot tell them apart; keeping the default (a larger --docs decides)"
    )


def candidates(tok) -> list[Candidate]:
    """Every (BOS, document-end) pair worth measuring for `tok`, without duplicates."""
    prefix, suffix = template(tok)
    if not prefix and tok.bos_token is not None:
        prefix = [int(tok.convert_tokens_to_ids(tok.bos_token))]
    vocab = tok.get_vocab()
    ends: dict[int, str] = {}
    for t in [*tok.convert_ids_to_tokens(suffix), tok.eos_token, *DOCUMENT_TOKENS]:
        if t is not None and t in vocab and int(vocab[t]) not in ends:
            ends[int(vocab[t])] = t
    default = resolve_format(tok)
    default_end = default.suffix_tokens[-1] if default.suffix_tokens else None
    pairs = [(bool(default.prefix), default_end)]  # first, so that a tie goes to the tokenizer's default
    pairs += [(bos, end) for bos in ([True, False] if prefix else [False]) for end in [*ends.values(), None]]
    out, seen = [], set()
    for bos, end_tok in pairs:
        end_ids = [] if end_tok is None else [int(vocab[end_tok])]
        pre = list(prefix) if bos else []
        context = tuple(end_ids + pre)
        if context in seen:  # e.g. GPT-2's <|endoftext|> is both BOS and EOS: the same context twice
            continue
        seen.add(context)
        out.append(Candidate(bos, end_tok, pre, end_ids))
    return out


def text_documents(tok, texts: list[str], n_docs: int, tokens: int) -> list[list[int]]:
    """The first `n_docs` texts with >= 2 tokens, each cut to `tokens` + 1 text tokens (specials as text)."""
    out = []
    for ids in encode_texts(tok, texts):
        if len(ids) >= 2:
            out.append(list(ids[: tokens + 1]))
        if len(out) == n_docs:
            break
    return out


SAMPLE_DOCS, SAMPLE_TOKENS = 12, 200  # what the probe scores by default: documents, tokens each


def sample_text_documents(tok, texts: list[str], n_docs: int, tokens: int,
                          skip_bad_records: bool = False) -> list[list[int]]:
    """The documents `run_probe --text` scores: the first of at most 20 x n_docs read from `texts` (the files in
    order) with >= 2 tokens, each cut to `tokens` + 1 (`text_documents`). A bad record is a one-line error, or
    skipped with `skip_bad_records` (as `prepare` reads it)."""
    from warmstart.config import SourceConfig
    from warmstart.data.sources import iter_documents

    docs_text: list[str] = []
    for path in texts:
        for t in iter_documents(SourceConfig(path=path), skip_bad_records=skip_bad_records):
            docs_text.append(t)
            if len(docs_text) >= 20 * n_docs:
                break
    return text_documents(tok, docs_text, n_docs, tokens)


def scored_positions(tok, docs: list[list[int]]) -> int:
    """The positions `probe` scores over every candidate format: len(doc) - 1 per document per format (text token
    1 onward; the format's context is not scored). Its cost is this times the forward FLOPs per token, known before
    any model is loaded (a job's budget check counts it)."""
    return len(candidates(tok)) * sum(len(d) - 1 for d in docs)


@torch.no_grad()
def probe(
    model, docs: list[list[int]], cands: list[Candidate], batch_size: int = 8, device="cpu", progress: bool = False
) -> list[ProbeRow]:
    """Mean token loss of `model` on `docs` (text token ids) under each candidate context, best first (a tie
    keeps the candidates' order, which puts the tokenizer's default format first). `progress`: a bar over the
    forward passes (`warmstart.progress`: lines in a log).

    Shapes: each forward is (batch, len(end) + len(prefix) + len(doc)); right padding needs no attention mask for
    a causal LM and its padded positions are not scored. Raises `UserError` when no document has 2 tokens.
    """
    if not docs:
        raise UserError("format probe: no document with at least 2 tokens to score; give more or longer text")
    from warmstart.progress import bar as progress_bar

    was_training = model.training
    model.eval()
    rows = []
    n_batches = -(-len(docs) // batch_size)
    bar = progress_bar(len(cands) * n_batches, enabled=progress, desc="format probe", unit="batch", leave=False)
    for cand in cands:
        ctx = cand.end_ids + cand.prefix
        seqs = [ctx + d for d in docs]
        first_target = len(ctx) + 1  # position of text token 2 (index 1) in each sequence
        per_doc, per_tok = [], []
        for b in range(0, len(seqs), batch_size):
            batch = seqs[b : b + batch_size]
            width = max(len(s) for s in batch)
            x = torch.zeros((len(batch), width), dtype=torch.long)
            y = torch.full((len(batch), width), -100, dtype=torch.long)
            for j, s in enumerate(batch):
                x[j, : len(s)] = torch.tensor(s)
                y[j, first_target : len(s)] = torch.tensor(s[first_target:])
            logits = model(input_ids=x.to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), y[:, 1:].to(device), reduction="none", ignore_index=-100
            )
            per_doc.extend(nll.double().sum(1).tolist())
            per_tok.extend((y[:, 1:] != -100).sum(1).tolist())
            bar.update(1)
        doc_loss, doc_tokens = np.array(per_doc), np.array(per_tok)
        rows.append(ProbeRow(cand, float(doc_loss.sum() / doc_tokens.sum()), int(doc_tokens.sum()), doc_loss,
                             doc_tokens))
    bar.close()
    model.train(was_training)
    rows[0].default = True  # candidates() puts the tokenizer's default first
    for r in rows[1:]:
        r.diff, r.se = paired_difference(r.doc_loss, rows[0].doc_loss, rows[0].doc_tokens)
    return sorted(rows, key=lambda r: r.loss)


def format_table(rows: list[ProbeRow], n_docs: int) -> str:
    """The table `warmstart format probe` prints (best first): each candidate's mean loss and its paired
    difference to the default with the standard error; then the decision and why."""
    lines = [f"{'format':<44} {'mean loss':>10} {'vs default':>11} {'+- s.e.':>8} {'tokens':>8}"]
    for r in rows:
        label = r.candidate.label + (" (default)" if r.default else "")
        se = "n/a" if r.se is None else f"{r.se:.4f}"  # one document: no spread, no standard error
        diff = f"{'':>11} {'':>8}" if r.default else f"{r.diff:>+11.4f} {se:>8}"
        lines.append(f"{label:<44} {r.loss:>10.4f} {diff} {r.tokens:>8,}")
    chosen, why = decide(rows)
    c = chosen.candidate
    recipe = "bos: auto, doc_end: auto" if chosen.default else f"bos: {str(c.bos).lower()}, doc_end: {c.end or 'none'}"
    lines.append(f"over {n_docs} documents: {c.label}: {why} -> prepare recipe: {recipe}")
    return "\n".join(lines)


def _check_recipe(recipe: str | Path) -> dict:
    """The prepare recipe `--write-recipe` names, read and validated before any scoring."""
    from warmstart.config import PrepareConfig, read_yaml, validate

    path = Path(recipe)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise UserError(f"--write-recipe: {path} {what} (give an existing prepare recipe to update)")
    tree = read_yaml(path)
    validate(PrepareConfig, tree, str(path))
    return tree


def write_winner(recipe: str | Path, winner: Candidate, default: bool = False) -> None:
    """Set `bos` and `doc_end` of an existing prepare recipe to the winner (`auto` for both when it is the
    default; validated, written atomically; the YAML is rewritten, so comments in it are not kept)."""
    import yaml

    from warmstart import atomic
    from warmstart.config import PrepareConfig, validate

    path = Path(recipe)
    tree = _check_recipe(path)
    tree.pop("eos_token", None)
    tree["bos"] = "auto" if default else bool(winner.bos)
    tree["doc_end"] = "auto" if default else winner.end or "none"
    validate(PrepareConfig, tree, str(path))
    atomic.write_text(path, yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))


def domain_documents(tok, data_dir: str | Path, domain: str, n_docs: int, tokens: int) -> list[list[int]]:
    """Text tokens of the first `n_docs` validation documents of a prepared domain (its recorded prefix and
    suffix removed); the data must have been prepared with the checkpoint's tokenizer."""
    from warmstart.data.shards import open_data_dir
    from warmstart.data.tokenizer import vocab_hash

    data = open_data_dir(data_dir)
    if domain not in data:
        raise UserError(f"--domain: no domain {domain!r} in {data_dir} (have: {', '.join(data)})")
    dom = data[domain]
    if dom.tokenizer.get("vocab_hash") != vocab_hash(tok):
        raise UserError(f"--data: {data_dir} was prepared with another tokenizer than the checkpoint's; use --text")
    fmt = dom.document_format
    out = []
    for split in ("val", "train"):
        for doc in dom.documents(split):
            ids = np.asarray(doc[len(fmt.prefix) : len(doc) - len(fmt.suffix)], dtype=np.int64).tolist()
            if len(ids) >= 2:
                out.append(ids[: tokens + 1])
            if len(out) == n_docs:
                return out
    return out


def _check_ids(model, tok, docs: list[list[int]], cands: list[Candidate], what: str) -> None:
    """Every id the probe would feed the model (the candidates' BOS and document-end tokens, the documents' text
    tokens) must have a row in its embedding table: a tokenizer with tokens added past it is refused here, in one
    line, not by an IndexError in the first forward pass."""
    from warmstart.models.build import check_token_ids, embedding_rows

    rows = embedding_rows(model)
    for c in cands:
        for i in c.end_ids + c.prefix:
            check_token_ids(i, rows, "format probe", f" (the tokenizer's {tok.convert_ids_to_tokens(i)!r})")
    check_token_ids(max((max(d) for d in docs), default=None), rows, f"format probe: {what}", " (in the documents)")


def run_probe(
    checkpoint: str,
    texts: list[str] | None = None,
    data_dir: str | None = None,
    domain: str | None = None,
    n_docs: int = SAMPLE_DOCS,
    tokens: int = SAMPLE_TOKENS,
    batch_size: int = 8,
    device: str = "auto",
    write_recipe: str | None = None,
    progress: bool = False,
    skip_bad_records: bool = False,
) -> dict:
    """`warmstart format probe`: load the checkpoint, sample documents, measure every candidate; returns
    {rows: [{bos, doc_end, loss, tokens}], winner, docs, table}. Raises `UserError` for bad arguments.
    `progress`: say what is measured up front, and a progress bar over the forward passes."""
    from warmstart.data.tokenizer import load_tokenizer
    from warmstart.eval.run_eval import _device
    from warmstart.models.build import auto_class, resolve_checkpoint

    if (texts is None) == (data_dir is None):
        raise UserError("format probe: give exactly one of --text FILES or --data DIR --domain NAME")
    if data_dir is not None and not domain:
        raise UserError("format probe: --data needs --domain NAME")
    if n_docs <= 0 or tokens <= 0 or batch_size <= 0:
        raise UserError("format probe: --docs, --tokens and --batch-size must be > 0")
    if write_recipe:
        _check_recipe(write_recipe)
    for path in texts or []:  # a mistyped path is said before the seconds of loading a tokenizer and a model
        if not any(ch in path for ch in "*?[") and not Path(path).exists():
            raise UserError(f"format probe: --text {path}: not found")
    src = resolve_checkpoint(checkpoint, "checkpoint")
    tok = load_tokenizer(str(src))
    if texts is not None:
        docs = sample_text_documents(tok, texts, n_docs, tokens, skip_bad_records)
    else:
        docs = domain_documents(tok, data_dir, domain, n_docs, tokens)
    dev = _device(device)
    from warmstart.models import memory

    memory.check_forward("format probe", src, batch_size, max(len(x) for x in docs) + 2 if docs else tokens,
                         ["--batch-size", "--tokens"], device=dev, full_logits=3)
    try:
        model = auto_class("causal").from_pretrained(str(src), dtype=torch.float32)
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for unusable checkpoints
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"format probe: cannot load {checkpoint} as a causal LM ({first})") from None
    cands = candidates(tok)
    _check_ids(model, tok, docs, cands, "--data" if data_dir is not None else "--text")
    from warmstart.models.build import no_kv_cache

    no_kv_cache(model).to(dev)
    if progress:
        passes = len(cands) * -(-len(docs) // batch_size)
        print(f"format probe: {len(cands)} candidate formats x {len(docs)} documents of up to {tokens} tokens "
              f"({passes} forward passes of up to {batch_size} documents) on {dev}", flush=True)
    rows = probe(model, docs, cands, batch_size, dev, progress=progress)
    chosen, why = decide(rows)
    if write_recipe:
        write_winner(write_recipe, chosen.candidate, default=chosen.default)
    return {
        "checkpoint": str(src),
        "docs": len(docs),
        "tokens_per_doc": tokens,
        "rows": [
            {"bos": r.candidate.bos, "doc_end": r.candidate.end, "loss": r.loss, "tokens": r.tokens,
             "default": r.default, "diff_vs_default": r.diff, "se": r.se}
            for r in rows
        ],
        "winner": {"bos": chosen.candidate.bos, "doc_end": chosen.candidate.end or "none", "default": chosen.default,
                   "why": why},
        "table": format_table(rows, len(docs)),
    }
